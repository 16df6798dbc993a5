"""The feature worker's time-decayed item popularity, end to end: the real worker counts
the events it keeps, weighted by type, once each; it publishes per-partition partials on
``item-popularity``; ranking's trending consumer sums them into the same ranking."""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

import pytest

from recsys.devstack.ports import free_port
from recsys.events import InteractionEvent, UserSequence
from recsys.popularity import PartialCount
from recsys.settings import KafkaSettings
from recsys.topics import Topics
from services.ranking.trending import DecayedPopularity, TrendingConsumer
from tests.integration.test_feature_recovery import publish, worker_env
from tests.support.services import FeatureWorker
from tests.support.topics import TopicReader, assert_same_counts, popularity_totals

pytestmark = pytest.mark.integration

WEIGHTS = {"click": 2.0, "purchase": 5.0, "add_to_cart": 0.0}  # views and ratings not kept
NOW = time.time()


def test_worker_counts_kept_events_once_and_ranking_sums_its_partitions(
    kafka: KafkaSettings, topics: Topics, tmp_path: Path
) -> None:
    rng = random.Random(2)
    events = [
        InteractionEvent(
            event_id=f"e{n}",
            user_id=f"u{rng.randrange(12)}",
            item_id=f"item-{min(rng.randrange(30), rng.randrange(30))}",  # skewed
            event_type=rng.choice(["view", "click", "add_to_cart", "purchase", "rating"]),
            timestamp=round(NOW - rng.uniform(0, 3 * 86_400), 3),
            value=4.0,
        )
        for n in range(600)
    ]
    resent = rng.sample(events, 40)  # client retries: the same event again, later
    messages = [(e.user_id, e.to_bytes()) for e in events + resent]

    want: dict[str, PartialCount] = {}
    kept_types = {t for t, w in WEIGHTS.items() if w > 0}
    kept = [e for e in events if e.event_type in kept_types]
    for event in kept:
        want.setdefault(event.item_id, PartialCount()).add(
            event.timestamp, WEIGHTS[event.event_type]
        )
    assert 0 < len(kept) < len(events)

    port = free_port()
    env = worker_env(kafka, tmp_path / "faust", port)
    env["RECSYS_FEATURE_EVENT_WEIGHTS"] = json.dumps(WEIGHTS)
    worker = FeatureWorker(env, tmp_path / "feature.log", port)
    reader = TopicReader(kafka, [topics.item_popularity, topics.user_sequences])
    try:
        publish(kafka, topics.interactions, messages)
        deadline = time.monotonic() + 90
        applied = ("processed", "duplicate", "ignored")
        while sum(worker.counter(outcome) for outcome in applied) < len(messages):
            assert worker.process.poll() is None, f"worker exited:\n{worker.log_tail()}"
            assert time.monotonic() < deadline, f"worker stalled:\n{worker.log_tail()}"
            reader.poll(0.2)
        reader.wait_until(
            lambda _: counted(reader) >= len(kept),
            timeout_s=30,
            what="every kept event counted",
        )
        outcomes = {outcome: worker.counter(outcome) for outcome in applied}
    finally:
        worker.stop()
    reader.poll(0.5)
    reader.close()

    resent_kept = sum(1 for e in resent if e.event_type in kept_types)
    assert outcomes == {
        "processed": len(kept),
        "duplicate": resent_kept,
        "ignored": len(messages) - len(kept) - resent_kept,
    }
    assert_same_counts(popularity_totals(reader.on(topics.item_popularity)), want)
    # the sequences hold the kept types only
    for message in reader.on(topics.user_sequences):
        sequence = UserSequence.model_validate_json(message.value() or b"")
        assert {e.event_type for e in sequence.entries} <= {"click", "purchase"}

    # ranking reads the partials and ranks as the weighted decayed sums say
    trending = TrendingConsumer(kafka, DecayedPopularity()).start()
    try:
        deadline = time.monotonic() + 30
        while trending.popularity.records < len(reader.on(topics.item_popularity)):
            assert time.monotonic() < deadline, "trending did not read the topic"
            time.sleep(0.05)
        day = trending.ranked("day")
    finally:
        trending.stop()
    top = max(c.scores[1] for c in want.values())  # (2 ** score alone would overflow)
    want_day = {i: 2.0 ** (c.scores[1] - top) for i, c in want.items()}
    total = sum(want_day.values())
    assert [i for i, _ in day] == sorted(want_day, key=lambda i: -want_day[i])
    assert dict(day) == pytest.approx({i: s / total for i, s in want_day.items()}, rel=1e-6)


def counted(reader: TopicReader) -> int:
    messages = [m for m in reader.messages if "item-popularity" in (m.topic() or "")]
    return sum(c.events for c in popularity_totals(messages).values())
