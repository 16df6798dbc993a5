"""The whole system as separate processes: events in through Kafka, rankings out over gRPC.

A small catalogue in four genres keeps training fast; the wiring is the one ``make run``
uses (LocalStack), with the real broker, services, model and embedded Qdrant.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from recsys.devstack.demo import recommend
from recsys.devstack.stack import LocalStack
from recsys.events import DeadLetter, InteractionEvent, ItemEvent, ItemVector
from recsys.kafka import make_producer, produce
from recsys.topics import Topics
from recsys.v1 import inference_pb2, inference_pb2_grpc, ranking_pb2, ranking_pb2_grpc
from tests.support.stack import serving_stack
from tests.support.topics import TopicReader

pytestmark = pytest.mark.e2e

GENRES = {
    "space": ["Starship", "Galaxy", "Orbit", "Nebula", "Comet", "Asteroid", "Rocket", "Planet"],
    "cooking": ["Kitchen", "Recipe", "Baking", "Pasta", "Soup", "Bread", "Spices", "Dessert"],
    "horror": ["Haunted", "Zombie", "Ghost", "Vampire", "Crypt", "Nightmare", "Curse", "Shadow"],
    "sports": ["Football", "Tennis", "Marathon", "Boxing", "Cycling", "Hockey", "Golf", "Rugby"],
}


def catalogue() -> list[ItemEvent]:
    items = []
    for genre, words in GENRES.items():
        for n, word in enumerate(words):
            items.append(
                ItemEvent(
                    event_id=f"item-{genre}-{n}",
                    item_id=f"{genre}-{n}",
                    timestamp=1.0,
                    title=f"{word} {genre} story",
                    categories=[genre],
                )
            )
    return items


def history() -> list[InteractionEvent]:
    """Each user sticks to one genre and sees five of its eight items."""
    events = []
    genres = list(GENRES)
    for u in range(24):
        genre = genres[u % len(genres)]
        for step in range(5):
            item = f"{genre}-{(u + step) % 8}"
            events.append(
                InteractionEvent(
                    event_id=f"ev-{u}-{step}",
                    user_id=f"user-{u}",
                    item_id=item,
                    event_type="view",
                    timestamp=1_000.0 + u * 10 + step,
                )
            )
    return events


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    with serving_stack(tmp_path_factory.mktemp("stack")) as running:
        yield running


@pytest.fixture(scope="module")
def stub(stack: LocalStack) -> Iterator[ranking_pb2_grpc.RankingServiceStub]:
    with grpc.insecure_channel(stack.ranking_address) as channel:
        yield ranking_pb2_grpc.RankingServiceStub(channel)


def test_rankings_are_personalised_and_exclude_seen_items(
    stub: ranking_pb2_grpc.RankingServiceStub,
) -> None:
    response = recommend(stub, "user-0", k=10)
    assert not response.fallback
    assert response.model_version == "v1"
    seen = {e.item_id for e in history() if e.user_id == "user-0"}
    ranked = [item.item_id for item in response.items]
    assert len(ranked) == 10
    assert not seen & set(ranked)
    scores = [item.score for item in response.items]
    assert scores == sorted(scores, reverse=True)
    # The three unseen items of the user's own genre rank above every other genre.
    assert all(item_id.startswith("space-") for item_id in ranked[:3])
    assert all(item.title for item in response.items)


def test_unknown_user_gets_popular_items(stub: ranking_pb2_grpc.RankingServiceStub) -> None:
    response = recommend(stub, "nobody-knows-me", k=5)
    assert response.fallback
    assert response.fallback_reason
    assert len(response.items) == 5


def test_invalid_request_is_rejected_with_the_field_named(
    stub: ranking_pb2_grpc.RankingServiceStub,
) -> None:
    with pytest.raises(grpc.RpcError) as error:
        recommend(stub, "user-0", k=0)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "k" in (error.value.details() or "")


def test_new_interaction_changes_the_ranking_and_excludes_the_item(
    stack: LocalStack, stub: ranking_pb2_grpc.RankingServiceStub
) -> None:
    before = [item.item_id for item in recommend(stub, "user-1", k=10).items]
    target = before[0]
    producer = make_producer(stack.kafka)
    event = InteractionEvent(
        event_id="ev-new-purchase",
        user_id="user-1",
        item_id=target,
        event_type="purchase",
        timestamp=time.time(),
    )
    produce(producer, Topics.from_settings(stack.kafka).interactions, "user-1", event.to_bytes())
    assert producer.flush(10) == 0

    def changed() -> bool:
        after = [item.item_id for item in recommend(stub, "user-1", k=10).items]
        return target not in after and after != before

    stack.wait_for(changed, 60, "the ranking of user-1 to reflect the purchase")


def test_malformed_item_event_is_dead_lettered_by_inference(
    stack: LocalStack, stub: ranking_pb2_grpc.RankingServiceStub
) -> None:
    topics = Topics.from_settings(stack.kafka)
    producer = make_producer(stack.kafka)
    bad = b'{"event_id": "bad-item", "item_id": "x", "timestamp": 5, "op": "upsert"}'
    produce(producer, topics.items, "x", bad)
    assert producer.flush(10) == 0
    reader = TopicReader(stack.kafka, [topics.dead_letter])
    try:
        messages = reader.wait_until(
            lambda seen: any(
                DeadLetter.model_validate_json(m.value() or b"").service == "inference"
                for m in seen
            ),
            60,
            "the bad item event in dead-letter",
        )
    finally:
        reader.close()
    letters = [DeadLetter.model_validate_json(m.value() or b"") for m in messages]
    letter = next(x for x in letters if x.service == "inference")
    assert letter.source_topic == topics.items
    assert "title or a description" in letter.reason
    assert recommend(stub, "user-0", k=3).items, "the service keeps answering"


def test_new_item_is_encoded_into_the_served_space(
    stack: LocalStack, stub: ranking_pb2_grpc.RankingServiceStub
) -> None:
    topics = Topics.from_settings(stack.kafka)
    serving = recommend(stub, "user-0", k=1).model_version
    known = next(x for x in recommend(stub, "user-0", k=1).items)
    producer = make_producer(stack.kafka)
    item = ItemEvent(
        event_id="new-item-1",
        item_id="space-new",
        timestamp=time.time(),
        title="Comet hunters space story",
        categories=["space"],
    )
    produce(producer, topics.items, item.item_id, item.to_bytes())
    assert producer.flush(10) == 0
    reader = TopicReader(stack.kafka, [topics.item_vectors])
    try:
        messages = reader.wait_until(
            lambda seen: any(m.key() == b"space-new" for m in seen), 60, "the new item's vector"
        )
    finally:
        reader.close()
    vectors = [ItemVector.model_validate_json(m.value() or b"") for m in messages]
    new = next(v for v in vectors if v.item_id == "space-new")
    trained = next(v for v in vectors if v.item_id == known.item_id)
    assert new.model_version == serving
    assert new.array().shape == trained.array().shape
    assert abs(float(np.linalg.norm(new.array())) - 1.0) < 1e-4


def test_embed_encodes_a_session_with_the_serving_model(
    stack: LocalStack, stub: ranking_pb2_grpc.RankingServiceStub
) -> None:
    serving = recommend(stub, "user-0", k=1).model_version
    with grpc.insecure_channel(f"127.0.0.1:{stack.inference_port}") as channel:
        embed = inference_pb2_grpc.InferenceServiceStub(channel)
        health = health_pb2_grpc.HealthStub(channel)
        status = health.Check(
            health_pb2.HealthCheckRequest(service="recsys.v1.InferenceService"), timeout=5
        )
        assert status.status == health_pb2.HealthCheckResponse.SERVING

        session = [
            inference_pb2.Interaction(item_id=f"space-{n}", event_type="view") for n in range(3)
        ]
        session.append(inference_pb2.Interaction(item_id="not-in-catalogue", event_type="click"))
        response = embed.Embed(inference_pb2.EmbedRequest(interactions=session), timeout=5)
        assert response.model_version == serving
        assert response.known_items == 3
        assert abs(float(np.linalg.norm(response.vector)) - 1.0) < 1e-4

        cases = [
            ([], grpc.StatusCode.INVALID_ARGUMENT, "interactions"),
            ([inference_pb2.Interaction(item_id="", event_type="view")],
             grpc.StatusCode.INVALID_ARGUMENT, "interactions[0].item_id"),
            ([inference_pb2.Interaction(item_id="space-1", event_type="teleport")],
             grpc.StatusCode.INVALID_ARGUMENT, "interactions[0].event_type"),
            ([inference_pb2.Interaction(item_id="nope", event_type="view")],
             grpc.StatusCode.FAILED_PRECONDITION, "none of the 1 items"),
        ]  # fmt: skip
        for interactions, code, message in cases:
            with pytest.raises(grpc.RpcError) as error:
                embed.Embed(inference_pb2.EmbedRequest(interactions=interactions), timeout=5)
            assert error.value.code() == code
            assert message in (error.value.details() or "")


def test_every_ranking_method_answers_over_the_running_stack(
    stub: ranking_pb2_grpc.RankingServiceStub,
) -> None:
    """Sessions go through inference's Embed; trending through the feature workers' counts."""
    serving = recommend(stub, "user-0", k=1).model_version
    session = stub.RecommendForSession(
        ranking_pb2.SessionRequest(
            events=[
                ranking_pb2.SessionEvent(item_id="horror-0", event_type="view"),
                ranking_pb2.SessionEvent(item_id="horror-1", event_type="purchase"),
            ],
            k=3,
            explain=True,
        ),
        timeout=10,
    )
    assert not session.fallback, session.fallback_reason
    assert session.model_version == serving
    assert all(i.item_id.startswith("horror-") for i in session.items)
    assert {"horror-0", "horror-1"}.isdisjoint(i.item_id for i in session.items)
    assert all(i.explanation.closest_history_item_id for i in session.items)

    similar = stub.SimilarItems(
        ranking_pb2.SimilarItemsRequest(item_id="cooking-2", k=3), timeout=10
    )
    assert [i.item_id for i in similar.items][:1] and all(
        i.item_id.startswith("cooking-") and i.item_id != "cooking-2" for i in similar.items
    )
    filtered = stub.Recommend(
        ranking_pb2.RecommendRequest(
            user_id="user-0", k=5, filter=ranking_pb2.ItemFilter(categories_any=["sports"])
        ),
        timeout=10,
    )
    assert filtered.items and all(i.categories == ["sports"] for i in filtered.items)

    def trending_ready() -> bool:
        response = stub.Popular(
            ranking_pb2.PopularRequest(k=5, window=ranking_pb2.POPULARITY_WINDOW_WEEK), timeout=10
        )
        return not response.fallback and len(response.items) == 5

    deadline = time.monotonic() + 60
    while not trending_ready():
        assert time.monotonic() < deadline, "trending never counted the published interactions"
        time.sleep(0.5)

    batch = stub.BatchRecommend(
        ranking_pb2.BatchRecommendRequest(user_ids=["user-1", "nobody", "user-2"], k=3), timeout=10
    )
    assert [r.user_id for r in batch.results] == ["user-1", "nobody", "user-2"]
    assert [r.fallback for r in batch.results] == [False, True, False]
    with pytest.raises(grpc.RpcError) as error:
        stub.SimilarItems(ranking_pb2.SimilarItemsRequest(item_id="no-such-item", k=3), timeout=10)
    assert error.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.RpcError) as error:
        stub.BatchRecommend(ranking_pb2.BatchRecommendRequest(k=3), timeout=10)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (error.value.details() or "").startswith("user_ids")
