"""The faust application: topics, the recent-interactions table and the agent.

Interactions are partitioned by user id, so the table shard that holds a user lives with
the partition that carries the user's events; a message keyed otherwise is re-published
under the right key rather than processed on the wrong shard.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import faust
from prometheus_client import Counter

from recsys.events import InteractionEvent, InvalidEvent, parse_event
from recsys.kafka import build_dead_letter
from recsys.logs import correlation_id
from recsys.topics import Topics
from services.feature.sequence import UserState, apply_interaction, to_user_sequence
from services.feature.settings import FeatureSettings

log = logging.getLogger(__name__)

EVENTS = Counter("recsys_feature_events_total", "Interaction messages by outcome", ["outcome"])
DEAD_LETTERS = Counter("recsys_dead_letters_total", "Messages dead-lettered", ["source", "kind"])


@dataclass
class FeatureApp:
    app: faust.App
    settings: FeatureSettings
    ready: bool = False


def _faust_broker(bootstrap_servers: str) -> str:
    return ";".join(f"kafka://{server.strip()}" for server in bootstrap_servers.split(","))


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
        # Tansu cannot run aiokafka's idempotent producer; events carry ids instead.
        processing_guarantee="at_least_once",
        web_enabled=False,
        table_standby_replicas=0,
        consumer_auto_offset_reset="earliest",
    )
    raw: dict[str, Any] = {
        "key_type": bytes,
        "value_type": bytes,
        "key_serializer": "raw",
        "value_serializer": "raw",
    }
    interactions = app.topic(topics.interactions, **raw)
    user_sequences = app.topic(topics.user_sequences, **raw)
    dead_letter = app.topic(topics.dead_letter, **raw)
    recent = app.Table(
        "user-recent",
        default=None,
        key_type=str,
        value_type=dict,
    )
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
        await dead_letter.send(key=message.key, value=letter.to_bytes())
        DEAD_LETTERS.labels("interactions", reason.split(":", 1)[0][:40]).inc()
        log.warning(
            "dead-lettered interaction",
            extra={"reason": reason, "partition": message.partition, "offset": message.offset},
        )

    @app.agent(interactions)
    async def process_interactions(stream: Any) -> None:
        async for event in stream.events():
            message = event.message
            try:
                interaction = parse_event(InteractionEvent, message.value)
            except InvalidEvent as exc:
                EVENTS.labels("dead_lettered").inc()
                await send_dead_letter(message, str(exc))
                continue
            token = correlation_id.set(interaction.event_id)
            try:
                user_key = interaction.user_id.encode()
                if message.key != user_key:
                    # Keep the table co-partitioned: route the event to its user's partition.
                    await interactions.send(key=user_key, value=message.value)
                    EVENTS.labels("rekeyed").inc()
                    continue
                state: UserState | None = recent.get(interaction.user_id)
                new_state, changed = apply_interaction(
                    state,
                    interaction,
                    max_length=settings.max_sequence_length,
                    max_seen=settings.max_seen_items,
                    dedupe_window=settings.dedupe_window,
                )
                if not changed:
                    EVENTS.labels("duplicate").inc()
                    continue
                recent[interaction.user_id] = new_state
                sequence = to_user_sequence(interaction.user_id, new_state, interaction)
                await user_sequences.send(key=user_key, value=sequence.to_bytes())
                EVENTS.labels("processed").inc()
            finally:
                correlation_id.reset(token)

    @app.task  # type: ignore[untyped-decorator]
    async def mark_ready() -> None:
        feature_app.ready = True
        log.info("feature worker started", extra={"topic": topics.interactions})

    return feature_app
