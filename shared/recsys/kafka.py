"""Kafka clients configured once: producers, consumers and the dead-letter sink."""

from __future__ import annotations

import base64
import hashlib
import logging
import time
import uuid
from collections.abc import Callable
from typing import Any

from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient
from prometheus_client import Counter

from recsys.events import DeadLetter
from recsys.settings import KafkaSettings
from recsys.topics import Topics

log = logging.getLogger(__name__)

# A letter must fit every producer's default 1 MB request, and base64 grows bytes by 4/3:
# keep at most this much of the original value (and key); ``original_size`` says if cut.
MAX_LETTER_VALUE_BYTES = 256 * 1024
MAX_LETTER_KEY_BYTES = 1024


class BrokerUnavailable(RuntimeError):
    """The Kafka broker named by RECSYS_KAFKA_BOOTSTRAP_SERVERS cannot be reached."""


def _base_config(settings: KafkaSettings) -> dict[str, Any]:
    config: dict[str, Any] = {
        "bootstrap.servers": settings.bootstrap_servers,
        "security.protocol": settings.security_protocol,
        "client.id": "recsys",
    }
    if settings.sasl_mechanism:
        config |= {
            "sasl.mechanism": settings.sasl_mechanism,
            "sasl.username": settings.sasl_username,
            "sasl.password": settings.sasl_password.get_secret_value(),
        }
    if settings.ssl_ca_location:
        config["ssl.ca.location"] = settings.ssl_ca_location
    return config


def make_producer(settings: KafkaSettings, **overrides: Any) -> Producer:
    config = _base_config(settings) | {
        "linger.ms": settings.producer_linger_ms,
        "acks": "all",
        "compression.type": "none",
        # Java-compatible murmur2, the partitioner of Kafka's own clients and of faust:
        # a user's events and the feature table's changelog land on the same partition.
        "partitioner": "murmur2_random",
        # Redelivered events are deduplicated by event_id downstream, so plain retries suffice.
        "enable.idempotence": False,
    }
    return Producer(config | overrides)


def make_consumer(
    settings: KafkaSettings,
    group_id: str,
    **overrides: Any,
) -> Consumer:
    """A group consumer reading from the earliest offset when it has none committed.

    Offsets are committed explicitly, and only by services whose state outlives them;
    services that rebuild in-memory state from compacted topics never commit, so every
    start replays those topics from the beginning.
    """
    config = _base_config(settings) | {
        "group.id": group_id,
        "auto.offset.reset": "earliest",
        "enable.auto.commit": False,
        "session.timeout.ms": settings.session_timeout_ms,
        "heartbeat.interval.ms": settings.heartbeat_interval_ms,
        "max.poll.interval.ms": max(300_000, settings.session_timeout_ms),
        "fetch.wait.max.ms": settings.fetch_max_wait_ms,
    }
    return Consumer(config | overrides)


def paced_fetch(interval_ms: int) -> dict[str, Any]:
    """Consumer overrides for a reader that needs no sub-second hop (the trainer, trending).

    While records flow it asks the broker for more at most every ``interval_ms`` per
    partition (librdkafka postpones the next fetch while its queue holds a record), and
    each fetch may carry 8 MB a partition, so a catch-up read stays fast. A streaming
    consumer fetches as each record batch lands instead. On Tansu, the local broker, each
    fetch that finds new records costs time for every record batch the partition holds:
    with one reader of 1,500 records/s in 5 ms batches the broker went from 0.2 to 0.99 of
    a core in 60 s, and from 0.12 to 0.17 with the reader paced at 500 ms
    (``bench/broker.py``).
    """
    if interval_ms < 0:
        raise ValueError("interval_ms must be >= 0")
    if interval_ms == 0:
        return {}
    return {
        "queued.min.messages": 1,
        "fetch.queue.backoff.ms": interval_ms,
        "max.partition.fetch.bytes": 8 << 20,
    }


def make_replay_consumer(settings: KafkaSettings, topic: str, name: str) -> Consumer:
    """A consumer that reads every partition of ``topic`` from the beginning, outside any
    group: each replica of a service sees every message (model announcements), and
    nothing is committed."""
    consumer = make_consumer(settings, f"{name}-replay-{uuid.uuid4().hex[:8]}")
    metadata = consumer.list_topics(topic, timeout=30)
    partitions = metadata.topics[topic].partitions if topic in metadata.topics else {0: None}
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in sorted(partitions)])
    return consumer


def wait_for_broker(settings: KafkaSettings, timeout_s: float | None = None) -> None:
    """Block until the broker answers a metadata request, or raise BrokerUnavailable."""
    timeout_s = settings.connect_timeout_s if timeout_s is None else timeout_s
    admin = AdminClient(_base_config(settings))
    deadline = time.monotonic() + timeout_s
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            admin.list_topics(timeout=min(5.0, max(0.5, deadline - time.monotonic())))
            return
        except KafkaException as exc:
            last_error = exc
            time.sleep(0.2)
    raise BrokerUnavailable(
        f"Kafka broker at {settings.bootstrap_servers!r} did not answer within {timeout_s:.0f}s"
        f" (set RECSYS_KAFKA_BOOTSTRAP_SERVERS): {last_error}"
    )


def raise_on_failure(error: KafkaError | None, message: Message) -> None:
    """A delivery callback that makes the next ``poll``/``flush`` raise a failed delivery."""
    if error is not None:
        raise KafkaException(error)


def produce(
    producer: Producer,
    topic: str,
    key: str | bytes | None,
    value: bytes | None,
    on_delivery: Callable[[KafkaError | None, Message], None] | None = None,
    partition: int | None = None,
) -> None:
    """Produce, waiting for queue space instead of failing when the local queue is full;
    ``partition`` None leaves it to the partitioner (by key)."""
    # librdkafka's "unassigned" partition (-1) means: the partitioner decides.
    target = -1 if partition is None else partition
    while True:
        try:
            producer.produce(topic, key=key, value=value, partition=target, on_delivery=on_delivery)
            producer.poll(0)
            return
        except BufferError:
            producer.poll(0.1)


def usable(messages: list[Message]) -> list[Message]:
    """The messages that carry data; consumer errors are logged (librdkafka retries them)."""
    good = []
    for message in messages:
        error = message.error()
        if error is None:
            good.append(message)
        elif error.code() != KafkaError._PARTITION_EOF:
            log.warning("consumer error", extra={"error": str(error)})
    return good


DEAD_LETTERS = Counter("recsys_dead_letters_total", "Messages dead-lettered", ["source", "kind"])


def dead_letter_kind(reason: str) -> str:
    """A bounded metric label for a rejection reason (the reason itself is in the letter)."""
    for prefix, kind in (
        ("message of", "too_large"),
        ("empty message", "empty"),
        ("undecodable", "undecodable"),
        ("invalid", "invalid"),
        ("refused by the store", "refused_by_store"),
    ):
        if reason.startswith(prefix):
            return kind
    return "other"


def build_dead_letter(
    *,
    reason: str,
    source_topic: str,
    partition: int,
    offset: int,
    service: str,
    value: bytes | None,
) -> DeadLetter:
    """The dead-letter record of one message; its id makes redelivered letters detectable."""
    event_id = f"{source_topic}:{partition}:{offset}"
    if len(event_id) > 256:  # a long (legal) topic name: keep the id unique and bounded
        digest = hashlib.sha256(event_id.encode()).hexdigest()[:16]
        event_id = f"{source_topic[:180]}~{digest}:{partition}:{offset}"
    return DeadLetter(
        event_id=event_id,
        # one line of valid UTF-8 (a lone surrogate would not serialise)
        reason=reason[:2_000].encode("utf-8", "replace").decode("utf-8"),
        source_topic=source_topic,
        partition=partition,
        offset=offset,
        service=service,
        original_value_b64=base64.b64encode((value or b"")[:MAX_LETTER_VALUE_BYTES]).decode(
            "ascii"
        ),
        original_size=len(value or b""),
        failed_at=time.time(),
    )


def letter_key(key: bytes | None) -> bytes | None:
    return key[:MAX_LETTER_KEY_BYTES] if key is not None else None


class DeadLetterSink:
    """Sends messages that cannot be used to the dead-letter topic, with the reason."""

    def __init__(self, producer: Producer, topics: Topics, service: str) -> None:
        self._producer = producer
        self._topic = topics.dead_letter
        self._service = service
        self.count = 0

    def send(
        self,
        *,
        reason: str,
        source_topic: str,
        partition: int,
        offset: int,
        key: bytes | None,
        value: bytes | None,
    ) -> None:
        letter = build_dead_letter(
            reason=reason,
            source_topic=source_topic,
            partition=partition,
            offset=offset,
            service=self._service,
            value=value,
        )
        produce(self._producer, self._topic, letter_key(key), letter.to_bytes())
        self.count += 1
        DEAD_LETTERS.labels(source_topic, dead_letter_kind(reason)).inc()
        log.warning(
            "dead-lettered message",
            extra={
                "reason": reason,
                "topic": source_topic,
                "partition": partition,
                "offset": offset,
            },
        )

    def send_message(self, message: Message, reason: str) -> None:
        self.send(
            reason=reason,
            source_topic=message.topic() or "",
            partition=message.partition() or 0,
            offset=message.offset() or 0,
            key=message.key(),
            value=message.value(),
        )
