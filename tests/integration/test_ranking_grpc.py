"""The ranking service over a real vector store, called through the generated stub.

Each test starts the grpc.aio server in this process on a free loopback port, over a
store filled with a small catalogue (``items_v1`` behind the ``items`` alias, user
vectors, a popularity artifact), and talks to it over a real channel.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import math
import os
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from prometheus_client import REGISTRY

from recsys.devstack.ports import free_port, port_open
from recsys.logs import JsonFormatter
from recsys.settings import ArtifactSettings, StoreSettings
from recsys.v1 import ranking_pb2, ranking_pb2_grpc
from recsys.vectorstore.base import VectorRecord, VectorStore
from services.ranking.server import SERVICE_NAME, RunningServer, serve
from services.ranking.settings import RankingSettings

pytestmark = [
    pytest.mark.integration,
    # qdrant-client's local mode says payload indexes are a server feature; true, harmless.
    pytest.mark.filterwarnings("ignore:Payload indexes have no effect:UserWarning"),
]

DIM = 4
SERVING: int = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING: int = health_pb2.HealthCheckResponse.NOT_SERVING


def _unit(*values: float) -> np.ndarray:
    v = np.asarray(values, dtype=np.float32)
    return v / np.linalg.norm(v)


# The user "alice" points along the first axis; items are ordered by their angle to it.
ITEMS: dict[str, tuple[np.ndarray, str, list[str]]] = {
    "i1": (_unit(1.0, 0.0, 0.0, 0.0), "Toy Story (1995)", ["Animation", "Comedy"]),
    "i2": (_unit(1.0, 0.2, 0.0, 0.0), "GoldenEye (1995)", ["Action"]),
    "i3": (_unit(1.0, 0.6, 0.0, 0.0), "Four Rooms (1995)", ["Thriller"]),
    "i4": (_unit(1.0, 1.5, 0.0, 0.0), "Get Shorty (1995)", ["Comedy", "Drama"]),
    "i5": (_unit(0.1, 1.0, 1.0, 0.0), "Copycat (1995)", ["Crime"]),
    "i6": (_unit(0.0, 0.0, 0.0, 1.0), "Babe (1995)", []),
}
POPULAR = ["i5", "i1", "i6", "i2", "i3", "i4", "gone"]  # "gone" is not in the catalogue
COUNTS = [50, 40, 30, 20, 10, 5, 3]


def _store_backends() -> list[Any]:
    return [
        pytest.param("edge", id="edge"),
        pytest.param("qdrant", id="qdrant-local"),
    ]


def _open_store(backend: str, tmp_path: Path) -> VectorStore:
    if backend == "edge":
        edge = pytest.importorskip("recsys.vectorstore.edge")
        store: VectorStore = edge.EdgeVectorStore(tmp_path / "vectors")
        return store
    qdrant = pytest.importorskip("recsys.vectorstore.qdrant_server")
    from qdrant_client import QdrantClient

    store = qdrant.QdrantServerStore(QdrantClient(":memory:"))
    return store


@pytest.fixture(params=_store_backends())
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def store(backend: str, tmp_path: Path) -> Iterator[VectorStore]:
    s = _open_store(backend, tmp_path)
    yield s
    s.close()


def publish_model(store: VectorStore, version: str = "v1") -> None:
    """Write items_<version>, then point the alias at it (as the indexer does)."""
    collection = f"items_{version}"
    store.create_collection(collection, DIM, keyword_fields=("item_id", "categories"))
    store.upsert(
        collection,
        [
            VectorRecord(iid, vec, {"item_id": iid, "title": title, "categories": cats})
            for iid, (vec, title, cats) in ITEMS.items()
        ],
    )
    store.set_alias("items", collection)


def write_users(store: VectorStore) -> None:
    store.create_collection("users", DIM, keyword_fields=("user_id", "model_version"))

    def user(uid: str, vec: np.ndarray, version: str, seen: list[str]) -> VectorRecord:
        payload = {
            "user_id": uid,
            "model_version": version,
            "seen_item_ids": seen,
            "recent_item_ids": seen[-2:],
            "event_timestamp": 1_700_000_000.0,
        }
        return VectorRecord(uid, vec, payload)

    store.upsert(
        "users",
        [
            user("alice", _unit(1.0, 0.0, 0.0, 0.0), "v1", ["i1", "i3"]),
            user("bob", _unit(0.0, 0.0, 0.0, 1.0), "v0", ["i5", "i6"]),
        ],
    )


def write_popularity(root: Path, version: str = "v1") -> None:
    folder = root / "recsys" / version
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "popularity.json").write_text(json.dumps({"item_ids": POPULAR, "counts": COUNTS}))


def make_settings(tmp_path: Path, backend: str = "edge", **overrides: Any) -> RankingSettings:
    """Settings for a test server; ``backend`` picks inline (edge) or threaded store reads."""
    overrides.setdefault("store", StoreSettings(backend=backend, path=tmp_path / "vectors"))
    return RankingSettings(
        host="127.0.0.1",
        port=free_port(),
        grace_seconds=5.0,
        alias_refresh_seconds=0.05,
        artifacts=ArtifactSettings(root=tmp_path / "artifacts", model_name="recsys"),
        **overrides,
    )


async def eventually(check: Callable[[], Awaitable[bool]], timeout_s: float = 10.0) -> None:
    """Poll ``check`` until it holds, failing after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout_s}s")
        await asyncio.sleep(0.01)


class Client:
    def __init__(self, port: int) -> None:
        self.channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        self.ranking = ranking_pb2_grpc.RankingServiceStub(self.channel)  # type: ignore[no-untyped-call]
        self.health = health_pb2_grpc.HealthStub(self.channel)

    async def recommend(
        self, user_id: str, k: int, request_id: str | None = None
    ) -> ranking_pb2.RecommendResponse:
        metadata = (("x-request-id", request_id),) if request_id else None
        response: ranking_pb2.RecommendResponse = await self.ranking.Recommend(
            ranking_pb2.RecommendRequest(user_id=user_id, k=k), metadata=metadata, timeout=10
        )
        return response

    async def health_status(self, service: str = "") -> int:
        reply = await self.health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
        return int(reply.status)

    async def close(self) -> None:
        await self.channel.close()


@pytest.fixture
async def started(
    store: VectorStore, backend: str, tmp_path: Path
) -> AsyncIterator[tuple[RunningServer, Client, VectorStore]]:
    """A server over an empty store (no model yet) and a client connected to it."""
    running = await serve(make_settings(tmp_path, backend), store)
    client = Client(running.port)
    try:
        yield running, client, store
    finally:
        await client.close()
        await running.stop(grace=1.0)


@pytest.fixture
async def serving(
    store: VectorStore, backend: str, tmp_path: Path
) -> AsyncIterator[tuple[RunningServer, Client]]:
    """A server over the catalogue with model v1 serving."""
    publish_model(store)
    write_users(store)
    write_popularity(tmp_path / "artifacts")
    running = await serve(make_settings(tmp_path, backend), store)
    client = Client(running.port)
    try:
        yield running, client
    finally:
        await client.close()
        await running.stop(grace=1.0)


async def test_personalised_results_exclude_seen_items_and_are_ordered(
    serving: tuple[RunningServer, Client],
) -> None:
    _, client = serving
    response = await client.recommend("alice", 3)

    assert not response.fallback
    assert response.fallback_reason == ""
    assert response.model_version == "v1"
    ids = [item.item_id for item in response.items]
    assert ids == ["i2", "i4", "i5"]  # i1 and i3 are seen; i6 and i5 are orthogonal
    scores = [item.score for item in response.items]
    assert scores == sorted(scores, reverse=True)
    assert math.isclose(scores[0], float(ITEMS["i2"][0][0]), rel_tol=1e-4)
    first = response.items[0]
    assert first.title == "GoldenEye (1995)"
    assert list(first.categories) == ["Action"]
    assert len(response.request_id) == 32  # a fresh uuid4 hex


async def test_k_larger_than_unseen_catalogue_returns_what_there_is(
    serving: tuple[RunningServer, Client],
) -> None:
    _, client = serving
    response = await client.recommend("alice", 1000)
    assert sorted(item.item_id for item in response.items) == ["i2", "i4", "i5", "i6"]


async def test_unknown_user_gets_popular_items_flagged(
    serving: tuple[RunningServer, Client],
) -> None:
    _, client = serving
    response = await client.recommend("nobody", 3)

    assert response.fallback
    assert response.fallback_reason == "unknown user: most popular items"
    assert response.model_version == "v1"
    assert [item.item_id for item in response.items] == ["i5", "i1", "i6"]
    assert response.items[0].title == "Copycat (1995)"
    assert list(response.items[1].categories) == ["Animation", "Comedy"]
    scores = [item.score for item in response.items]
    assert scores == sorted(scores, reverse=True)

    everything = await client.recommend("nobody", 100)
    # The popular item missing from the collection is dropped, not returned without a title.
    assert [item.item_id for item in everything.items] == POPULAR[:-1]


async def test_user_vector_from_another_version_gets_unseen_popular_items(
    serving: tuple[RunningServer, Client],
) -> None:
    _, client = serving
    response = await client.recommend("bob", 3)

    assert response.fallback
    assert "v0" in response.fallback_reason
    assert "v1" in response.fallback_reason
    assert response.model_version == "v1"
    assert [item.item_id for item in response.items] == ["i1", "i2", "i3"]  # i5, i6 seen


async def test_no_model_is_unavailable_until_the_alias_appears(
    started: tuple[RunningServer, Client, VectorStore], tmp_path: Path
) -> None:
    running, client, store = started
    assert await client.health_status("") == SERVING
    assert await client.health_status(SERVICE_NAME) == NOT_SERVING
    assert not running.model_serving

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await client.recommend("alice", 5, request_id="req-no-model")
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert caught.value.details() == "no model is serving yet"
    trailers = dict(caught.value.trailing_metadata() or ())
    assert trailers.get("x-request-id") == "req-no-model"

    publish_model(store)
    write_users(store)
    write_popularity(tmp_path / "artifacts")

    async def model_serving() -> bool:
        return await client.health_status(SERVICE_NAME) == SERVING

    await eventually(model_serving)
    assert running.model_serving
    response = await client.recommend("alice", 2)
    assert response.model_version == "v1"
    assert not response.fallback


async def test_new_version_is_served_after_the_alias_flips(
    serving: tuple[RunningServer, Client], store: VectorStore, tmp_path: Path
) -> None:
    _, client = serving
    publish_model(store, "v2")
    write_popularity(tmp_path / "artifacts", "v2")

    async def on_v2() -> bool:
        return (await client.recommend("nobody", 1)).model_version == "v2"

    await eventually(on_v2)
    # alice's vector was made by v1: she now falls back until her vector is recomputed.
    response = await client.recommend("alice", 2)
    assert response.fallback
    assert response.model_version == "v2"


@pytest.mark.parametrize(
    ("user_id", "k", "field", "hint"),
    [
        ("alice", 0, "k", "between 1 and 1000"),
        ("alice", 1001, "k", "between 1 and 1000"),
        ("alice", -3, "k", "between 1 and 1000"),
        ("", 5, "user_id", "empty"),
        ("u" * 257, 5, "user_id", "at most 256"),
    ],
)
async def test_invalid_arguments_name_the_field(
    serving: tuple[RunningServer, Client], user_id: str, k: int, field: str, hint: str
) -> None:
    _, client = serving
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await client.recommend(user_id, k)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    details = caught.value.details() or ""
    assert details.startswith(f"{field} ")
    assert hint in details


async def test_longest_allowed_user_id_and_k_are_accepted(
    serving: tuple[RunningServer, Client],
) -> None:
    _, client = serving
    response = await client.recommend("u" * 256, 1000)
    assert response.fallback  # unknown user
    assert len(response.items) == len(POPULAR) - 1


async def test_request_id_is_echoed_from_metadata(serving: tuple[RunningServer, Client]) -> None:
    _, client = serving
    call = client.ranking.Recommend(
        ranking_pb2.RecommendRequest(user_id="alice", k=1),
        metadata=(("x-request-id", "req-42"),),
        timeout=10,
    )
    response = await call
    assert response.request_id == "req-42"
    trailers = dict(await call.trailing_metadata() or ())
    assert trailers.get("x-request-id") == "req-42"


async def test_health_answers_serving(serving: tuple[RunningServer, Client]) -> None:
    running, client = serving

    async def model_serving() -> bool:
        return await client.health_status(SERVICE_NAME) == SERVING

    await eventually(model_serving)
    assert await client.health_status("") == SERVING
    assert running.model_serving


async def test_reflection_lists_and_describes_the_service(
    serving: tuple[RunningServer, Client],
) -> None:
    _, client = serving
    stub = reflection_pb2_grpc.ServerReflectionStub(client.channel)
    requests = [
        reflection_pb2.ServerReflectionRequest(list_services=""),
        reflection_pb2.ServerReflectionRequest(file_containing_symbol=SERVICE_NAME),
    ]
    replies = [reply async for reply in stub.ServerReflectionInfo(iter(requests), timeout=10)]

    names = {s.name for s in replies[0].list_services_response.service}
    assert SERVICE_NAME in names
    assert "grpc.health.v1.Health" in names
    assert replies[1].file_descriptor_response.file_descriptor_proto  # the proto is served


class Gate(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Holds Recommend calls until released, so a test can have one in flight."""

    def __init__(self) -> None:
        self.entered = asyncio.Event()
        self.release = asyncio.Event()

    async def intercept_service(self, continuation: Any, details: Any) -> Any:
        if details.method.endswith("/Recommend"):
            self.entered.set()
            await self.release.wait()
        return await continuation(details)


async def test_stop_drains_in_flight_calls_and_refuses_new_ones(
    store: VectorStore, backend: str, tmp_path: Path
) -> None:
    publish_model(store)
    write_users(store)
    write_popularity(tmp_path / "artifacts")
    gate = Gate()
    running = await serve(make_settings(tmp_path, backend), store, interceptors=[gate])
    client = Client(running.port)
    try:
        in_flight = asyncio.ensure_future(client.recommend("alice", 2, request_id="slow"))
        await asyncio.wait_for(gate.entered.wait(), 10)

        stopping = asyncio.ensure_future(running.stop(grace=10.0))

        async def refusing() -> bool:
            return not port_open(running.port)

        await eventually(refusing)
        assert not in_flight.done()
        gate.release.set()
        response = await asyncio.wait_for(in_flight, 10)
        assert response.request_id == "slow"
        assert [item.item_id for item in response.items] == ["i2", "i4"]
        await asyncio.wait_for(stopping, 10)
    finally:
        gate.release.set()
        await client.close()
        await running.stop(grace=0)


async def test_main_run_stops_gracefully_on_sigterm(tmp_path: Path) -> None:
    """``services.ranking.__main__.run`` serves until SIGTERM, then shuts down cleanly."""
    qdrant = pytest.importorskip("recsys.vectorstore.qdrant_server")
    from qdrant_client import QdrantClient

    from services.ranking.__main__ import run

    store: VectorStore = qdrant.QdrantServerStore(QdrantClient(":memory:"))
    publish_model(store)
    write_users(store)
    write_popularity(tmp_path / "artifacts")
    # A Qdrant server deployment: the indexer is not started in this process.
    settings = make_settings(tmp_path, "qdrant")
    previous = signal.getsignal(signal.SIGTERM)
    task = asyncio.ensure_future(run(settings, store))
    client = Client(settings.port)
    try:

        async def handler_installed() -> bool:
            if task.done():
                task.result()  # surfaces a start-up failure
            return signal.getsignal(signal.SIGTERM) not in (previous, signal.SIG_DFL)

        await eventually(handler_installed)
        response = await client.recommend("alice", 1)
        assert [item.item_id for item in response.items] == ["i2"]

        os.kill(os.getpid(), signal.SIGTERM)
        await asyncio.wait_for(task, 15)
        assert not port_open(settings.port)
        assert signal.getsignal(signal.SIGTERM) in (previous, signal.SIG_DFL)
    finally:
        await client.close()
        if not task.done():
            task.cancel()
        store.close()


async def test_one_json_log_line_and_metrics_per_request(
    serving: tuple[RunningServer, Client], backend: str
) -> None:
    running, client = serving
    assert running.servicer.inline_store_calls == (backend == "edge")
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter("ranking"))
    logger = logging.getLogger("services.ranking.server")
    logger.addHandler(handler)
    previous_level = logger.level
    logger.setLevel(logging.INFO)

    def sample(code: str) -> float:
        labels = {"method": "Recommend", "code": code}
        return REGISTRY.get_sample_value("recsys_ranking_requests_total", labels) or 0.0

    ok_before, invalid_before = sample("OK"), sample("INVALID_ARGUMENT")
    try:
        await client.recommend("alice", 2, request_id="req-log-1")
        with pytest.raises(grpc.aio.AioRpcError):
            await client.recommend("alice", 0, request_id="req-log-2")
    finally:
        logger.removeHandler(handler)
        logger.setLevel(previous_level)

    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    requests = [line for line in lines if line["msg"] == "request"]
    assert [r["id"] for r in requests] == ["req-log-1", "req-log-2"]
    assert requests[0]["code"] == "OK"
    assert requests[0]["model_version"] == "v1"
    assert requests[0]["items"] == 2
    assert requests[1]["code"] == "INVALID_ARGUMENT"
    assert requests[1]["error"].startswith("k ")
    assert sample("OK") == ok_before + 1
    assert sample("INVALID_ARGUMENT") == invalid_before + 1
    count = REGISTRY.get_sample_value(
        "recsys_ranking_request_seconds_count", {"method": "Recommend"}
    )
    assert count is not None and count >= 2
