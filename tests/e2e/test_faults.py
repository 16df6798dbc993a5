"""Faults on the whole stack: services killed with SIGKILL and restarted, a frozen broker.

Each test checks what a user of the system sees: ranking keeps answering (falling back,
marked as such, where it must), and once the service is back the events published
meanwhile are reflected without anyone stepping in.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import grpc
import pytest

from recsys.devstack.demo import recommend
from recsys.devstack.stack import LocalStack
from recsys.events import InteractionEvent
from recsys.publish import publish_events
from recsys.v1 import ranking_pb2, ranking_pb2_grpc
from tests.support.stack import serving_stack

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    with serving_stack(tmp_path_factory.mktemp("faults")) as running:
        try:
            yield running
        finally:
            running.broker.resume()  # a failed freeze test must not leave it stopped


@pytest.fixture
def stub(stack: LocalStack) -> Iterator[ranking_pb2_grpc.RankingServiceStub]:
    with grpc.insecure_channel(stack.ranking_address) as channel:
        yield ranking_pb2_grpc.RankingServiceStub(channel)  # type: ignore[no-untyped-call]


def _interact(stack: LocalStack, user: str, item: str, tag: str) -> None:
    event = InteractionEvent(
        event_id=f"fault-{tag}-{user}-{item}",
        user_id=user,
        item_id=item,
        event_type="purchase",
        timestamp=time.time(),
    )
    publish_events(stack.kafka, [], [event], progress=False)


def _reflected(stub: ranking_pb2_grpc.RankingServiceStub, user: str, item: str) -> bool:
    """The user's personalised ranking no longer offers an item it just bought."""
    try:
        response = recommend(stub, user, k=20)
    except grpc.RpcError:
        return False
    return not response.fallback and item not in {i.item_id for i in response.items}


def _offered(stub: ranking_pb2_grpc.RankingServiceStub, user: str, item: str) -> bool:
    response = recommend(stub, user, k=20)
    return item in {i.item_id for i in response.items}


def test_inference_killed_ranking_keeps_answering_and_catches_up(
    stack: LocalStack, stub: ranking_pb2_grpc.RankingServiceStub
) -> None:
    user, item = "user-4", "space-2"  # user-4 watches space; space-2 is unseen
    assert _offered(stub, user, item)
    stack.supervisor.kill("inference")
    # stored vectors still serve; a session (needs Embed) falls back, flagged
    for _ in range(20):
        assert not recommend(stub, "user-0", k=5).fallback
    session = stub.RecommendForSession(
        ranking_pb2.SessionRequest(
            events=[ranking_pb2.SessionEvent(item_id="space-1", event_type="view")], k=3
        ),
        timeout=10,
    )
    assert session.fallback and "inference" in session.fallback_reason
    _interact(stack, user, item, "inference-down")
    time.sleep(2)
    assert _offered(stub, user, item)  # not reflected while inference is down
    stack.supervisor.restart("inference")
    stack.wait_for(lambda: _reflected(stub, user, item), 120, "the purchase reflected")


def test_ranking_killed_restarts_with_its_state_and_indexes_what_it_missed(
    stack: LocalStack, stub: ranking_pb2_grpc.RankingServiceStub
) -> None:
    before = recommend(stub, "user-1", k=5)
    stack.supervisor.kill("ranking")
    user, item = "user-5", "cooking-3"  # user-5 watches cooking; unseen
    _interact(stack, user, item, "ranking-down")
    stack.supervisor.restart("ranking")

    def answers() -> bool:
        try:
            return not recommend(stub, "user-1", k=5).fallback
        except grpc.RpcError:
            return False

    stack.wait_for(answers, 120, "ranking back with user-1's vector")
    after = recommend(stub, "user-1", k=5)
    assert after.model_version == before.model_version
    assert [i.item_id for i in after.items] == [i.item_id for i in before.items]
    stack.wait_for(lambda: _reflected(stub, user, item), 120, "the purchase made while down")


def test_feature_killed_mid_stream_loses_no_event(
    stack: LocalStack, stub: ranking_pb2_grpc.RankingServiceStub
) -> None:
    user, items = "user-6", ["horror-3", "horror-4"]  # user-6 watches horror; unseen
    _interact(stack, user, items[0], "feature-1")
    stack.supervisor.kill("feature")
    _interact(stack, user, items[1], "feature-2")
    stack.supervisor.restart("feature")
    stack.wait_for(
        lambda: all(_reflected(stub, user, item) for item in items), 180, "both events reflected"
    )
    # the restarted worker owns every partition again (the counters a timeout reports)
    feature = stack.pipeline_counters()["feature"]
    assert feature["recsys_feature_assigned_partitions"] == stack.config.partitions
    assert feature["recsys_feature_events_total{outcome=processed}"] >= 1


def test_frozen_broker_is_survived_without_manual_action(
    stack: LocalStack, stub: ranking_pb2_grpc.RankingServiceStub
) -> None:
    stack.broker.pause()
    try:
        deadline = time.monotonic() + 8
        answered = 0
        while time.monotonic() < deadline:
            assert not recommend(stub, "user-2", k=5).fallback  # queries need no broker
            answered += 1
            time.sleep(0.05)
        assert answered > 20
    finally:
        stack.broker.resume()
    user, item = "user-7", "sports-5"  # user-7 watches sports; unseen
    _interact(stack, user, item, "after-freeze")
    stack.wait_for(lambda: _reflected(stub, user, item), 180, "an event after the freeze")
    assert not stack.supervisor.failed(), [c.name for c in stack.supervisor.failed()]
