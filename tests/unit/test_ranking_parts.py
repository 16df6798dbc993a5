"""Ranking's pure parts: request parsing, diversity, explanations, trending counts."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest

from recsys.popularity import PartialCount
from recsys.v1 import ranking_pb2
from recsys.vectorstore.base import Filter, Range
from services.ranking import requests
from services.ranking.ranker import (
    Candidate,
    HistoryItem,
    closest_in_history,
    pool_size,
    select,
)
from services.ranking.trending import DecayedPopularity

LIMITS = requests.Limits(max_k=100, max_batch_users=10)


def _unit(*values: float) -> np.ndarray:
    v = np.asarray(values, dtype=np.float32)
    return v / np.linalg.norm(v)


# ---------------------------------------------------------------- requests


def test_filter_maps_to_store_conditions() -> None:
    message = ranking_pb2.ItemFilter(
        categories_any=["Drama", "Comedy", "Drama"],
        categories_none=["Horror"],
        ranges=[
            ranking_pb2.NumericRange(attribute="year", min=1990),
            ranking_pb2.NumericRange(attribute="price", max=20.5),
        ],
        available=False,
    )
    flt = requests.item_filter(message)
    assert flt == Filter(
        any_of={"categories": ["Drama", "Comedy"]},
        none_of={"categories": ["Horror"]},
        ranges={"attr_year": Range(gte=1990), "attr_price": Range(lte=20.5)},
        equals={"attr_available": False},
    )
    assert requests.item_filter(ranking_pb2.ItemFilter()) is None


def test_exclude_seen_defaults_to_true_and_can_be_switched_off() -> None:
    _, options = requests.recommend(ranking_pb2.RecommendRequest(user_id="u", k=5), LIMITS)
    assert options.exclude_seen
    _, options = requests.recommend(
        ranking_pb2.RecommendRequest(user_id="u", k=5, exclude_seen=False), LIMITS
    )
    assert not options.exclude_seen


def test_similar_items_never_returns_the_item_itself() -> None:
    item_id, options = requests.similar(
        ranking_pb2.SimilarItemsRequest(item_id="x", k=3, exclude_item_ids=["y"]), LIMITS
    )
    assert item_id == "x" and options.exclude_item_ids == {"x", "y"}


@pytest.mark.parametrize(
    ("message", "field"),
    [
        (ranking_pb2.RecommendRequest(user_id="u" * 257, k=1), "user_id"),
        (ranking_pb2.RecommendRequest(user_id="u", k=101), "k"),
        (
            ranking_pb2.RecommendRequest(
                user_id="u",
                k=1,
                filter=ranking_pb2.ItemFilter(
                    ranges=[
                        ranking_pb2.NumericRange(attribute="year", min=1),
                        ranking_pb2.NumericRange(attribute="year", max=2),
                    ]
                ),
            ),
            "filter.ranges[1].attribute",
        ),
        (
            ranking_pb2.RecommendRequest(
                user_id="u",
                k=1,
                filter=ranking_pb2.ItemFilter(
                    ranges=[ranking_pb2.NumericRange(attribute="year", min=math.nan)]
                ),
            ),
            "filter.ranges[0].min",
        ),
        (
            ranking_pb2.RecommendRequest(
                user_id="u", k=1, filter=ranking_pb2.ItemFilter(categories_none=["x"] * 101)
            ),
            "filter.categories_none",
        ),
        (
            ranking_pb2.RecommendRequest(
                user_id="u", k=1, diversity=ranking_pb2.Diversity(mmr=math.inf)
            ),
            "diversity.mmr",
        ),
    ],
)
def test_invalid_fields_are_named(message: ranking_pb2.RecommendRequest, field: str) -> None:
    with pytest.raises(requests.InvalidArgument, match="^" + re.escape(field)):
        requests.recommend(message, LIMITS)


def test_batch_keeps_order_and_dedupes_work() -> None:
    parsed = requests.batch(
        ranking_pb2.BatchRecommendRequest(user_ids=["b", "a", "b"], k=2), LIMITS
    )
    assert parsed.user_ids == ["b", "a", "b"] and parsed.unique_ids == ["b", "a"]
    with pytest.raises(requests.InvalidArgument, match=r"^user_ids has 11 ids"):
        requests.batch(ranking_pb2.BatchRecommendRequest(user_ids=["a"] * 11, k=2), LIMITS)


# ---------------------------------------------------------------- filters in memory


def test_filter_matches_like_the_engines() -> None:
    payload = {"categories": ["Drama", "War"], "attr_year": 1995, "attr_available": True}
    assert Filter(any_of={"categories": ["War"]}).matches(payload)
    assert not Filter(any_of={"categories": ["Comedy"]}).matches(payload)
    assert not Filter(none_of={"categories": ["Drama"]}).matches(payload)
    assert Filter(ranges={"attr_year": Range(gte=1990, lte=1995)}).matches(payload)
    assert not Filter(ranges={"attr_year": Range(gte=1996)}).matches(payload)
    assert not Filter(ranges={"attr_price": Range(lte=10)}).matches(payload)  # missing
    assert Filter(equals={"attr_available": True}).matches(payload)
    assert not Filter(equals={"attr_available": False}).matches(payload)
    assert not Filter(equals={"attr_year": True}).matches(payload)  # 1995 is not a bool


# ---------------------------------------------------------------- diversity


def _candidates() -> list[Candidate]:
    # a and a2 are near duplicates; b is different but still relevant
    return [
        Candidate("a", 0.95, {"categories": ["X"]}, _unit(1.0, 0.0)),
        Candidate("a2", 0.94, {"categories": ["X"]}, _unit(1.0, 0.02)),
        Candidate("b", 0.80, {"categories": ["Y"]}, _unit(0.3, 1.0)),
        Candidate("c", 0.70, {"categories": []}, _unit(0.0, 1.0)),
    ]


def test_without_diversity_the_order_is_relevance() -> None:
    chosen = select(_candidates(), 3)
    assert [r.candidate.item_id for r in chosen] == ["a", "a2", "b"]
    assert all(r.penalty == 0 for r in chosen)


def test_mmr_pushes_near_duplicates_down() -> None:
    chosen = select(_candidates(), 3, mmr=0.5)
    # a2: 0.94 - 0.5 * ~1.0; b: 0.80 - 0.5 * 0.29; c: 0.70 - 0 -> c, then a2 beats b
    # (b is now as close to c as a2 is to a)
    assert [r.candidate.item_id for r in chosen] == ["a", "c", "a2"]
    for ranked in chosen:
        assert ranked.score == pytest.approx(ranked.candidate.relevance - ranked.penalty)


def test_category_cap_counts_first_categories() -> None:
    chosen = select(_candidates(), 4, max_per_category=1)
    assert [r.candidate.item_id for r in chosen] == ["a", "b", "c"]


def test_pool_is_wider_only_with_diversity() -> None:
    assert pool_size(10, False, 4, 4000) == 10
    assert pool_size(10, True, 4, 4000) == 60
    assert pool_size(900, True, 4, 1000) == 1000


def test_explanation_picks_the_most_similar_history_item() -> None:
    chosen = select(_candidates(), 2)
    history = [
        HistoryItem("h-x", "X film", _unit(1.0, 0.1)),
        HistoryItem("h-y", "Y film", _unit(0.0, 1.0)),
    ]
    reasons = closest_in_history(chosen, history)
    assert [r.item_id for r in reasons if r] == ["h-x", "h-x"]
    assert closest_in_history(chosen, []) == [None, None]


# ---------------------------------------------------------------- trending


def _counted(*timestamps: float) -> tuple[float, ...]:
    counted = PartialCount()
    for timestamp in timestamps:
        counted.add(timestamp, weight=1.0)
    return counted.scores


def test_decayed_popularity_ranks_recent_interactions_higher() -> None:
    counts = DecayedPopularity()
    now = 1_700_000_000.0
    counts.set_partial("old-hit", 0, _counted(*[now - 2 * 86400] * 10))  # two days ago
    counts.set_partial("fresh", 1, _counted(now, now - 60))
    hour = counts.ranked("hour")
    week = counts.ranked("week")
    assert [i for i, _ in hour] == ["fresh", "old-hit"]
    assert [i for i, _ in week] == ["old-hit", "fresh"]
    assert sum(s for _, s in week) == pytest.approx(1.0)
    # two events just now weigh about 1 + 2^(-1/60); ten two days ago weigh ~0 in an hour
    assert hour[0][1] == pytest.approx(1.0, abs=1e-6)


def test_decayed_popularity_grows_past_its_first_rows_and_limits_the_list() -> None:
    counts = DecayedPopularity()
    for n in range(5000):
        counts.set_partial(f"i{n}", n % 3, _counted(1_000_000.0 + n))
    counts.set_partial("i0", 1, _counted(1_000_000.0 + 5000))  # a second partition's count
    ranked = counts.ranked("day", limit=3)
    assert ranked[0][0] == "i0" and len(ranked) == 3
    assert counts.records == 5001
    assert DecayedPopularity().ranked("hour") == []
