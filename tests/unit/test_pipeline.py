"""train_version end to end on a small synthetic catalogue with genre words in titles."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from recsys.artifacts import REQUIRED_FILES, ArtifactStore, sha256_file
from recsys.events import EVENT_TYPES, InteractionEvent, ItemEvent
from recsys.model.onnx_runtime import OnnxUserEncoder
from recsys.model.text_encoder import EmbeddingCache, TextEncoder
from services.trainer.model_settings import ModelSettings
from services.trainer.pipeline import TrainedVersion, train_version

GENRES = {
    "space": ["Galaxy", "Starship", "Alien Planet", "Rocket", "Astronaut", "Orbit", "Nebula"],
    "romance": [
        "Love Letter",
        "Wedding",
        "Kiss",
        "Heartbreak",
        "Valentine",
        "First Date",
        "Sweetheart",
    ],
    "horror": ["Haunted House", "Zombie", "Vampire", "Ghost", "Curse", "Nightmare", "Demon"],
    "cooking": ["Kitchen", "Chef", "Recipe", "Baking", "Feast", "Soup", "Bakery"],
}


class CountingEncoder(TextEncoder):
    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        self.calls += len(texts)
        return super().encode(texts)


def make_items() -> dict[str, ItemEvent]:
    items = {}
    for genre, words in GENRES.items():
        for n, word in enumerate(words):
            item_id = f"{genre}-{n}"
            items[item_id] = ItemEvent(
                event_id=f"item-{item_id}",
                item_id=item_id,
                timestamp=0.0,
                title=f"The {word} Story ({1990 + n})",
                categories=[genre],
            )
    items["gone"] = ItemEvent(event_id="item-gone", item_id="gone", timestamp=1.0, op="delete")
    return items


def make_interactions(items: dict[str, ItemEvent]) -> list[InteractionEvent]:
    """Each user sticks to one genre, so the next item is predictable from the text."""
    rng = np.random.default_rng(7)
    events = []
    for user in range(40):
        genre = list(GENRES)[user % len(GENRES)]
        pool = [i for i in items if i.startswith(genre)]
        picks = rng.choice(pool, size=7, replace=False)
        for step, item_id in enumerate(picks):
            events.append(
                InteractionEvent(
                    event_id=f"e-{user}-{step}",
                    user_id=f"u{user}",
                    item_id=str(item_id),
                    event_type=EVENT_TYPES[int(rng.integers(len(EVENT_TYPES)))],
                    timestamp=1_000.0 + 10 * step + user,
                )
            )
    return events


@pytest.fixture(scope="module")
def encoder() -> CountingEncoder:
    return CountingEncoder()


@pytest.fixture(scope="module")
def trained(
    encoder: CountingEncoder, tmp_path_factory: pytest.TempPathFactory
) -> tuple[TrainedVersion, ArtifactStore, list[InteractionEvent], Path]:
    root = tmp_path_factory.mktemp("train")
    items = make_items()
    events = make_interactions(items)
    noisy = [
        *events,
        events[0],  # a duplicate delivery
        InteractionEvent(
            event_id="unknown", user_id="u1", item_id="nope", event_type="view", timestamp=5.0
        ),
        InteractionEvent(
            event_id="deleted", user_id="u1", item_id="gone", event_type="view", timestamp=6.0
        ),
    ]
    store = ArtifactStore(root / "artifacts", "recsys")
    settings = ModelSettings(
        kind="recency_mean", max_seq_len=4, half_life=3.0
    )  # shorter than histories
    cache = EmbeddingCache(root / "cache")
    version = train_version(noisy, items, store, settings, cache, encoder=encoder)
    return version, store, events, root


def test_artifact_is_complete_and_verified(
    trained: tuple[TrainedVersion, ArtifactStore, list[InteractionEvent], Path],
) -> None:
    version, store, events, _ = trained
    manifest = version.manifest
    assert manifest.version == "v1" and version.path == store.path("v1")
    assert set(REQUIRED_FILES) <= {p.name for p in version.path.iterdir()}
    for name, digest in manifest.files.items():
        assert sha256_file(version.path / name) == digest
    loaded = store.load("v1")  # verifies every checksum
    assert loaded.item_ids == version.item_ids and len(version.item_ids) == 28
    assert "gone" not in loaded.item_ids
    np.testing.assert_array_equal(loaded.item_vectors, version.item_vectors)
    assert loaded.item_vectors.shape == (28, 384)
    assert loaded.item_payloads[0]["categories"] == ["space"]
    assert loaded.item_payloads[0]["year"] == 1990
    assert manifest.encoder_name == "all-MiniLM-L6-v2" and manifest.max_seq_len == 4
    assert manifest.hyperparameters["half_life"] == 3.0
    assert manifest.data_range.interactions == len(events) == 280  # dedupe + drops
    assert manifest.data_range.users == 40 and manifest.data_range.items == 28


def test_metrics_are_recorded_and_sensible(
    trained: tuple[TrainedVersion, ArtifactStore, list[InteractionEvent], Path],
) -> None:
    metrics = trained[0].manifest.metrics
    for stage in ("valid", "test"):
        for mode in ("masked", "unmasked"):
            for name in ("recall@10", "recall@20", "ndcg@10", "ndcg@20", "mrr@10", "coverage@10"):
                assert 0.0 <= metrics[f"{stage}_{mode}_{name}"] <= 1.0
    # genre-loyal users: the text tower alone should beat chance (10 of 22 unseen) clearly
    assert metrics["test_masked_recall@10"] > 0.7
    assert metrics["test_masked_ndcg@10"] > metrics["test_unmasked_ndcg@10"]


def test_popularity_counts_training_interactions_only(
    trained: tuple[TrainedVersion, ArtifactStore, list[InteractionEvent], Path],
) -> None:
    version, _, events, _ = trained
    popularity = json.loads((version.path / "popularity.json").read_text())
    by_user: dict[str, list[InteractionEvent]] = {}
    for event in sorted(events, key=lambda e: e.timestamp):
        by_user.setdefault(event.user_id, []).append(event)
    expected: dict[str, int] = {}
    for history in by_user.values():
        for event in history[:-2]:
            expected[event.item_id] = expected.get(event.item_id, 0) + 1
    assert dict(zip(popularity["item_ids"], popularity["counts"], strict=True)) == expected
    assert popularity["counts"] == sorted(popularity["counts"], reverse=True)


def test_onnx_user_encoder_loads_and_serves(
    trained: tuple[TrainedVersion, ArtifactStore, list[InteractionEvent], Path],
) -> None:
    version, store, _, _ = trained
    session = OnnxUserEncoder(store.load("v1").onnx_path, prefer_cuda=False)
    assert (session.max_len, session.dim) == (4, 384)
    vectors = np.zeros((2, 4, 384), dtype=np.float32)
    types = np.zeros((2, 4), dtype=np.int64)
    vectors[0, -1] = version.item_vectors[0]
    types[0, -1] = 1
    out = session.encode(vectors, types)
    np.testing.assert_allclose(out[0], version.item_vectors[0], atol=1e-5)
    np.testing.assert_array_equal(out[1], 0.0)


def test_retraining_reuses_the_cache_and_bumps_the_version(
    encoder: CountingEncoder,
    trained: tuple[TrainedVersion, ArtifactStore, list[InteractionEvent], Path],
) -> None:
    first, store, events, root = trained
    before = encoder.calls
    again = train_version(
        events,
        make_items(),
        store,
        ModelSettings(kind="recency_mean", max_seq_len=4, half_life=3.0),
        EmbeddingCache(root / "cache"),
        encoder=encoder,
    )
    assert encoder.calls == before  # every item text came from the cache
    assert again.manifest.version == "v2"
    np.testing.assert_array_equal(again.item_vectors, first.item_vectors)
    assert again.manifest.metrics == first.manifest.metrics


def test_contrastive_version_serves_both_towers(tmp_path: Path, encoder: CountingEncoder) -> None:
    from recsys.model.contrastive import ContrastiveConfig
    from recsys.model.onnx_runtime import OnnxItemEncoder

    items = make_items()
    config = ContrastiveConfig(dim=16, max_len=8, max_epochs=3, patience=2, batch_size=32)
    settings = ModelSettings(kind="contrastive", contrastive=config)
    store = ArtifactStore(tmp_path / "artifacts", "recsys")
    version = train_version(
        make_interactions(items),
        items,
        store,
        settings,
        EmbeddingCache(tmp_path / "c"),
        encoder=encoder,
    )
    loaded = store.load(version.manifest.version)
    assert loaded.item_vectors.shape == (len(version.item_ids), 16)
    assert version.manifest.vector_size == 16 and version.manifest.max_seq_len == 8
    assert version.manifest.hyperparameters["model"] == "contrastive"
    assert "best_epoch" in version.manifest.hyperparameters

    users = OnnxUserEncoder(loaded.onnx_path, prefer_cuda=False)
    assert (users.max_len, users.dim) == (8, 16)
    # A brand-new item goes through the exported text tower into the same space.
    texts = encoder.encode(["Galaxy war among the stars", "Pasta and bread recipes"])
    new_items = OnnxItemEncoder(loaded.item_encoder_path, prefer_cuda=False).encode(texts)
    assert new_items.shape == (2, 16)
    np.testing.assert_allclose(np.linalg.norm(new_items, axis=1), 1.0, atol=1e-5)
