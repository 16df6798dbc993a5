"""Time-decayed popularity: the log-domain arithmetic, the published record, the
feature service's event weights and the ranking side's sum over partitions."""

from __future__ import annotations

import math
import random
import re

import pytest
from pydantic import ValidationError

from recsys.events import POPULARITY_WINDOWS, InvalidEvent, ItemPopularity, parse_event
from recsys.popularity import (
    HALF_LIVES_S,
    PartialCount,
    logaddexp2,
    parse_popularity_key,
    popularity_key,
)
from services.feature.settings import FeatureSettings
from services.ranking.trending import DecayedPopularity

NOW = 1_700_000_000.0


def decayed(log2_score: float, window: str, now: float = NOW) -> float:
    """The plain decayed sum a log2 score stands for, read at ``now``."""
    return float(2.0 ** (log2_score - now / HALF_LIVES_S[window]))


def test_logaddexp2_is_the_log_of_a_sum() -> None:
    assert logaddexp2(3.0, 3.0) == pytest.approx(4.0)
    assert logaddexp2(-math.inf, 5.0) == 5.0
    assert logaddexp2(5.0, -math.inf) == 5.0
    assert logaddexp2(-math.inf, -math.inf) == -math.inf
    # no overflow where 2 ** x alone would overflow
    assert logaddexp2(2_000.0, 2_000.0) == pytest.approx(2_001.0)


def test_a_partial_count_is_the_weighted_decayed_sum_of_its_events() -> None:
    events = [(NOW - 60, 1.0), (NOW - 7_200, 5.0), (NOW - 3 * 86_400, 2.0)]
    partial = PartialCount()
    for timestamp, weight in events:
        partial.add(timestamp, weight)
    assert partial.events == 3 and partial.latest_timestamp == NOW - 60
    for window, score in zip(POPULARITY_WINDOWS, partial.scores, strict=True):
        half_life = HALF_LIVES_S[window]
        want = sum(w * 2.0 ** (-(NOW - t) / half_life) for t, w in events)
        assert decayed(score, window) == pytest.approx(want, rel=1e-9)


def test_records_validate_and_add_up_batch_by_batch() -> None:
    rng = random.Random(3)
    events = [(NOW - rng.uniform(0, 10 * 86_400), rng.choice([1.0, 2.0, 5.0])) for _ in range(50)]
    whole = PartialCount()
    for timestamp, weight in events:
        whole.add(timestamp, weight)
    record: bytes | None = None
    for start in range(0, len(events), 7):  # batch by batch, as the worker applies them
        batch = PartialCount.from_record(record)
        assert batch.added == 0
        for offset, (timestamp, weight) in enumerate(events[start : start + 7], start + 100):
            batch.add(timestamp, weight, offset)
        record = batch.to_record("item-1", 3)
    parsed = parse_event(ItemPopularity, record)
    assert (parsed.item_id, parsed.partition, parsed.events) == ("item-1", 3, 50)
    assert parsed.latest_timestamp == max(t for t, _ in events)
    assert parsed.through_offset == 149
    assert PartialCount.from_record(record).holds(149)  # what a replay must not count again
    assert not PartialCount.from_record(record).holds(150)
    for window, score in zip(POPULARITY_WINDOWS, whole.scores, strict=True):
        assert parsed.log2_scores[window] == pytest.approx(score, abs=1e-7)


def test_records_missing_a_window_or_not_finite_are_invalid() -> None:
    counted = PartialCount()
    counted.add(NOW, 1.0, offset=0)
    good = counted.to_record("i", 0)
    parse_event(ItemPopularity, good)
    for bad in (
        good.replace(b'"week"', b'"month"'),
        good.replace(b'"partition":0', b'"partition":-1'),
        b'{"item_id":"i","partition":0,"log2_scores":{"hour":1,"day":1,"week":"x"},'
        b'"events":1,"latest_timestamp":1.0}',
        b"not json",
    ):
        with pytest.raises(InvalidEvent):
            parse_event(ItemPopularity, bad)


def test_keys_name_the_partition_and_the_item() -> None:
    key = popularity_key(4, "item/with/slashes")
    assert parse_popularity_key(key.encode()) == (4, "item/with/slashes")
    for bad in (b"4", b"x/item", b"4/"):
        with pytest.raises(ValueError):
            parse_popularity_key(bad)


def _count(*timestamps: float, weight: float = 1.0) -> PartialCount:
    partial = PartialCount()
    for timestamp in timestamps:
        partial.add(timestamp, weight)
    return partial


def test_ranking_sums_partials_over_partitions_and_forgets_dropped_ones() -> None:
    popularity = DecayedPopularity()
    # "a" is counted on two partitions; together it leads the hour window.
    popularity.set_partial("a", 0, _count(NOW, NOW - 30).scores)
    popularity.set_partial("a", 1, _count(NOW - 10).scores)
    popularity.set_partial("b", 1, _count(NOW, NOW, weight=1.2).scores)
    popularity.set_partial("old", 0, _count(*[NOW - 5 * 86_400] * 40).scores)
    hour = dict(popularity.ranked("hour"))
    assert list(hour) == ["a", "b", "old"]
    assert sum(hour.values()) == pytest.approx(1.0)
    assert popularity.ranked("week")[0][0] == "old"
    # a newer partial of the same (partition, item) replaces the older one
    popularity.set_partial("a", 1, _count(NOW - 10, NOW - 20).scores)
    popularity._cache.clear()  # ranked lists are reused for a second
    assert hour["a"] < dict(popularity.ranked("hour"))["a"]
    popularity.drop_partial("a", 0)
    popularity.drop_partial("a", 1)
    popularity.drop_partial("never-seen", 2)
    popularity._cache.clear()
    assert [i for i, _ in popularity.ranked("hour")] == ["b", "old"]


def test_feature_event_weights_keep_only_positive_known_types(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert set(FeatureSettings().event_weights) == {
        "view",
        "click",
        "add_to_cart",
        "purchase",
        "rating",
    }
    monkeypatch.setenv("RECSYS_FEATURE_EVENT_WEIGHTS", '{"purchase": 5, "click": 1, "view": 0}')
    assert FeatureSettings().event_weights == {"purchase": 5.0, "click": 1.0}
    monkeypatch.delenv("RECSYS_FEATURE_EVENT_WEIGHTS")  # (settings merge it with init values)
    for bad, says in (
        ({"like": 1.0}, "unknown event types ['like']"),
        ({"view": -1.0}, "finite and >= 0"),
        ({"view": math.inf}, "finite and >= 0"),
        ({"view": 0.0}, "at least one"),
    ):
        with pytest.raises(ValidationError, match=re.escape(says)):
            FeatureSettings(event_weights=bad)
