"""Bulk publication of catalogue and interaction events, as a client would send them.

Used to load datasets (MovieLens, synthetic) through Kafka exactly as live clients do, so
every downstream service sees the same path in tests, demos and production. Items go
first, so that a consumer replaying both topics meets an item before its interactions.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterable, Sized
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import KafkaError, Message, Producer
from tqdm import tqdm

from recsys.events import InteractionEvent, ItemEvent
from recsys.kafka import make_producer, produce, wait_for_broker
from recsys.settings import KafkaSettings
from recsys.topics import Topics

# Larger batches than the services' default producer: bulk loads want throughput.
BULK_PRODUCER_CONFIG: dict[str, Any] = {
    "linger.ms": 20,
    "batch.size": 1_000_000,
    "queue.buffering.max.messages": 500_000,
}
_PROGRESS_EVERY = 2_000
_MAX_ERRORS_KEPT = 5


@dataclass
class PublishReport:
    """What one publication did; ``failed`` counts messages the broker never acknowledged."""

    items: int = 0
    interactions: int = 0
    failed: int = 0
    seconds: float = 0.0
    errors: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        return self.items + self.interactions

    @property
    def rate(self) -> float:
        """Messages per second, delivery included."""
        return self.total / self.seconds if self.seconds > 0 else 0.0


class PublishError(RuntimeError):
    """Some messages were not delivered; ``report`` says how many and the first errors."""

    def __init__(self, message: str, report: PublishReport) -> None:
        super().__init__(message)
        self.report = report


class _Deliveries:
    """Delivery callback target: counts failures and keeps the first few reasons."""

    def __init__(self, report: PublishReport) -> None:
        self._report = report

    def __call__(self, error: KafkaError | None, message: Message) -> None:
        if error is None:
            return
        self._report.failed += 1
        if len(self._report.errors) < _MAX_ERRORS_KEPT:
            self._report.errors.append(f"{message.topic()}: {error.str()}")


def _total(*iterables: Iterable[Any]) -> int | None:
    if all(isinstance(it, Sized) for it in iterables):
        return sum(len(it) for it in iterables if isinstance(it, Sized))
    return None


def publish_events(
    producer_settings: KafkaSettings,
    items: Iterable[ItemEvent],
    interactions: Iterable[InteractionEvent],
    progress: bool = True,
    *,
    topics: Topics | None = None,
    broker_timeout_s: float = 30.0,
    flush_timeout_s: float = 120.0,
) -> PublishReport:
    """Produce ``items`` (key item_id), then ``interactions`` (key user_id), and flush.

    Keying by user keeps each user's interactions in order on one partition. Raises
    :class:`~recsys.kafka.BrokerUnavailable` if the broker does not answer, and
    :class:`PublishError` if any message was not acknowledged by the end of the flush.
    """
    wait_for_broker(producer_settings, timeout_s=broker_timeout_s)
    names = topics or Topics.from_settings(producer_settings)
    producer: Producer = make_producer(producer_settings, **BULK_PRODUCER_CONFIG)
    report = PublishReport()
    on_delivery = _Deliveries(report)
    started = time.perf_counter()
    with tqdm(
        total=_total(items, interactions),
        unit="msg",
        unit_scale=True,
        desc="publishing",
        disable=not progress,
    ) as bar:
        pending = 0
        # Items first, so a replay in time order meets every item before its interactions.
        messages = itertools.chain(
            ((names.items, item.item_id, item, "items") for item in items),
            ((names.interactions, e.user_id, e, "interactions") for e in interactions),
        )
        for topic, key, event, counter in messages:
            produce(producer, topic, key, event.to_bytes(), on_delivery)
            setattr(report, counter, getattr(report, counter) + 1)
            pending += 1
            if pending >= _PROGRESS_EVERY:
                bar.update(pending)
                pending = 0
        bar.update(pending)
        bar.set_postfix_str("flushing")
        undelivered = producer.flush(flush_timeout_s)
    report.seconds = time.perf_counter() - started
    if undelivered:
        report.failed += undelivered
        report.errors.append(f"{undelivered} messages still queued after {flush_timeout_s:.0f}s")
    if report.failed:
        raise PublishError(
            f"{report.failed} of {report.total} messages were not delivered to "
            f"{producer_settings.bootstrap_servers}: {'; '.join(report.errors)}",
            report,
        )
    return report
