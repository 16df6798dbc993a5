"""Trending scores read from the real item-popularity topic on the test broker."""

from __future__ import annotations

import time

import pytest

from recsys.kafka import make_producer, produce
from recsys.popularity import PartialCount, popularity_key
from recsys.settings import KafkaSettings
from recsys.topics import Topics
from services.ranking.trending import DecayedPopularity, TrendingConsumer

pytestmark = pytest.mark.integration

NOW = time.time()


def _partial(*ages_s: float) -> PartialCount:
    counted = PartialCount()
    for age in ages_s:
        counted.add(NOW - age, weight=1.0, offset=0)
    return counted


def test_consumer_sums_partitions_skips_garbage_and_rebuilds_after_restart(
    kafka: KafkaSettings, topics: Topics
) -> None:
    producer = make_producer(kafka)
    records = 0

    def publish(item_id: str, partition: int, counted: PartialCount | None) -> None:
        nonlocal records
        value = None if counted is None else counted.to_record(item_id, partition)
        produce(
            producer,
            topics.item_popularity,
            popularity_key(partition, item_id),
            value,
            partition=partition,
        )
        records += 1

    # "fresh" is counted on both partitions: three recent events in all. "old" has eight
    # events three days old, on one partition. "gone" is counted, then tombstoned.
    publish("fresh", 0, _partial(60.0))
    publish("fresh", 1, _partial(30.0))
    publish("fresh", 1, _partial(30.0, 90.0))  # the newer partial replaces the older
    publish("old", 0, _partial(*[3 * 86_400.0] * 8))
    publish("gone", 1, _partial(1.0, 1.0, 1.0, 1.0))
    publish("gone", 1, None)
    for garbage in (b"{not json", b'{"item_id": 5}', b"[]"):
        produce(producer, topics.item_popularity, "0/x", garbage, partition=0)
    assert producer.flush(10) == 0

    def read(consumer: TrendingConsumer) -> DecayedPopularity:
        deadline = time.monotonic() + 30
        while consumer.popularity.records < records:
            assert time.monotonic() < deadline, f"only {consumer.popularity.records} read"
            time.sleep(0.05)
        return consumer.popularity

    first = TrendingConsumer(kafka, DecayedPopularity()).start()
    try:
        scores = read(first)
        hour = scores.ranked("hour")
        assert [i for i, _ in hour] == ["fresh", "old"]
        assert [i for i, _ in scores.ranked("week")] == ["old", "fresh"]
        # both partitions count: fresh holds three of the hour's (almost undecayed) events
        fresh_share = dict(hour)["fresh"]
        assert fresh_share == pytest.approx(1.0, abs=0.01)
        week = dict(scores.ranked("week"))
        assert week["fresh"] / week["old"] == pytest.approx(3 / (8 * 2 ** (-3 / 7)), rel=0.01)
    finally:
        first.stop()
    # a new replica rebuilds the same scores from the topic
    second = TrendingConsumer(kafka, DecayedPopularity()).start()
    try:
        rebuilt = dict(read(second).ranked("week"))
        assert rebuilt == pytest.approx(week, rel=1e-9)
    finally:
        second.stop()
