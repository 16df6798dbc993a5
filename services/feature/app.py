"""The faust application: topics, the recent-interactions and item-popularity tables, and
the agent.

Interactions are partitioned by user id, so the table shard that holds a user lives with
the partition that carries the user's events; a message keyed otherwise is re-published
under the right key rather than processed on the wrong shard.
"""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

import faust
from confluent_kafka import Producer
from faust.types import TP
from prometheus_client import Counter, Gauge, Histogram

from recsys.events import InteractionEvent, InvalidEvent, parse_event
from recsys.kafka import (
    DEAD_LETTERS,
    build_dead_letter,
    dead_letter_kind,
    letter_key,
    make_producer,
    produce,
    raise_on_failure,
)
from recsys.lifecycle import freeze_startup_heap
from recsys.popularity import PartialCount, popularity_key
from recsys.settings import KafkaSettings
from recsys.topics import Topics
from services.feature.contiguous import ContiguousConsumer
from services.feature.durable_table import add_durable_table
from services.feature.sequence import (
    UserState,
    apply_interaction,
    decode_state,
    encode_state,
    encode_user_sequence,
)
from services.feature.settings import FeatureSettings
from services.feature.transport import use_feature_transport

log = logging.getLogger(__name__)

EVENTS = Counter("recsys_feature_events_total", "Interaction messages by outcome", ["outcome"])
BATCH_SECONDS = Histogram(
    "recsys_feature_batch_seconds",
    "Time to apply one batch of interactions (table writes and delivered sequences)",
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)
BATCH_EVENTS = Histogram(
    "recsys_feature_batch_events",
    "Interaction messages per applied batch",
    buckets=(1, 2, 5, 10, 25, 50, 100, 250, 500, 1000),
)
ASSIGNED_PARTITIONS = Gauge(
    "recsys_feature_assigned_partitions",
    "Partitions of the interactions topic this worker owns after the last rebalance",
)


@dataclass
class FeatureApp:
    app: faust.App
    settings: FeatureSettings
    ready: bool = False


def _faust_credentials(kafka: KafkaSettings) -> Any:
    """The same security settings librdkafka gets (recsys.kafka), in faust's terms."""
    uses_tls = kafka.security_protocol in ("SSL", "SASL_SSL")
    context = ssl.create_default_context(cafile=kafka.ssl_ca_location or None) if uses_tls else None
    if kafka.sasl_mechanism:
        return faust.SASLCredentials(
            username=kafka.sasl_username,
            password=kafka.sasl_password.get_secret_value(),
            mechanism=kafka.sasl_mechanism,
            ssl_context=context,
        )
    return faust.SSLCredentials(context) if context is not None else None


def _faust_broker(bootstrap_servers: str) -> str:
    return ";".join(f"kafka://{server.strip()}" for server in bootstrap_servers.split(","))


def _flush_all(producers: Sequence[Producer], timeout_s: float) -> int:
    """Flush every producer within one deadline; the messages still undelivered."""
    deadline = time.monotonic() + timeout_s
    return sum(p.flush(max(0.0, deadline - time.monotonic())) for p in producers)


def create_app(settings: FeatureSettings) -> FeatureApp:
    kafka = settings.kafka
    topics = Topics.from_settings(kafka)
    app = faust.App(
        # The prefix also scopes faust's own topics (changelog, repartition) and group.
        f"{kafka.topic_prefix}{settings.app_id}",
        broker=_faust_broker(kafka.bootstrap_servers),
        store="memory://",
        datadir=str(settings.data_dir),
        topic_partitions=kafka.partitions,
        topic_replication_factor=kafka.replication_factor,
        broker_session_timeout=kafka.session_timeout_ms / 1000,
        broker_heartbeat_interval=kafka.heartbeat_interval_ms / 1000,
        producer_max_batch_size=settings.producer_max_batch_size,
        # Dead letters and re-keyed events batch like every producer (faust's default is 0).
        producer_linger=kafka.producer_linger_ms / 1000,
        # Tansu cannot run aiokafka's idempotent producer; events carry ids instead.
        processing_guarantee="at_least_once",
        broker_credentials=_faust_credentials(kafka),
        web_enabled=False,
        table_standby_replicas=0,
        consumer_auto_offset_reset="earliest",
        # Table values are orjson bytes (see sequence.py): the stdlib json codec was a
        # third of the per-event cost.
        key_serializer="raw",
        value_serializer="raw",
    )
    # Every partition's events reach the agent in offset order, none skipped, across
    # rebalances (faust alone can skip prefetched ones: see contiguous.py), and fetches
    # wait no longer than the Kafka settings say (see transport.py).
    use_feature_transport(app, kafka.fetch_max_wait_ms)
    raw: dict[str, Any] = {
        "key_type": bytes,
        "value_type": bytes,
        "key_serializer": "raw",
        "value_serializer": "raw",
    }
    interactions = app.topic(topics.interactions, **raw)
    dead_letter = app.topic(topics.dead_letter, **raw)
    # Sequences and both tables' changelogs go through librdkafka (batched in C); faust's
    # own producer is left with dead letters and re-keyed events. This one writes the
    # user-state changelog.
    output = make_producer(kafka, **{"batch.size": settings.producer_max_batch_size})
    # The two topics other services read, user-sequences (inference) and item-popularity
    # (ranking), have producers of their own with larger record batches: Tansu's fetches
    # cost more for every batch a topic holds (README, "Tansu's in-memory log slows with
    # its length": after 120 s at 3,000 events/s the backlog was 37,066 events with
    # item-popularity at 16 KB, a median of 8,657 at 256 KB, the same day). The
    # user-state changelog keeps producer_max_batch_size: nothing reads it but a
    # recovery, whose loss to Tansu's under-reported end offset the small batches bound.
    sequences_out = make_producer(kafka, **{"batch.size": settings.sequences_max_batch_size})
    popularity_out = make_producer(kafka, **{"batch.size": settings.popularity_max_batch_size})
    recent = add_durable_table(
        app,
        "user-recent",
        output,
        default=None,
        key_type=str,
        value_type=bytes,
    )
    # Time-decayed counts per (partition, item) of the events this worker applies. The
    # public item-popularity topic is the table's changelog: ranking reads the partials
    # there, and a partition's partials move with it on a rebalance like users' state.
    popularity = add_durable_table(
        app,
        "item-popularity",
        popularity_out,
        default=None,
        key_type=bytes,  # raw keys (a str key would be written as a JSON string)
        value_type=bytes,
        changelog_topic=app.topic(
            topics.item_popularity,
            key_type=bytes,
            value_type=bytes,
            key_serializer="raw",
            value_serializer="raw",
            partitions=kafka.partitions,
            compacting=True,
            internal=True,
            acks=False,  # as faust's own changelogs: read by recovery, never acknowledged
        ),
    )
    weights = settings.event_weights
    feature_app = FeatureApp(app=app, settings=settings)

    async def send_dead_letter(message: Any, reason: str) -> None:
        letter = build_dead_letter(
            reason=reason,
            source_topic=message.topic,
            partition=message.partition,
            offset=message.offset,
            service="feature",
            value=message.value,
        )
        await dead_letter.send(key=letter_key(message.key), value=letter.to_bytes())
        DEAD_LETTERS.labels("interactions", dead_letter_kind(reason)).inc()
        log.warning(
            "dead-lettered interaction",
            extra={"reason": reason, "partition": message.partition, "offset": message.offset},
        )

    def count_popularity(
        counts: dict[tuple[int, str], PartialCount],
        partition: int,
        interaction: InteractionEvent,
        offset: int,
    ) -> None:
        """Add a new event to its item's count, unless the published record holds it."""
        counted = counts.get((partition, interaction.item_id))
        if counted is None:
            key = popularity_key(partition, interaction.item_id).encode()
            counted = counts[partition, interaction.item_id] = PartialCount.from_record(
                popularity.get(key)
            )
        # (A batch is applied user by user, not in offset order: compare with the record.)
        if not counted.holds(offset):
            counted.add(interaction.timestamp, weights[interaction.event_type], offset)

    async def apply_batch(events: Sequence[Any]) -> None:
        """Apply a batch; each changed user gets one table write and one sequence message,
        each item counted one record per partition.

        Events are grouped by user (arrival order kept) and applied one user at a time, so
        a single decoded state is alive at once rather than one per user in the batch: a
        full batch under backlog touches hundreds of users, and holding all their decoded
        states raised the worker's memory high-water mark with every larger batch.

        A message is counted in item popularity when it is new to its user. A kill while
        a batch's records are being delivered can leave the users' records delivered and
        the popularity records not (there is no transaction across topics); the replayed
        batch is then a duplicate to the users. So each user's state keeps the offsets it
        applied as new in its last batch, each popularity record the highest offset it
        counted, and a replayed message the user has applied is counted again only if it
        was new then and its item's record does not hold it yet.
        """
        # Each partition is applied contiguously: an event after one faust dropped on its
        # way here waits for its partition to be read again (see contiguous.py).
        consumer = cast(ContiguousConsumer, app.consumer)
        admitted = await consumer.admit([event.message for event in events])
        # user -> (their valid events and offsets in arrival order, their partition)
        by_user: dict[str, tuple[list[tuple[InteractionEvent, int]], int]] = {}
        for event, admit in zip(events, admitted, strict=True):
            if not admit:
                EVENTS.labels("not_applied").inc()
                continue
            message = event.message
            try:
                interaction = parse_event(InteractionEvent, message.value)
            except InvalidEvent as exc:
                EVENTS.labels("dead_lettered").inc()
                await send_dead_letter(message, str(exc))
                continue
            if interaction.event_type not in weights:
                EVENTS.labels("ignored").inc()  # a valid event of a type not kept
                continue
            user = interaction.user_id
            if message.key != user.encode():
                # Keep the table co-partitioned: route the event to its user's partition.
                await interactions.send(key=user.encode(), value=message.value)
                EVENTS.labels("rekeyed").inc()
                continue
            if user in by_user:
                by_user[user][0].append((interaction, message.offset))
            else:
                by_user[user] = ([(interaction, message.offset)], message.partition)
        states: list[tuple[str, bytes, int]] = []  # (user, new state, partition)
        counts: dict[tuple[int, str], PartialCount] = {}
        for user, (user_events, partition) in by_user.items():
            state: UserState | None = decode_state(recent.get(user))
            applied_through = state.get("offset", -1) if state is not None else -1
            new_before = set(state.get("new_offsets", ())) if state is not None else set()
            last: InteractionEvent | None = None
            new_offsets: list[int] = []
            for interaction, offset in user_events:
                if offset <= applied_through:  # redelivered: the state holds it already
                    EVENTS.labels("duplicate").inc()
                    if offset in new_before:  # (kept with this batch's, should it be lost)
                        new_offsets.append(offset)
                        count_popularity(counts, partition, interaction, offset)
                    continue
                state, is_new = apply_interaction(
                    state,
                    interaction,
                    max_length=settings.max_sequence_length,
                    max_seen=settings.max_seen_items,
                    dedupe_window=settings.dedupe_window,
                )
                if is_new:
                    last = interaction
                    new_offsets.append(offset)
                    EVENTS.labels("processed").inc()
                    count_popularity(counts, partition, interaction, offset)
                else:
                    EVENTS.labels("duplicate").inc()
            if state is not None and last is not None:
                state["offset"] = user_events[-1][1]
                state["new_offsets"] = new_offsets
                states.append((user, encode_state(state), partition))
                produce(
                    sequences_out,
                    topics.user_sequences,
                    user,
                    encode_user_sequence(user, state, last),
                    on_delivery=raise_on_failure,
                )
        # The sequences and both tables' changelogs are delivered before faust
        # acknowledges the batch's offsets: at least once, with no state lost to a kill.
        # The state is written only once the sequences are delivered: a kill before that
        # leaves state that lacks the batch, so its replay publishes the sequences again.
        # Written first (the changelog producer sends on its own after its linger), a
        # replay found every event applied and the sequences were never sent.
        if states and await asyncio.to_thread(sequences_out.flush, 30) > 0:
            raise RuntimeError("user-sequences not delivered within 30 s")
        for user, encoded, partition in states:
            recent.put(user, encoded, partition=partition)
        changed = bool(states)
        for (partition, item_id), counted in counts.items():
            if counted.added:
                key = popularity_key(partition, item_id).encode()
                popularity.put(key, counted.to_record(item_id, partition), partition=partition)
                changed = True
        if changed and await asyncio.to_thread(_flush_all, (output, popularity_out), 30) > 0:
            raise RuntimeError("table changelogs not delivered within 30 s")

    @app.agent(interactions)
    async def process_interactions(stream: Any) -> None:
        # Offsets are acknowledged after the batch is applied: at least once, and the
        # event-id deduplication makes a redelivered batch change nothing.
        async for events in stream.take_events(
            settings.batch_size, within=settings.batch_wait_ms / 1000
        ):
            try:
                started = time.perf_counter()
                await apply_batch(events)
                BATCH_SECONDS.observe(time.perf_counter() - started)
                BATCH_EVENTS.observe(len(events))
            except Exception:
                # Crash-only: a live process that stopped consuming would hide the failure.
                # Exiting skips the offset commit, so the restart replays the batch and
                # deduplication by event id keeps the replay harmless.
                log.exception("feature batch failed; exiting for a restart")
                feature_app.ready = False
                logging.shutdown()
                os._exit(1)

    @app.timer(interval=1.0)  # type: ignore[untyped-decorator]
    async def read_stalled_partitions_again() -> None:
        consumer = cast(ContiguousConsumer, app.consumer)
        await consumer.read_stalled_again(settings.stall_reread_seconds)

    async def count_assigned(_sender: Any, assigned: set[TP], **_: Any) -> None:
        owned = sorted(tp.partition for tp in assigned if tp.topic == topics.interactions)
        ASSIGNED_PARTITIONS.set(len(owned))
        log.info("partitions assigned", extra={"topic": topics.interactions, "partitions": owned})

    # (mode types receivers as taking any positional arguments; this one takes one)
    app.on_partitions_assigned.connect(count_assigned)  # type: ignore[arg-type]

    @app.task  # type: ignore[untyped-decorator]
    async def mark_ready() -> None:
        feature_app.ready = True
        log.info("feature worker started", extra={"topic": topics.interactions})
        freeze_startup_heap()

    return feature_app
