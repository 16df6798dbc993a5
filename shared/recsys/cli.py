"""The ``recsys`` command: operator tasks on one entry point.

Each top-level command registers itself with :func:`command`, so later commands
(recommend, similar, train, models) are one decorated function each. Handlers import
what they need lazily, which keeps ``recsys --help`` fast even when a command pulls in
torch or gRPC. Exit codes: 0 success, 1 operational failure (broker, network), 2 bad
input (argparse's own convention).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

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


# --- entry point --------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    from recsys import __version__

    parser = argparse.ArgumentParser(
        prog="recsys",
        description="Real-time recommender operations. Kafka settings come from "
        "RECSYS_KAFKA_* environment variables (e.g. RECSYS_KAFKA_BOOTSTRAP_SERVERS).",
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
