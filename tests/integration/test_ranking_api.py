"""The full ranking API over gRPC: filters, exclusions, diversity, explanations,
SimilarItems, Popular (all-time and trending), BatchRecommend, RecommendForSession
through a real inference Embed server, auth and TLS, deadlines and limits.

Servers run in this process on free loopback ports over real vector stores; the session
tests train a small real model (MiniLM text vectors) and serve it with the inference
service's own Embed server.
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from recsys.artifacts import ArtifactStore
from recsys.model.text_encoder import EmbeddingCache
from recsys.popularity import PartialCount
from recsys.v1 import ranking_pb2, ranking_pb2_grpc
from recsys.vectorstore.base import VectorRecord, VectorStore
from services.inference.grpc_api import EmbedServer
from services.inference.model_state import ServingModel
from services.ranking.server import RunningServer, serve
from services.ranking.trending import DecayedPopularity
from tests.integration.test_ranking_grpc import (
    POPULAR,
    _open_store,
    _unit,
    make_settings,
    write_popularity,
)
from tests.unit.test_pipeline import make_interactions, make_items

pytestmark = [
    pytest.mark.integration,
    pytest.mark.filterwarnings("ignore:Payload indexes have no effect:UserWarning"),
]

DIM = 4
# alice looks along the first axis; items fan out from it. Years and availability give
# the range and flag filters something to bite on.
CATALOGUE: dict[str, tuple[np.ndarray, str, list[str], dict[str, Any]]] = {
    "i1": (_unit(1.0, 0.0, 0.0, 0.0), "Toy Story (1995)", ["Animation"], {"year": 1995}),
    "i2": (_unit(1.0, 0.05, 0.0, 0.0), "Toy Story 2 (1999)", ["Animation"], {"year": 1999}),
    "i3": (_unit(1.0, 0.1, 0.0, 0.0), "Antz (1998)", ["Animation"], {"year": 1998}),
    "i4": (_unit(1.0, 0.5, 0.0, 0.0), "GoldenEye (1995)", ["Action"], {"year": 1995}),
    "i5": (_unit(1.0, 0.8, 0.0, 0.0), "Heat (1995)", ["Crime"], {"year": 1995}),
    "i6": (_unit(1.0, 1.0, 0.3, 0.0), "Fargo (1996)", ["Crime"], {"year": 1996}),
    "i7": (
        _unit(1.0, 1.2, 0.0, 0.0),
        "Sold Out (1997)",
        ["Comedy"],
        {"year": 1997, "available": False},
    ),
    "i8": (_unit(0.0, 0.0, 1.0, 0.0), "Casablanca (1942)", ["Drama"], {"year": 1942}),
    "i9": (_unit(0.0, 0.0, 0.0, 1.0), "No Year", ["Drama"], {}),
}
for _item in CATALOGUE.values():
    _item[3].setdefault("available", True)


def publish_catalogue(store: VectorStore, version: str = "v1") -> None:
    collection = f"items_{version}"
    store.create_collection(collection, DIM, keyword_fields=("item_id", "categories"))
    store.upsert(
        collection,
        [
            VectorRecord(
                item_id,
                vector,
                {
                    "item_id": item_id,
                    "title": title,
                    "categories": categories,
                    **{f"attr_{k}": v for k, v in attributes.items()},
                },
            )
            for item_id, (vector, title, categories, attributes) in CATALOGUE.items()
        ],
    )
    store.set_alias("items", collection)


def write_user(store: VectorStore, user_id: str, vector: np.ndarray, seen: list[str]) -> None:
    if not store.collection_exists("users"):
        store.create_collection("users", DIM, keyword_fields=("user_id", "model_version"))
    store.upsert(
        "users",
        [
            VectorRecord(
                user_id,
                vector,
                {
                    "user_id": user_id,
                    "model_version": "v1",
                    "seen_item_ids": seen,
                    "recent_item_ids": seen,
                    "event_timestamp": 1.0,
                },
            )
        ],
    )


@pytest.fixture(params=["edge", "qdrant"], ids=["edge", "qdrant-local"])
def backend_name(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def catalogue_store(backend_name: str, tmp_path: Path) -> Iterator[VectorStore]:
    store = _open_store(backend_name, tmp_path)
    publish_catalogue(store)
    write_user(store, "alice", _unit(1.0, 0.0, 0.0, 0.0), ["i1"])
    write_popularity(tmp_path / "artifacts")
    yield store
    store.close()


class Api:
    """The generated stub on a real channel, with typed helpers for each call."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self.channel = channel
        self.stub = ranking_pb2_grpc.RankingServiceStub(channel)  # type: ignore[no-untyped-call]

    async def recommend(self, **fields: Any) -> ranking_pb2.RecommendResponse:
        response: ranking_pb2.RecommendResponse = await self.stub.Recommend(
            ranking_pb2.RecommendRequest(**fields), timeout=10
        )
        return response

    async def error(self, method: str, request: Any, **kwargs: Any) -> grpc.aio.AioRpcError:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await getattr(self.stub, method)(request, timeout=kwargs.pop("timeout", 10), **kwargs)
        return caught.value


@pytest.fixture
async def api(
    catalogue_store: VectorStore, backend_name: str, tmp_path: Path
) -> AsyncIterator[tuple[Api, RunningServer]]:
    backend = backend_name
    popularity = DecayedPopularity()
    running = await serve(
        make_settings(tmp_path, backend, inference_target="127.0.0.1:1"),
        catalogue_store,
        trending=_Trending(popularity),
    )
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{running.port}")
    try:
        yield Api(channel), running
    finally:
        await channel.close()
        await running.stop(grace=1.0)


class _Trending:
    def __init__(self, popularity: DecayedPopularity) -> None:
        self.popularity = popularity

    def ranked(self, window: str) -> list[tuple[str, float]]:
        return self.popularity.ranked(window)


def ids(response: Any) -> list[str]:
    return [item.item_id for item in response.items]


# ------------------------------------------------------------------ Recommend


async def test_recommend_filters_by_category_year_and_availability(
    api: tuple[Api, RunningServer],
) -> None:
    client, _ = api
    animation = await client.recommend(
        user_id="alice", k=10, filter=ranking_pb2.ItemFilter(categories_any=["Animation"])
    )
    assert ids(animation) == ["i2", "i3"]  # i1 was seen
    not_animation = await client.recommend(
        user_id="alice", k=3, filter=ranking_pb2.ItemFilter(categories_none=["Animation"])
    )
    assert ids(not_animation) == ["i4", "i5", "i6"]
    nineties = await client.recommend(
        user_id="alice",
        k=10,
        filter=ranking_pb2.ItemFilter(
            ranges=[ranking_pb2.NumericRange(attribute="year", min=1996, max=1998)]
        ),
    )
    assert ids(nineties) == ["i3", "i6", "i7"]
    available = await client.recommend(
        user_id="alice", k=10, filter=ranking_pb2.ItemFilter(available=True)
    )
    assert "i7" not in ids(available) and "i6" in ids(available)
    assert not animation.fallback and animation.model_version == "v1"


async def test_recommend_exclusions_and_exclude_seen_switch(
    api: tuple[Api, RunningServer],
) -> None:
    client, _ = api
    default = await client.recommend(user_id="alice", k=3)
    assert ids(default) == ["i2", "i3", "i4"]
    excluded = await client.recommend(user_id="alice", k=3, exclude_item_ids=["i2", "i4"])
    assert ids(excluded) == ["i3", "i5", "i6"]
    with_seen = await client.recommend(user_id="alice", k=2, exclude_seen=False)
    assert ids(with_seen) == ["i1", "i2"]


async def test_category_cap_and_mmr_diversify(api: tuple[Api, RunningServer]) -> None:
    client, _ = api
    capped = await client.recommend(
        user_id="alice", k=4, diversity=ranking_pb2.Diversity(max_per_category=1)
    )
    assert ids(capped) == ["i2", "i4", "i5", "i7"]  # one Animation, one Crime
    plain = await client.recommend(user_id="alice", k=3)
    mmr = await client.recommend(
        user_id="alice", k=3, diversity=ranking_pb2.Diversity(mmr=1.0), explain=True
    )
    assert ids(plain)[0] == ids(mmr)[0] == "i2"
    # i3 is almost i2: strong MMR replaces it with something further away
    assert "i3" in ids(plain) and "i3" not in ids(mmr)
    penalties = [item.explanation.diversity_penalty for item in mmr.items]
    assert penalties[0] == 0.0 and all(p >= 0 for p in penalties)
    for item in mmr.items:
        assert item.score == pytest.approx(
            item.explanation.relevance - item.explanation.diversity_penalty, abs=1e-5
        )


async def test_explain_names_the_closest_history_item(api: tuple[Api, RunningServer]) -> None:
    client, _ = api
    response = await client.recommend(user_id="alice", k=3, explain=True)
    for item in response.items:
        assert item.explanation.closest_history_item_id == "i1"
        assert item.explanation.closest_history_title == "Toy Story (1995)"
        assert 0 < item.explanation.history_similarity <= 1.0
        assert item.explanation.relevance == pytest.approx(item.score, abs=1e-6)
    plain = await client.recommend(user_id="alice", k=1)
    assert not plain.items[0].HasField("explanation")


async def test_unknown_user_falls_back_to_filtered_popular(
    api: tuple[Api, RunningServer],
) -> None:
    client, _ = api
    response = await client.recommend(
        user_id="nobody", k=10, filter=ranking_pb2.ItemFilter(categories_any=["Crime"])
    )
    assert response.fallback and "unknown user" in response.fallback_reason
    popular_crime = [i for i in POPULAR if i in CATALOGUE and "Crime" in CATALOGUE[i][2]]
    assert ids(response) == popular_crime


# ------------------------------------------------------------------ SimilarItems / Popular


async def test_similar_items_ranks_neighbours_and_excludes_the_item(
    api: tuple[Api, RunningServer],
) -> None:
    client, _ = api
    response = await client.stub.SimilarItems(
        ranking_pb2.SimilarItemsRequest(item_id="i1", k=3), timeout=10
    )
    assert ids(response) == ["i2", "i3", "i4"]
    filtered = await client.stub.SimilarItems(
        ranking_pb2.SimilarItemsRequest(
            item_id="i1", k=3, filter=ranking_pb2.ItemFilter(categories_any=["Crime"])
        ),
        timeout=10,
    )
    assert ids(filtered) == ["i5", "i6"]
    missing = await client.error(
        "SimilarItems", ranking_pb2.SimilarItemsRequest(item_id="nope", k=3)
    )
    assert missing.code() == grpc.StatusCode.NOT_FOUND
    assert "nope" in (missing.details() or "")


async def test_popular_all_time_and_trending_windows(api: tuple[Api, RunningServer]) -> None:
    client, running = api
    all_time = await client.stub.Popular(ranking_pb2.PopularRequest(k=3), timeout=10)
    assert ids(all_time) == [i for i in POPULAR if i in CATALOGUE][:3]
    assert not all_time.fallback
    empty = await client.stub.Popular(
        ranking_pb2.PopularRequest(k=3, window=ranking_pb2.POPULARITY_WINDOW_HOUR), timeout=10
    )
    assert empty.fallback and "hour" in empty.fallback_reason
    trending = running.servicer.trending
    assert isinstance(trending, _Trending)
    now = 1_700_000_000.0
    counted = {"i8": [now - 30 * 86_400] * 5, "i9": [now, now - 60], "i4": [now - 3_600]}
    for item_id, timestamps in counted.items():  # i8 was popular a month ago
        partial = PartialCount()
        for timestamp in timestamps:
            partial.add(timestamp, weight=1.0)
        trending.popularity.set_partial(item_id, 0, partial.scores)
    hour = await client.stub.Popular(
        ranking_pb2.PopularRequest(k=3, window=ranking_pb2.POPULARITY_WINDOW_HOUR), timeout=10
    )
    assert ids(hour) == ["i9", "i4", "i8"] and not hour.fallback
    assert sum(item.score for item in hour.items) == pytest.approx(1.0, abs=1e-3)
    drama = await client.stub.Popular(
        ranking_pb2.PopularRequest(
            k=3,
            window=ranking_pb2.POPULARITY_WINDOW_WEEK,
            filter=ranking_pb2.ItemFilter(categories_any=["Drama"]),
        ),
        timeout=10,
    )
    assert ids(drama) == ["i9", "i8"]


# ------------------------------------------------------------------ BatchRecommend


async def test_batch_recommend_answers_each_user_in_order(
    api: tuple[Api, RunningServer], catalogue_store: VectorStore
) -> None:
    client, _ = api
    write_user(catalogue_store, "carol", _unit(0.0, 0.0, 1.0, 0.0), [])
    response = await client.stub.BatchRecommend(
        ranking_pb2.BatchRecommendRequest(user_ids=["carol", "nobody", "alice", "carol"], k=2),
        timeout=10,
    )
    assert [r.user_id for r in response.results] == ["carol", "nobody", "alice", "carol"]
    carol, nobody, alice, carol_again = response.results
    assert carol.items[0].item_id == "i8"
    assert nobody.fallback and not alice.fallback
    assert [i.item_id for i in alice.items] == ["i2", "i3"]
    assert carol_again == carol
    assert response.model_version == "v1" and response.request_id


# ------------------------------------------------------------------ invalid input


@pytest.mark.parametrize(
    ("method", "request_message", "field"),
    [
        ("Recommend", ranking_pb2.RecommendRequest(user_id="alice", k=0), "k"),
        ("Recommend", ranking_pb2.RecommendRequest(user_id="", k=5), "user_id"),
        (
            "Recommend",
            ranking_pb2.RecommendRequest(user_id="a", k=5, exclude_item_ids=[""]),
            "exclude_item_ids[0]",
        ),
        (
            "Recommend",
            ranking_pb2.RecommendRequest(user_id="a", k=5, exclude_item_ids=["x"] * 1001),
            "exclude_item_ids",
        ),
        (
            "Recommend",
            ranking_pb2.RecommendRequest(
                user_id="a", k=5, diversity=ranking_pb2.Diversity(mmr=1.5)
            ),
            "diversity.mmr",
        ),
        (
            "Recommend",
            ranking_pb2.RecommendRequest(
                user_id="a", k=5, diversity=ranking_pb2.Diversity(max_per_category=-1)
            ),
            "diversity.max_per_category",
        ),
        (
            "Recommend",
            ranking_pb2.RecommendRequest(
                user_id="a",
                k=5,
                filter=ranking_pb2.ItemFilter(
                    ranges=[ranking_pb2.NumericRange(attribute="year", min=2000, max=1990)]
                ),
            ),
            "filter.ranges[0]",
        ),
        (
            "Recommend",
            ranking_pb2.RecommendRequest(
                user_id="a",
                k=5,
                filter=ranking_pb2.ItemFilter(ranges=[ranking_pb2.NumericRange(attribute="year")]),
            ),
            "filter.ranges[0]",
        ),
        (
            "Recommend",
            ranking_pb2.RecommendRequest(
                user_id="a",
                k=5,
                filter=ranking_pb2.ItemFilter(
                    ranges=[ranking_pb2.NumericRange(attribute="bad name!", min=1)]
                ),
            ),
            "filter.ranges[0].attribute",
        ),
        (
            "Recommend",
            ranking_pb2.RecommendRequest(
                user_id="a", k=5, filter=ranking_pb2.ItemFilter(categories_any=[""])
            ),
            "filter.categories_any[0]",
        ),
        ("SimilarItems", ranking_pb2.SimilarItemsRequest(item_id="", k=5), "item_id"),
        ("SimilarItems", ranking_pb2.SimilarItemsRequest(item_id="i1", k=1001), "k"),
        ("Popular", ranking_pb2.PopularRequest(k=0), "k"),
        ("Popular", ranking_pb2.PopularRequest(k=5, window=99), "window"),  # type: ignore[arg-type]
        ("BatchRecommend", ranking_pb2.BatchRecommendRequest(k=5), "user_ids"),
        (
            "BatchRecommend",
            ranking_pb2.BatchRecommendRequest(user_ids=["a"] * 1001, k=5),
            "user_ids",
        ),
        (
            "BatchRecommend",
            ranking_pb2.BatchRecommendRequest(user_ids=["a", ""], k=5),
            "user_ids[1]",
        ),
        ("RecommendForSession", ranking_pb2.SessionRequest(k=5), "events"),
        (
            "RecommendForSession",
            ranking_pb2.SessionRequest(
                events=[ranking_pb2.SessionEvent(item_id="i1", event_type="like")], k=5
            ),
            "events[0].event_type",
        ),
        (
            "RecommendForSession",
            ranking_pb2.SessionRequest(
                events=[ranking_pb2.SessionEvent(item_id="", event_type="view")], k=5
            ),
            "events[0].item_id",
        ),
    ],
)
async def test_invalid_requests_are_invalid_argument_naming_the_field(
    api: tuple[Api, RunningServer], method: str, request_message: Any, field: str
) -> None:
    client, _ = api
    error = await client.error(method, request_message)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (error.details() or "").startswith(field), error.details()


async def test_oversized_request_is_refused(tmp_path: Path, catalogue_store: VectorStore) -> None:
    running = await serve(make_settings(tmp_path, "edge", max_request_bytes=4096), catalogue_store)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            client = Api(channel)
            error = await client.error(
                "Recommend",
                ranking_pb2.RecommendRequest(user_id="a", k=5, exclude_item_ids=["x" * 200] * 50),
            )
            assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert ids(await client.recommend(user_id="alice", k=1)) == ["i2"]
    finally:
        await running.stop(grace=1.0)


async def test_session_without_inference_falls_back_to_popular(
    api: tuple[Api, RunningServer],
) -> None:
    client, _ = api  # inference_target points at a closed port
    response = await client.stub.RecommendForSession(
        ranking_pb2.SessionRequest(
            events=[ranking_pb2.SessionEvent(item_id="i5", event_type="view")], k=3
        ),
        timeout=10,
    )
    assert response.fallback and "inference" in response.fallback_reason
    assert "i5" not in ids(response) and len(response.items) == 3


# ------------------------------------------------------------------ auth and TLS


@pytest.fixture
async def authed(
    catalogue_store: VectorStore, backend_name: str, tmp_path: Path
) -> AsyncIterator[RunningServer]:
    settings = make_settings(tmp_path, backend_name, auth_tokens="old-token, new-token")
    running = await serve(settings, catalogue_store)
    try:
        yield running
    finally:
        await running.stop(grace=1.0)


ALL_METHODS: list[tuple[str, Any]] = [
    ("Recommend", ranking_pb2.RecommendRequest(user_id="alice", k=1)),
    (
        "RecommendForSession",
        ranking_pb2.SessionRequest(
            events=[ranking_pb2.SessionEvent(item_id="i1", event_type="view")], k=1
        ),
    ),
    ("SimilarItems", ranking_pb2.SimilarItemsRequest(item_id="i1", k=1)),
    ("Popular", ranking_pb2.PopularRequest(k=1)),
    ("BatchRecommend", ranking_pb2.BatchRecommendRequest(user_ids=["alice"], k=1)),
]


async def test_auth_rejects_missing_and_wrong_tokens_on_every_method(
    authed: RunningServer,
) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{authed.port}") as channel:
        client = Api(channel)
        for method, message in ALL_METHODS:
            for metadata in ((), (("authorization", "Bearer wrong"),), (("authorization", "x"),)):
                error = await client.error(method, message, metadata=metadata)
                assert error.code() == grpc.StatusCode.UNAUTHENTICATED, (method, metadata)
            for token in ("old-token", "new-token"):
                await getattr(client.stub, method)(
                    message, timeout=10, metadata=(("authorization", f"Bearer {token}"),)
                )
        # probes need no token
        health = health_pb2_grpc.HealthStub(channel)
        reply = await health.Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING


def _self_signed(folder: Path) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "server.crt", folder / "server.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


async def test_tls_serves_a_verifying_client_and_refuses_plaintext(
    tmp_path: Path, catalogue_store: VectorStore
) -> None:
    pytest.importorskip("cryptography")
    cert, key = _self_signed(tmp_path)
    settings = make_settings(tmp_path, "edge", tls_cert_file=cert, tls_key_file=key)
    running = await serve(settings, catalogue_store)
    try:
        credentials = grpc.ssl_channel_credentials(root_certificates=cert.read_bytes())
        async with grpc.aio.secure_channel(f"localhost:{running.port}", credentials) as channel:
            assert ids(await Api(channel).recommend(user_id="alice", k=1)) == ["i2"]
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as plain:
            error = await Api(plain).error(
                "Recommend", ranking_pb2.RecommendRequest(user_id="alice", k=1), timeout=2
            )
            assert error.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        await running.stop(grace=1.0)


# ------------------------------------------------------------------ deadlines


async def test_expired_deadline_is_deadline_exceeded_and_server_keeps_serving(
    api: tuple[Api, RunningServer],
) -> None:
    client, _ = api
    big = ranking_pb2.BatchRecommendRequest(user_ids=[f"u{i}" for i in range(1000)], k=50)
    error = await client.error("BatchRecommend", big, timeout=0.001)
    assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert ids(await client.recommend(user_id="alice", k=1)) == ["i2"]


# ------------------------------------------------------------------ sessions, real model


@pytest.fixture(scope="module")
def session_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[ServingModel, dict[str, Any]]:
    """A real trained version (foundation model over MiniLM text) of the genre catalogue."""
    from services.trainer.model_settings import ModelSettings
    from services.trainer.pipeline import train_version

    root = tmp_path_factory.mktemp("session-model")
    items = make_items()
    artifacts = ArtifactStore(root / "artifacts", "recsys")
    version = train_version(
        make_interactions(items),
        items,
        artifacts,
        ModelSettings(kind="recency_mean", max_seq_len=8, half_life=3.0),
        EmbeddingCache(root / "cache"),
    )
    model = ServingModel.load(
        artifacts, version.manifest.version, prefer_cuda=False, intra_op_threads=1
    )
    return model, {"items": items, "root": root}


async def test_session_is_encoded_by_inference_and_ranked(
    session_model: tuple[ServingModel, dict[str, Any]], tmp_path: Path
) -> None:
    model, context = session_model
    items = context["items"]
    store = _open_store("edge", tmp_path)
    collection = f"items_{model.version}"
    store.create_collection(collection, model.dim, keyword_fields=("item_id", "categories"))
    store.upsert(
        collection,
        [
            VectorRecord(item_id, model.item_matrix[row], items[item_id].payload())
            for item_id, row in model.item_rows.items()
        ],
    )
    store.set_alias("items", collection)
    embed = EmbedServer(lambda: model, 0, threads=2).start()
    running = await serve(
        make_settings(tmp_path, "edge", inference_target=f"127.0.0.1:{embed.port}"), store
    )
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            stub = ranking_pb2_grpc.RankingServiceStub(channel)  # type: ignore[no-untyped-call]
            session = [
                ranking_pb2.SessionEvent(item_id="horror-0", event_type="view"),
                ranking_pb2.SessionEvent(item_id="horror-3", event_type="purchase"),
            ]
            response = await stub.RecommendForSession(
                ranking_pb2.SessionRequest(events=session, k=3, explain=True), timeout=10
            )
            assert not response.fallback, response.fallback_reason
            assert response.model_version == model.version
            assert {"horror-0", "horror-3"}.isdisjoint(ids(response))
            assert all(item.item_id.startswith("horror") for item in response.items)
            assert all(
                item.explanation.closest_history_item_id in ("horror-0", "horror-3")
                for item in response.items
            )
            unknown = await stub.RecommendForSession(
                ranking_pb2.SessionRequest(
                    events=[ranking_pb2.SessionEvent(item_id="nope", event_type="view")], k=3
                ),
                timeout=10,
            )
            assert unknown.fallback and "known" in unknown.fallback_reason

            # a user whose stored vector is from an older model is re-encoded, not dropped
            # to popular items, while the new model's user vectors are being written
            store.create_collection("users", model.dim)
            store.upsert(
                "users",
                [
                    VectorRecord(
                        "stale",
                        np.ones(model.dim, dtype=np.float32),
                        {
                            "model_version": "v0",
                            "seen_item_ids": ["cooking-1", "cooking-2"],
                            "recent_item_ids": ["cooking-1", "cooking-2"],
                            "recent_event_types": ["view", "purchase"],
                        },
                    )
                ],
            )
            stale = await stub.Recommend(
                ranking_pb2.RecommendRequest(user_id="stale", k=3), timeout=10
            )
            assert not stale.fallback, stale.fallback_reason
            assert stale.model_version == model.version
            assert all(item.item_id.startswith("cooking") for item in stale.items)
            assert {"cooking-1", "cooking-2"}.isdisjoint(ids(stale))
    finally:
        await running.stop(grace=1.0)
        embed.stop(1.0)
        store.close()


async def test_many_concurrent_calls_all_succeed(api: tuple[Api, RunningServer]) -> None:
    client, _ = api
    calls = [client.recommend(user_id="alice", k=3) for _ in range(100)]
    calls += [
        client.stub.SimilarItems(ranking_pb2.SimilarItemsRequest(item_id="i4", k=3), timeout=10)
        for _ in range(50)
    ]
    responses = await asyncio.gather(*calls)
    assert all(len(r.items) == 3 for r in responses)
