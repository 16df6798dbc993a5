"""The demo at the end of ``make run``: load MovieLens through Kafka, ask for rankings."""

from __future__ import annotations

from collections.abc import Sequence

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from recsys.client import SERVICE_NAME
from recsys.data.movielens import MovieLens
from recsys.devstack.stack import LocalStack
from recsys.publish import publish_events
from recsys.v1 import ranking_pb2, ranking_pb2_grpc

DEMO_USERS = ("1", "42", "500")


def recommend(
    stub: ranking_pb2_grpc.RankingServiceStub, user_id: str, k: int = 10
) -> ranking_pb2.RecommendResponse:
    response: ranking_pb2.RecommendResponse = stub.Recommend(
        ranking_pb2.RecommendRequest(user_id=user_id, k=k), timeout=5
    )
    return response


def model_serving(channel: grpc.Channel) -> bool:
    """True once the ranking service's health status says a model serves."""
    health = health_pb2_grpc.HealthStub(channel)  # type: ignore[no-untyped-call]
    try:
        response = health.Check(health_pb2.HealthCheckRequest(service=SERVICE_NAME), timeout=5)
    except grpc.RpcError:
        return False
    return bool(response.status == health_pb2.HealthCheckResponse.SERVING)


def personalised_ready(channel: grpc.Channel, users: Sequence[str]) -> bool:
    """True once every user gets a personalised (not fallback) ranking.

    Asks the health service first: a Recommend before any model serves is refused, and
    each refusal is a logged warning (1,600 of them while ``make run`` trained)."""
    if not model_serving(channel):
        return False
    stub = ranking_pb2_grpc.RankingServiceStub(channel)  # type: ignore[no-untyped-call]
    try:
        return all(not recommend(stub, user, 1).fallback for user in users)
    except grpc.RpcError as exc:
        if exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
            return False
        raise


def render(data: MovieLens, user_id: str, response: ranking_pb2.RecommendResponse) -> str:
    titles = {item.item_id: item.title for item in data.items}
    history = [e for e in data.interactions if e.user_id == user_id][-5:]
    lines = [f"User {user_id} recently rated:"]
    lines += [f"    {titles.get(e.item_id, e.item_id)}  ({e.value:g}/5)" for e in history]
    lines.append(
        f"  Top {len(response.items)} for user {user_id} "
        f"(model {response.model_version}{', fallback' if response.fallback else ''}):"
    )
    for rank, item in enumerate(response.items, 1):
        lines.append(f"    {rank:>2}. {item.title:<55} {item.score:.3f}")
    return "\n".join(lines)


def run_demo(
    stack: LocalStack, data: MovieLens, users: Sequence[str] = DEMO_USERS, timeout_s: float = 900
) -> None:
    say = stack.supervisor.say
    say("demo", f"publishing {len(data.items)} movies and {len(data.interactions)} ratings")
    report = publish_events(stack.kafka, data.items, data.interactions, progress=True)
    say(
        "demo",
        f"published {report.total} events in {report.seconds:.1f}s; waiting for the "
        "feature service to process them and the first model to be trained and indexed",
    )
    # Counted by the feature worker itself: every rating processed (or set aside).
    stack.wait_for(
        lambda: stack.metric_total("feature", "recsys_feature_events_total") >= report.interactions,
        timeout_s,
        "the feature service to process every rating",
    )
    say("demo", "every rating is in the users' sequences")
    with grpc.insecure_channel(stack.ranking_address) as channel:
        stub = ranking_pb2_grpc.RankingServiceStub(channel)
        stack.wait_for(
            lambda: personalised_ready(channel, users), timeout_s, "personalised recommendations"
        )
        for user in users:
            print("\n" + render(data, user, recommend(stub, user)), flush=True)
    print(flush=True)
