"""No ranking response mixes model versions while the alias flips under load.

Two versions with disjoint item ids (``v1-*`` and ``v2-*``) make mixing observable: every
item of a response must carry the response's ``model_version`` as its prefix. Concurrent
clients call Recommend (personalised and fallback users) and BatchRecommend while the
alias flips back and forth, user vectors are rewritten from one version to the other and
the old collection is finally dropped under the traffic.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import grpc
import numpy as np
import pytest

from recsys.v1 import ranking_pb2, ranking_pb2_grpc
from recsys.vectorstore.base import VectorRecord
from recsys.vectorstore.edge import EdgeVectorStore
from services.ranking.server import serve
from tests.integration.test_ranking_grpc import make_settings

pytestmark = pytest.mark.integration

DIM = 8
ITEMS = 40
USERS = 30


def _vectors(seed: int, n: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    v = rng.normal(size=(n, DIM)).astype(np.float32)
    unit: np.ndarray = v / np.linalg.norm(v, axis=1, keepdims=True)
    return unit


def _publish_version(store: EdgeVectorStore, root: Path, version: str, seed: int) -> None:
    collection = f"items_{version}"
    store.create_collection(collection, DIM, keyword_fields=("categories",))
    vectors = _vectors(seed, ITEMS)
    ids = [f"{version}-i{n}" for n in range(ITEMS)]
    store.upsert(
        collection,
        [
            VectorRecord(i, v, {"item_id": i, "title": i, "categories": [f"c{n % 4}"]})
            for n, (i, v) in enumerate(zip(ids, vectors, strict=True))
        ],
    )
    folder = root / "recsys" / version
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "popularity.json").write_text(
        json.dumps({"item_ids": ids, "counts": list(range(ITEMS, 0, -1))})
    )


def _user_vectors(version: str) -> np.ndarray:
    return _vectors(100 + int(version[1:]), USERS)


def _expected_top(version: str, user: int, k: int) -> list[str]:
    """What a search with the user's vector of ``version`` over ``version``'s items gives."""
    scores = _vectors(int(version[1:]), ITEMS) @ _user_vectors(version)[user]
    scores[user % ITEMS] = -np.inf  # the seen item
    return [f"{version}-i{n}" for n in np.argsort(-scores, kind="stable")[:k]]


def _write_users(store: EdgeVectorStore, version: str, users: range) -> None:
    vectors = _user_vectors(version)
    store.upsert(
        "users",
        [
            VectorRecord(
                f"u{n}",
                vectors[n],
                {
                    "model_version": version,
                    "seen_item_ids": [f"{version}-i{n % ITEMS}"],
                    "recent_item_ids": [f"{version}-i{n % ITEMS}"],
                },
            )
            for n in users
        ],
    )


async def test_responses_never_mix_versions_during_flips(tmp_path: Path) -> None:
    store = EdgeVectorStore(tmp_path / "vectors")
    artifacts = tmp_path / "artifacts"
    _publish_version(store, artifacts, "v1", seed=1)
    _publish_version(store, artifacts, "v2", seed=2)
    store.create_collection("users", DIM)
    _write_users(store, "v1", range(USERS))
    store.set_alias("items", "items_v1")
    # Embed is unreachable: mismatched users get the serving version's popular items
    settings = make_settings(tmp_path, "edge", inference_target="127.0.0.1:1")
    running = await serve(settings, store)
    responses: list[tuple[str, list[str]]] = []
    personalised: list[tuple[str, int, list[str]]] = []
    errors: list[str] = []
    done = asyncio.Event()

    async def client(seed: int, stub: ranking_pb2_grpc.RankingServiceStub) -> None:
        rng = np.random.default_rng(seed)
        while not done.is_set():
            user = f"u{rng.integers(USERS + 5)}"  # a few unknown users too
            try:
                if rng.random() < 0.2:
                    batch = await stub.BatchRecommend(
                        ranking_pb2.BatchRecommendRequest(user_ids=[user, "u1", "u2"], k=5),
                        timeout=5,
                    )
                    items = [i.item_id for r in batch.results for i in r.items]
                    responses.append((batch.model_version, items))
                else:
                    one = await stub.Recommend(
                        ranking_pb2.RecommendRequest(user_id=user, k=5), timeout=5
                    )
                    items = [i.item_id for i in one.items]
                    responses.append((one.model_version, items))
                    if not one.fallback:
                        personalised.append((one.model_version, int(user[1:]), items))
            except grpc.aio.AioRpcError as exc:
                errors.append(f"{exc.code().name}: {exc.details()}")

    async def swapper() -> None:
        for step in range(12):
            target = "v2" if step % 2 == 0 else "v1"
            store.set_alias("items", f"items_{target}")
            _write_users(store, target, range(step % 3, USERS, 3))
            await asyncio.sleep(0.12)
        store.set_alias("items", "items_v2")
        await asyncio.sleep(0.1)
        store.drop_collection("items_v1")  # dropped under traffic
        _write_users(store, "v2", range(USERS))
        await asyncio.sleep(0.3)
        done.set()

    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            stub = ranking_pb2_grpc.RankingServiceStub(channel)  # type: ignore[no-untyped-call]
            await asyncio.gather(swapper(), *(client(seed, stub) for seed in range(6)))
    finally:
        await running.stop(grace=1.0)
        store.close()

    assert not errors, errors[:5]
    assert len(responses) > 100
    versions = {version for version, _ in responses}
    assert versions == {"v1", "v2"}
    mixed = [
        (version, items)
        for version, items in responses
        if not items or any(not item.startswith(f"{version}-") for item in items)
    ]
    assert not mixed, mixed[:5]
    # a personalised answer used the user vector of the same version as the items
    assert len(personalised) > 50
    wrong = [p for p in personalised if p[2] != _expected_top(p[0], p[1], 5)]
    assert not wrong, wrong[:3]
