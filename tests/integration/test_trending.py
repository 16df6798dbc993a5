"""Trending counts folded from the real interactions topic on the test broker."""

from __future__ import annotations

import time

import pytest

from recsys.events import InteractionEvent
from recsys.kafka import make_producer, produce
from recsys.settings import KafkaSettings
from recsys.topics import Topics
from services.ranking.trending import DecayedPopularity, TrendingConsumer

pytestmark = pytest.mark.integration


def _event(n: int, item_id: str, age_s: float) -> bytes:
    return InteractionEvent(
        event_id=f"e{n}",
        user_id=f"u{n % 7}",
        item_id=item_id,
        event_type="view",
        timestamp=time.time() - age_s,
    ).to_bytes()


def test_consumer_folds_events_skips_garbage_and_rebuilds_after_restart(
    kafka: KafkaSettings, topics: Topics
) -> None:
    producer = make_producer(kafka)
    n = 0
    for item_id, count, age_s in (("fresh", 3, 60.0), ("old", 8, 3 * 86_400.0)):
        for _ in range(count):
            produce(producer, topics.interactions, f"u{n % 7}", _event(n, item_id, age_s))
            n += 1
    for garbage in (b"{not json", b'{"item_id": 5}', b"[]", b""):
        produce(producer, topics.interactions, "u0", garbage)
    producer.flush(10)

    def folded(consumer: TrendingConsumer, events: int) -> DecayedPopularity:
        deadline = time.monotonic() + 30
        while consumer.popularity.events < events:
            assert time.monotonic() < deadline, f"only {consumer.popularity.events} folded"
            time.sleep(0.05)
        return consumer.popularity

    first = TrendingConsumer(kafka, DecayedPopularity(), lookback_s=7 * 86_400).start()
    try:
        counts = folded(first, 11)
        assert [i for i, _ in counts.ranked("hour")] == ["fresh", "old"]
        assert [i for i, _ in counts.ranked("week")] == ["old", "fresh"]
    finally:
        first.stop()
    # a new replica rebuilds the same counts from the log
    second = TrendingConsumer(kafka, DecayedPopularity(), lookback_s=7 * 86_400).start()
    try:
        assert folded(second, 11).events == 11
    finally:
        second.stop()
