"""The ``recsys`` command: operator tasks on one entry point.

Each top-level command registers itself with :func:`command`, so later commands
(recommend, similar, train, models) are one decorated function each. Handlers import
what they need lazily, which keeps ``recsys --help`` fast even when a command pulls in
torch or gRPC. Exit codes: 0 success, 1 operational failure (broker, network), 2 bad
input (argparse's own convention).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from confluent_kafka import Producer

    from recsys.artifacts import ArtifactStore, Manifest
    from recsys.client import Diversity, ItemFilter, RankingClient, RankingError
    from recsys.topics import Topics
    from recsys.v1.ranking_pb2 import Explanation, RecommendResponse

Handler = Callable[[argparse.Namespace], int]
Configure = Callable[[argparse.ArgumentParser], None]

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2


@dataclass(frozen=True)
class Command:
    name: str
    help: str
    configure: Configure


_COMMANDS: dict[str, Command] = {}


def command(name: str, help: str) -> Callable[[Configure], Configure]:
    """Register a top-level command; ``configure`` adds its arguments and sets ``handler``."""

    def register(configure: Configure) -> Configure:
        if name in _COMMANDS:
            raise ValueError(f"command {name!r} is registered twice")
        _COMMANDS[name] = Command(name, help, configure)
        return configure

    return register


def _subcommands(
    parser: argparse.ArgumentParser, title: str
) -> argparse._SubParsersAction[argparse.ArgumentParser]:
    subparsers = parser.add_subparsers(title=title, metavar="COMMAND", required=True)
    return subparsers


def _fail(message: str, code: int = EXIT_FAILURE) -> int:
    print(f"error: {message}", file=sys.stderr)
    return code


# --- topics -------------------------------------------------------------------------


@command("topics", "manage the Kafka topics of this deployment")
def _configure_topics(parser: argparse.ArgumentParser) -> None:
    sub = _subcommands(parser, "topics commands")
    create = sub.add_parser("create", help="create every project topic that does not exist")
    create.add_argument("--timeout", type=float, default=30.0, help="seconds (default 30)")
    create.set_defaults(handler=_topics_create)


def _topics_create(args: argparse.Namespace) -> int:
    from recsys.kafka import BrokerUnavailable, wait_for_broker
    from recsys.settings import KafkaSettings
    from recsys.topics import create_topics

    settings = KafkaSettings()
    try:
        wait_for_broker(settings, timeout_s=args.timeout)
    except BrokerUnavailable as exc:
        return _fail(str(exc))
    created = create_topics(settings, timeout_s=args.timeout)
    print(f"created {len(created)} topic(s)" + (f": {', '.join(created)}" if created else ""))
    return EXIT_OK


# --- publish ------------------------------------------------------------------------


@command("publish", "publish events to Kafka as a client would")
def _configure_publish(parser: argparse.ArgumentParser) -> None:
    sub = _subcommands(parser, "publish commands")
    movielens = sub.add_parser(
        "movielens", help="publish MovieLens-100K (all items, then interactions by time)"
    )
    movielens.add_argument(
        "--limit",
        type=int,
        default=None,
        metavar="N",
        help="publish only the first N interactions in time order",
    )
    movielens.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="dataset cache (default: $RECSYS_DATA_DIR or .cache/datasets)",
    )
    movielens.add_argument("--no-progress", action="store_true", help="no progress bar")
    movielens.set_defaults(handler=_publish_movielens)

    event = sub.add_parser("event", help="validate one JSON event and publish it")
    event.add_argument(
        "--json",
        required=True,
        dest="json_text",
        metavar="JSON",
        help="the event as a JSON object, or '-' to read it from stdin",
    )
    event.add_argument(
        "--topic",
        required=True,
        choices=("interactions", "items"),
        help="interactions (InteractionEvent) or items (ItemEvent)",
    )
    event.set_defaults(handler=_publish_event)


def _publish_movielens(args: argparse.Namespace) -> int:
    from recsys.data.movielens import DatasetUnavailable, load
    from recsys.kafka import BrokerUnavailable
    from recsys.publish import PublishError, publish_events
    from recsys.settings import KafkaSettings

    if args.limit is not None and args.limit < 0:
        return _fail("--limit must be zero or more", EXIT_USAGE)
    try:
        data = load(args.data_dir)
    except DatasetUnavailable as exc:
        return _fail(str(exc))
    interactions = data.interactions if args.limit is None else data.interactions[: args.limit]
    try:
        report = publish_events(
            KafkaSettings(), data.items, interactions, progress=not args.no_progress
        )
    except (BrokerUnavailable, PublishError) as exc:
        return _fail(str(exc))
    print(
        f"published {report.items} items and {report.interactions} interactions "
        f"in {report.seconds:.1f}s ({report.rate:,.0f} msg/s)"
    )
    return EXIT_OK


def _publish_event(args: argparse.Namespace) -> int:
    from recsys.events import InteractionEvent, InvalidEvent, ItemEvent, parse_event
    from recsys.kafka import BrokerUnavailable
    from recsys.publish import PublishError, publish_events
    from recsys.settings import KafkaSettings

    # Bytes as given (surrogateescape restores undecodable argv bytes) so that invalid
    # UTF-8 is reported by the same validation a consumer would apply.
    raw = (
        sys.stdin.buffer.read()
        if args.json_text == "-"
        else args.json_text.encode("utf-8", "surrogateescape")
    )
    items: list[ItemEvent] = []
    interactions: list[InteractionEvent] = []
    try:
        if args.topic == "items":
            items.append(parse_event(ItemEvent, raw))
        else:
            interactions.append(parse_event(InteractionEvent, raw))
    except InvalidEvent as exc:
        return _fail(str(exc), EXIT_USAGE)
    try:
        publish_events(KafkaSettings(), items, interactions, progress=False)
    except (BrokerUnavailable, PublishError) as exc:
        return _fail(str(exc))
    event = items[0] if items else interactions[0]
    print(f"published {event.event_id} to {args.topic}")
    return EXIT_OK


# --- schemas ------------------------------------------------------------------------


@command("schemas", "JSON Schema files of the event contracts")
def _configure_schemas(parser: argparse.ArgumentParser) -> None:
    sub = _subcommands(parser, "schemas commands")
    export = sub.add_parser("export", help="write <Model>.schema.json files")
    export.add_argument(
        "directory",
        nargs="?",
        type=Path,
        default=None,
        help="output folder (default: the recsys.schemas package)",
    )
    export.set_defaults(handler=_schemas_export)


def _schemas_export(args: argparse.Namespace) -> int:
    from recsys.schemas import export_schemas

    for path in export_schemas(args.directory):
        print(path)
    return EXIT_OK


# --- train and models ---------------------------------------------------------------


@command("train", "ask the trainer for a training run now")
def _configure_train(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--reason", default="", help="a note for the trainer's log (e.g. 'catalogue reload')"
    )
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds (default 30)")
    parser.set_defaults(handler=_train)


def _train(args: argparse.Namespace) -> int:
    import time
    import uuid

    from recsys.events import TrainRequest
    from recsys.kafka import BrokerUnavailable, make_producer, produce, wait_for_broker
    from recsys.settings import KafkaSettings
    from recsys.topics import Topics

    settings = KafkaSettings()
    try:
        wait_for_broker(settings, timeout_s=args.timeout)
    except BrokerUnavailable as exc:
        return _fail(str(exc))
    request = TrainRequest(
        event_id=f"train-{uuid.uuid4().hex}", requested_at=time.time(), reason=args.reason
    )
    topic = Topics.from_settings(settings).trainer_commands
    producer = make_producer(settings)
    errors: list[str] = []
    produce(
        producer,
        topic,
        "trainer",
        request.to_bytes(),
        lambda error, _: errors.append(str(error)) if error else None,
    )
    if producer.flush(args.timeout) > 0 or errors:
        reason = errors[0] if errors else f"not delivered within {args.timeout:g}s"
        return _fail(f"the request to {topic} failed: {reason}")
    print(f"requested a training run ({request.event_id}); the trainer runs it when idle")
    return EXIT_OK


@command("models", "model versions: list them, promote one, roll back")
def _configure_models(parser: argparse.ArgumentParser) -> None:
    sub = _subcommands(parser, "models commands")
    listing = sub.add_parser("list", help="every version with its status, metrics and gate figures")
    listing.add_argument("--json", action="store_true", help="print JSON")
    listing.set_defaults(handler=_models_list)
    promote = sub.add_parser(
        "promote", help="serve VERSION now: publish its item vectors, then announce it"
    )
    promote.add_argument("version", metavar="VERSION", help="e.g. v3")
    promote.add_argument("--timeout", type=float, default=30.0, help="seconds (default 30)")
    promote.set_defaults(handler=_models_promote)
    rollback = sub.add_parser(
        "rollback",
        help="serve the version that served before the current one; mark the current one rejected",
    )
    rollback.add_argument("--timeout", type=float, default=30.0, help="seconds (default 30)")
    rollback.set_defaults(handler=_models_rollback)


def _artifact_store() -> ArtifactStore:
    from recsys.artifacts import ArtifactStore
    from recsys.settings import ArtifactSettings

    settings = ArtifactSettings()
    return ArtifactStore(settings.root, settings.model_name)


def _figure(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def version_rows(manifests: Sequence[Manifest], serving: str | None) -> list[dict[str, object]]:
    """One JSON-ready row per version, oldest first; ``serving`` marks the one served."""
    return [
        {
            "version": m.version,
            "status": m.status,
            "serving": m.version == serving,
            "created_at": m.created_at,
            "promoted_at": m.promoted_at,
            "valid_ndcg@10": m.metrics.get("valid_masked_ndcg@10"),
            "test_ndcg@10": m.metrics.get("test_masked_ndcg@10"),
            "gate": m.gate.model_dump(mode="json") if m.gate else None,
            "reason": m.status_reason,
        }
        for m in manifests
    ]


def format_versions(manifests: Sequence[Manifest], serving: str | None) -> str:
    """An aligned table; ``*`` marks the serving version."""
    from datetime import UTC, datetime

    columns = ["", "version", "status", "created (UTC)", "valid", "test", "gate", "reason"]
    rows = []
    for m in manifests:
        gate = ""
        if m.gate is not None:
            against = (
                f"{_figure(m.gate.serving)} ({m.gate.serving_version})"
                if m.gate.serving_version
                else "none"
            )
            gate = f"{_figure(m.gate.candidate)} vs {against} tol {m.gate.tolerance:g}"
        created = datetime.fromtimestamp(m.created_at, UTC).strftime("%Y-%m-%d %H:%M:%S")
        rows.append(
            [
                "*" if m.version == serving else "",
                m.version,
                m.status,
                created,
                _figure(m.metrics.get("valid_masked_ndcg@10")),
                _figure(m.metrics.get("test_masked_ndcg@10")),
                gate,
                m.status_reason,
            ]
        )
    widths = [max(len(row[i]) for row in [columns, *rows]) for i in range(len(columns))]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
        for row in [columns, *rows]
    ]
    lines.append("valid/test: masked NDCG@10; gate: candidate vs serving on one validation split")
    return "\n".join(lines)


def _models_list(args: argparse.Namespace) -> int:
    import json

    store = _artifact_store()
    manifests = store.list_versions()
    serving = store.serving(manifests)
    current = serving.version if serving else None
    if args.json:
        print(json.dumps(version_rows(manifests, current), indent=2))
    elif not manifests:
        print(f"no versions of {store.model_name} under {store.root}")
    else:
        print(format_versions(manifests, current))
    return EXIT_OK


def _lifecycle(
    args: argparse.Namespace, action: Callable[[ArtifactStore, Producer, Topics], str]
) -> int:
    """Run a promote/rollback ``action`` with a producer; map failures to exit codes."""
    from confluent_kafka import KafkaException

    from recsys.artifacts import ArtifactIntegrityError, VersionNotFoundError
    from recsys.kafka import BrokerUnavailable, make_producer, wait_for_broker
    from recsys.settings import KafkaSettings
    from recsys.topics import Topics
    from services.trainer.versions import NothingToRollBack

    store = _artifact_store()
    settings = KafkaSettings()
    try:
        wait_for_broker(settings, timeout_s=args.timeout)
        producer = make_producer(settings)
        print(action(store, producer, Topics.from_settings(settings)))
    except VersionNotFoundError as exc:
        return _fail(str(exc), EXIT_USAGE)
    except (
        NothingToRollBack,
        ArtifactIntegrityError,
        BrokerUnavailable,
        KafkaException,
        RuntimeError,
    ) as exc:
        return _fail(str(exc))
    return EXIT_OK


def _models_promote(args: argparse.Namespace) -> int:
    from recsys.artifacts import version_number

    try:
        version_number(args.version)
    except ValueError as exc:
        return _fail(str(exc), EXIT_USAGE)

    def action(store: ArtifactStore, producer: Producer, topics: Topics) -> str:
        from services.trainer.versions import promote

        update = promote(store, producer, topics, args.version)
        return f"promoted {update.version} ({update.item_count} item vectors, then the update)"

    return _lifecycle(args, action)


def _models_rollback(args: argparse.Namespace) -> int:
    def action(store: ArtifactStore, producer: Producer, topics: Topics) -> str:
        from services.trainer.versions import rollback

        previous, update = rollback(store, producer, topics)
        return f"rolled back from {previous.version} (now rejected) to {update.version}"

    return _lifecycle(args, action)


# --- ranking queries (recommend, similar, popular, session) -------------------------

TOKEN_ENV = "RECSYS_RANKING_TOKEN"
# recsys.client.WINDOWS, spelled out so that building the parser does not import gRPC.
POPULARITY_WINDOWS = ("all_time", "hour", "day", "week")
_TITLE_WIDTH = 60


def _range(text: str) -> tuple[str, float | None, float | None]:
    """``ATTR:MIN:MAX`` with either bound empty (open), e.g. ``price::20``."""
    parts = text.split(":")
    if len(parts) != 3 or not parts[0]:
        raise argparse.ArgumentTypeError(f"{text!r}: use ATTRIBUTE:MIN:MAX, e.g. price::20")
    try:
        low, high = (float(p) if p.strip() else None for p in parts[1:])
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: the bounds must be numbers") from None
    return parts[0], low, high


def _session_event(text: str) -> tuple[str, str]:
    """``ITEM:TYPE``; split at the last colon so item ids may contain colons."""
    item_id, sep, event_type = text.rpartition(":")
    if not sep or not item_id or not event_type:
        raise argparse.ArgumentTypeError(f"{text!r}: use ITEM:TYPE, e.g. 50:view")
    return item_id, event_type


def _add_connection_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("connection")
    group.add_argument(
        "--target",
        default=None,
        metavar="HOST:PORT",
        help="the ranking server (default: $RECSYS_RANKING_TARGET or localhost:50051)",
    )
    group.add_argument(
        "--token", default=None, help=f"bearer token to send (default: ${TOKEN_ENV} if set)"
    )
    group.add_argument("--tls", action="store_true", help="connect with TLS")
    group.add_argument(
        "--ca-cert",
        type=Path,
        default=None,
        metavar="PEM",
        help="CA certificate(s) to verify the server with (implies --tls)",
    )
    group.add_argument(
        "--client-cert",
        type=Path,
        default=None,
        metavar="PEM",
        help="client certificate chain for mTLS (with --client-key; implies --tls)",
    )
    group.add_argument(
        "--client-key", type=Path, default=None, metavar="PEM", help="its private key"
    )
    group.add_argument(
        "--timeout", type=float, default=5.0, metavar="S", help="deadline in seconds (default 5)"
    )
    group.add_argument(
        "--request-id", default=None, metavar="ID", help="sent as x-request-id metadata"
    )
    parser.add_argument("--json", action="store_true", help="print the response as JSON")


def _add_filter_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("filter")
    group.add_argument(
        "--category",
        action="append",
        default=[],
        metavar="NAME",
        help="only items with at least one of these categories (repeatable)",
    )
    group.add_argument(
        "--not-category",
        action="append",
        default=[],
        metavar="NAME",
        help="no items with this category (repeatable)",
    )
    group.add_argument(
        "--year-min", type=float, default=None, metavar="YEAR", help="only items from this year on"
    )
    group.add_argument(
        "--year-max", type=float, default=None, metavar="YEAR", help="only items up to this year"
    )
    group.add_argument(
        "--range",
        type=_range,
        action="append",
        default=[],
        dest="ranges",
        metavar="ATTR:MIN:MAX",
        help="numeric attribute range, a bound may be empty, e.g. price::20 (repeatable)",
    )
    group.add_argument(
        "--available",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="only items whose 'available' attribute is true (--no-available: false)",
    )
    group.add_argument(
        "--exclude",
        action="append",
        default=[],
        metavar="ITEM",
        help="never return this item (repeatable)",
    )


def _add_diversity_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("diversity")
    group.add_argument(
        "--diversity", type=float, default=0.0, metavar="MMR", help="MMR strength 0..1"
    )
    group.add_argument(
        "--max-per-category",
        type=int,
        default=0,
        metavar="N",
        help="at most N items per (first) category",
    )


def _add_k(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--k", type=int, default=10, help="how many items (default 10)")


@command("recommend", "recommendations for one user from the ranking server")
def _configure_recommend(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--user", required=True, help="the user id")
    _add_k(parser)
    parser.add_argument(
        "--include-seen", action="store_true", help="keep items the user interacted with"
    )
    parser.add_argument("--explain", action="store_true", help="show why each item came")
    _add_filter_arguments(parser)
    _add_diversity_arguments(parser)
    _add_connection_arguments(parser)
    parser.set_defaults(handler=_recommend)


@command("similar", "items similar to one item, from the ranking server")
def _configure_similar(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--item", required=True, help="the item id")
    _add_k(parser)
    _add_filter_arguments(parser)
    _add_diversity_arguments(parser)
    _add_connection_arguments(parser)
    parser.set_defaults(handler=_similar, explain=False)


@command("popular", "the most popular items, all-time or trending")
def _configure_popular(parser: argparse.ArgumentParser) -> None:
    _add_k(parser)
    parser.add_argument(
        "--window",
        choices=POPULARITY_WINDOWS,
        default="all_time",
        help="all_time, or trending over an hour, day or week (default all_time)",
    )
    _add_filter_arguments(parser)
    _add_connection_arguments(parser)
    parser.set_defaults(handler=_popular, explain=False)


@command("session", "recommendations for an anonymous session's events")
def _configure_session(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--event",
        type=_session_event,
        action="append",
        required=True,
        dest="events",
        metavar="ITEM:TYPE",
        help="one event, oldest first: view, click, add_to_cart, purchase or rating "
        "(repeatable), e.g. --event 50:view --event 181:purchase",
    )
    _add_k(parser)
    parser.add_argument("--include-seen", action="store_true", help="keep the session's own items")
    parser.add_argument("--explain", action="store_true", help="show why each item came")
    _add_filter_arguments(parser)
    _add_diversity_arguments(parser)
    _add_connection_arguments(parser)
    parser.set_defaults(handler=_session)


def _item_filter(args: argparse.Namespace) -> ItemFilter | None:
    from recsys.client import ItemFilter

    ranges: dict[str, tuple[float | None, float | None]] = {}
    for attribute, low, high in args.ranges:
        if attribute in ranges:
            raise ValueError(f"--range {attribute} is given twice")
        ranges[attribute] = (low, high)
    if args.year_min is not None or args.year_max is not None:
        if "year" in ranges:
            raise ValueError("give the year as --year-min/--year-max or --range, not both")
        ranges["year"] = (args.year_min, args.year_max)
    item_filter = ItemFilter(
        categories_any=tuple(args.category),
        categories_none=tuple(args.not_category),
        ranges=ranges,
        available=args.available,
    )
    # No condition at all: send no filter, as a caller of the API would.
    return None if item_filter == ItemFilter() else item_filter


def _diversity(args: argparse.Namespace) -> Diversity | None:
    from recsys.client import Diversity

    if not args.diversity and not args.max_per_category:
        return None
    return Diversity(mmr=args.diversity, max_per_category=args.max_per_category)


def _recommend(args: argparse.Namespace) -> int:
    return _query(
        args,
        lambda client, item_filter: client.recommend(
            args.user,
            args.k,
            filter=item_filter,
            exclude_item_ids=args.exclude,
            exclude_seen=False if args.include_seen else None,
            diversity=_diversity(args),
            explain=args.explain,
            request_id=args.request_id,
        ),
    )


def _similar(args: argparse.Namespace) -> int:
    return _query(
        args,
        lambda client, item_filter: client.similar_items(
            args.item,
            args.k,
            filter=item_filter,
            exclude_item_ids=args.exclude,
            diversity=_diversity(args),
            request_id=args.request_id,
        ),
    )


def _popular(args: argparse.Namespace) -> int:
    return _query(
        args,
        lambda client, item_filter: client.popular(
            args.k,
            window=args.window,
            filter=item_filter,
            exclude_item_ids=args.exclude,
            request_id=args.request_id,
        ),
    )


def _session(args: argparse.Namespace) -> int:
    return _query(
        args,
        lambda client, item_filter: client.recommend_for_session(
            args.events,
            args.k,
            filter=item_filter,
            exclude_item_ids=args.exclude,
            exclude_seen=False if args.include_seen else None,
            diversity=_diversity(args),
            explain=args.explain,
            request_id=args.request_id,
        ),
    )


def _query(
    args: argparse.Namespace,
    call: Callable[[RankingClient, ItemFilter | None], RecommendResponse],
) -> int:
    """Open a client from the connection arguments, make ``call``, print its answer."""
    from google.protobuf import json_format

    from recsys.client import DEFAULT_TARGET, TARGET_ENV, RankingClient, RankingError

    target = args.target or os.environ.get(TARGET_ENV) or DEFAULT_TARGET
    token = args.token if args.token is not None else os.environ.get(TOKEN_ENV) or None
    try:
        item_filter = _item_filter(args)
        client = RankingClient(
            target,
            timeout_s=args.timeout,
            token=token,
            tls=args.tls,
            root_certificates=args.ca_cert,
            certificate_chain=args.client_cert,
            private_key=args.client_key,
        )
    except ValueError as exc:
        return _fail(str(exc), EXIT_USAGE)
    except OSError as exc:
        return _fail(f"cannot read {exc.filename}: {exc.strerror}", EXIT_USAGE)
    try:
        with client:
            response = call(client, item_filter)
    except RankingError as exc:
        return _fail(*_error_message(exc, target, args.timeout))
    if args.json:
        print(
            json_format.MessageToJson(
                response,
                preserving_proto_field_name=True,
                always_print_fields_with_no_presence=True,
            )
        )
    else:
        print(format_response(response, explain=args.explain))
    return EXIT_OK


def _error_message(exc: RankingError, target: str, timeout_s: float) -> tuple[str, int]:
    """One line for a failed call, and the exit code (2 when the request was at fault)."""
    from recsys.client import (
        DeadlineExceededError,
        InvalidArgumentError,
        NotFoundError,
        UnauthenticatedError,
        UnavailableError,
    )

    server = f"the ranking server at {target}"
    quoted = f" (request id {exc.request_id})" if exc.request_id else ""
    # The server's messages name the field or item at fault: they need no prefix.
    if isinstance(exc, InvalidArgumentError):
        return exc.details, EXIT_USAGE
    if isinstance(exc, NotFoundError):
        return exc.details, EXIT_FAILURE
    if isinstance(exc, UnavailableError):
        # A request id means the server answered (e.g. no model yet); none, that no
        # server was reached at all.
        if exc.request_id:
            return f"{server} is unavailable: {exc.details}{quoted}", EXIT_FAILURE
        return f"{server} cannot be reached: {exc.details}", EXIT_FAILURE
    if isinstance(exc, DeadlineExceededError):
        return f"no answer from {server} within {timeout_s:g}s{quoted}", EXIT_FAILURE
    if isinstance(exc, UnauthenticatedError):
        hint = f"pass --token or set {TOKEN_ENV}"
        return f"{server} refused the call: {exc.details} ({hint})", EXIT_FAILURE
    return f"{exc.code.name}: {exc.details}{quoted}", EXIT_FAILURE


def _explanation(explanation: Explanation) -> str:
    parts = []
    if explanation.closest_history_item_id:
        like = explanation.closest_history_title or explanation.closest_history_item_id
        parts.append(f"like {like} ({explanation.history_similarity:.2f})")
    parts.append(f"relevance {explanation.relevance:.3f}")
    if explanation.diversity_penalty:
        parts.append(f"diversity -{explanation.diversity_penalty:.3f}")
    return "; ".join(parts)


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."


def format_response(response: RecommendResponse, *, explain: bool = False) -> str:
    """A header line (model, count, request id), the fallback reason if any, then an
    aligned table: rank, item, score, title, categories and, with ``explain``, why."""
    count = len(response.items)
    header = f"model {response.model_version or '?'}, {count} item{'' if count == 1 else 's'}"
    if response.request_id:
        header += f", request {response.request_id}"
    lines = [header]
    if response.fallback:
        lines.append(f"fallback: {response.fallback_reason or '(no reason given)'}")
    if not count:
        return "\n".join(lines)
    columns = ["rank", "item", "score", "title", "categories"] + (["why"] if explain else [])
    rows = [
        [
            str(rank),
            item.item_id,
            f"{item.score:.4f}",
            _clip(item.title, _TITLE_WIDTH),
            ", ".join(item.categories),
        ]
        + ([_explanation(item.explanation)] if explain else [])
        for rank, item in enumerate(response.items, start=1)
    ]
    widths = [max(len(row[i]) for row in [columns, *rows]) for i in range(len(columns))]
    right = {0, 2}  # rank and score line up on their last digit
    for row in [columns, *rows]:
        cells = [
            cell.rjust(widths[i]) if i in right else cell.ljust(widths[i])
            for i, cell in enumerate(row)
        ]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


# --- entry point --------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    from recsys import __version__

    parser = argparse.ArgumentParser(
        prog="recsys",
        description="Real-time recommender operations. Kafka settings come from "
        "RECSYS_KAFKA_* environment variables (e.g. RECSYS_KAFKA_BOOTSTRAP_SERVERS); "
        "the ranking server queried is RECSYS_RANKING_TARGET (host:port).",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = _subcommands(parser, "commands")
    for entry in _COMMANDS.values():
        entry.configure(sub.add_parser(entry.name, help=entry.help, description=entry.help))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` (default ``sys.argv[1:]``), run the command, return its exit code."""
    args = build_parser().parse_args(argv)
    handler: Handler = args.handler
    try:
        return handler(args)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
