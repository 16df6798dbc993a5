"""Reading topics back in tests: poll with a deadline until a condition holds."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable

import pytest
from confluent_kafka import Message

from recsys.events import POPULARITY_WINDOWS, ItemPopularity
from recsys.kafka import make_consumer, usable
from recsys.popularity import PartialCount, add_scores, popularity_key
from recsys.settings import KafkaSettings


class TopicReader:
    """Collects every message of some topics from the beginning, in arrival order."""

    def __init__(self, settings: KafkaSettings, topics: list[str]) -> None:
        self._consumer = make_consumer(settings, f"test-reader-{uuid.uuid4().hex[:8]}")
        self._consumer.subscribe(topics)
        self.messages: list[Message] = []

    def poll(self, timeout_s: float = 0.2) -> None:
        self.messages.extend(usable(self._consumer.consume(1_000, timeout_s)))

    def wait_until(
        self, condition: Callable[[list[Message]], bool], timeout_s: float, what: str
    ) -> list[Message]:
        deadline = time.monotonic() + timeout_s
        while not condition(self.messages):
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"{what}: not seen within {timeout_s:.0f}s ({len(self.messages)} messages read)"
                )
            self.poll()
        return self.messages

    def on(self, topic: str) -> list[Message]:
        return [m for m in self.messages if m.topic() == topic]

    def close(self) -> None:
        self._consumer.close()


def popularity_totals(messages: list[Message]) -> dict[str, PartialCount]:
    """Each item's popularity summed over partitions, from the latest record per key.

    Also checks each record's key and partition say the same as its fields.
    """
    latest: dict[bytes, ItemPopularity] = {}
    for message in messages:  # (arrival order is offset order within a partition)
        record = ItemPopularity.model_validate_json(message.value() or b"")
        key = message.key() or b""
        assert key == popularity_key(record.partition, record.item_id).encode(), key
        assert message.partition() == record.partition, (key, message.partition())
        latest[key] = record
    totals: dict[str, PartialCount] = {}
    for record in latest.values():
        total = totals.setdefault(record.item_id, PartialCount())
        total.scores = add_scores(total.scores, [record.log2_scores[w] for w in POPULARITY_WINDOWS])
        total.events += record.events
        total.latest_timestamp = max(total.latest_timestamp, record.latest_timestamp)
    return totals


def assert_same_counts(got: dict[str, PartialCount], want: dict[str, PartialCount]) -> None:
    """The same items with the same event counts and (to rounding) the same scores."""
    assert {i: c.events for i, c in got.items()} == {i: c.events for i, c in want.items()}
    for item_id, counted in want.items():
        assert got[item_id].scores == pytest.approx(counted.scores, abs=1e-6), item_id
        assert got[item_id].latest_timestamp == counted.latest_timestamp, item_id
