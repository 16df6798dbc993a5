"""Model refresh and rollback under continuous traffic, and cold-start items, on the
whole stack (the same code as ``bench/refresh.py``, on a small catalogue)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator

import grpc
import pytest

from recsys.devstack.demo import recommend
from recsys.devstack.refresh import (
    Announcements,
    Traffic,
    cold_item_seconds,
    majority_shares_a_category,
    swap_report,
)
from recsys.devstack.stack import LocalStack
from recsys.events import InteractionEvent, ItemEvent
from recsys.publish import publish_events
from recsys.v1 import ranking_pb2, ranking_pb2_grpc
from tests.e2e.test_stack import GENRES
from tests.support.stack import serving_stack

pytestmark = pytest.mark.e2e

USERS = [f"user-{u}" for u in range(24)]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    extra_env = {
        "RECSYS_TRAINER_RETRAIN_THRESHOLD": "40",
        # this test is about the swap, not the gate: accept any retrained model
        "RECSYS_TRAINER_GATE_TOLERANCE": "1.0",
    }
    with serving_stack(tmp_path_factory.mktemp("refresh"), extra_env) as running:
        yield running


def _more_interactions() -> list[InteractionEvent]:
    """Each user views the three items of its genre it has not seen: a retrain's worth."""
    events = []
    genres = list(GENRES)
    for u in range(24):
        genre = genres[u % len(genres)]
        for step in range(2):
            events.append(
                InteractionEvent(
                    event_id=f"more-{u}-{step}",
                    user_id=f"user-{u}",
                    item_id=f"{genre}-{(u + 5 + step) % 8}",
                    event_type="view",
                    timestamp=2_000.0 + u * 10 + step,
                )
            )
    return events


def _rollback(stack: LocalStack) -> None:
    env = {**os.environ, **stack.service_env("trainer")}
    result = subprocess.run(
        [sys.executable, "-m", "recsys.cli", "models", "rollback"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr


def test_refresh_and_rollback_fail_no_call_and_never_mix_versions(stack: LocalStack) -> None:
    announcements = Announcements(stack.kafka)
    try:
        assert [v for _, v in announcements.wait_for(1, 30)] == ["v1"]
        with Traffic(stack.ranking_address, USERS, clients=3) as traffic:
            publish_events(stack.kafka, [], _more_interactions(), progress=False)
            announcements.wait_for(2, 300)
            stack.wait_for(
                lambda: any(c.model_version == "v2" for c in traffic.calls()), 120, "v2 served"
            )
            _rollback(stack)
            announcements.wait_for(3, 60)
            rolled_back_at = announcements.seen[2][0]
            stack.wait_for(
                lambda: any(
                    c.model_version == "v1" and c.ended > rolled_back_at for c in traffic.calls()
                ),
                120,
                "v1 served again",
            )
            calls = traffic.stop()
        report = swap_report(calls, announcements.seen)
    finally:
        announcements.close()
    assert [v for _, v in announcements.seen] == ["v1", "v2", "v1"]
    assert report.calls > 50
    assert report.failed_calls == 0, report.failures
    assert report.version_regressions == 0
    assert [s["version"] for s in report.swaps] == ["v2", "v1"]


def test_new_text_only_items_are_similar_to_their_genre(stack: LocalStack) -> None:
    new_items = [
        ItemEvent(
            event_id=f"cold-{genre}",
            item_id=f"cold-{genre}",
            timestamp=3_000.0,
            title=f"Brand new {genre} story: {words[0]} and {words[3]}",
            categories=[genre],
        )
        for genre, words in GENRES.items()
    ]
    results = cold_item_seconds(
        stack.kafka, stack.ranking_address, new_items, majority_shares_a_category, timeout_s=60
    )
    assert [r.item_id for r in results] == [i.item_id for i in new_items]
    assert all(r.matched_s is not None for r in results), results


def test_new_item_can_be_recommended_and_a_new_user_is_personalised_from_one_event(
    stack: LocalStack,
) -> None:
    cold = ItemEvent(
        event_id="cold-rec-space",
        item_id="cold-rec-space",
        timestamp=3_100.0,
        title="Starship Galaxy Orbit: a new space story",
        categories=["space"],
    )
    publish_events(stack.kafka, [cold], [], progress=False)
    with grpc.insecure_channel(stack.ranking_address) as channel:
        stub = ranking_pb2_grpc.RankingServiceStub(channel)  # type: ignore[no-untyped-call]
        # user-0 watches space: the new space item reaches its top 10 with no interaction
        stack.wait_for(
            lambda: "cold-rec-space" in {i.item_id for i in recommend(stub, "user-0", 10).items},
            60,
            "the new item in user-0's recommendations",
        )
        # and among the neighbours of the space items it resembles
        related = stub.SimilarItems(ranking_pb2.SimilarItemsRequest(item_id="space-1", k=10))
        assert "cold-rec-space" in {i.item_id for i in related.items}
        newcomer = recommend(stub, "brand-new-user", 5)
        assert newcomer.fallback and "unknown user" in newcomer.fallback_reason
        first = InteractionEvent(
            event_id="newcomer-1",
            user_id="brand-new-user",
            item_id="horror-2",
            event_type="view",
            timestamp=4_000.0,
        )
        publish_events(stack.kafka, [], [first], progress=False)
        stack.wait_for(
            lambda: not recommend(stub, "brand-new-user", 5).fallback, 60, "personalised"
        )
        ranked = recommend(stub, "brand-new-user", 5)
        assert "horror-2" not in {i.item_id for i in ranked.items}
        # the top item shares the genre of the one item viewed (an item added by catalog
        # event alone, like cold-horror, counts as much as a trained one)
        assert "horror" in ranked.items[0].categories, ranked.items[0]
