"""Warm start: weights saved as safetensors, copied by name and shape, item rows by id."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from recsys.artifacts import WEIGHTS_FILE, ArtifactStore, sha256_file
from recsys.model.contrastive import ContrastiveConfig, ContrastiveRecommender
from recsys.model.text_encoder import EmbeddingCache, TextEncoder
from services.trainer.model_settings import ModelSettings
from services.trainer.pipeline import train_version
from services.trainer.warm_start import ID_EMBEDDING, apply_warm_start, model_weights
from tests.unit.test_pipeline import make_interactions, make_items

CONFIG = ContrastiveConfig(dim=16, max_len=8, max_epochs=3, patience=2, batch_size=32)
TEXT_DIM = 12


def _model(n_items: int, seed: int, config: ContrastiveConfig = CONFIG) -> ContrastiveRecommender:
    torch.manual_seed(seed)
    text = torch.randn(n_items, TEXT_DIM)
    return ContrastiveRecommender(config, n_items, text)


def _state(model: ContrastiveRecommender) -> dict[str, np.ndarray]:
    return {k: v.detach().clone().numpy() for k, v in model.state_dict().items()}


def test_weights_leave_out_text_and_known() -> None:
    weights = model_weights(_model(4, seed=0))
    assert "items.text" not in weights and "items.known" not in weights
    assert weights[ID_EMBEDDING].shape == (4, 16)
    assert any(name.startswith("user.") for name in weights)
    assert "items.projection.1.weight" in weights


def test_towers_are_copied_and_item_rows_follow_their_ids() -> None:
    old = _model(4, seed=1)
    old_ids = ["a", "b", "c", "d"]
    # shifted, so no saved tensor can equal a fresh one by chance (LayerNorm starts at 1)
    saved = {name: value + 1.0 for name, value in model_weights(old).items()}
    new = _model(5, seed=2)
    new_ids = ["d", "x", "b", "a", "y"]  # reordered, two new items, "c" gone
    fresh = _state(new)

    report = apply_warm_start(new, saved, old_ids, new_ids, "v1")

    assert report.reused and (report.items_reused, report.items_new) == (3, 2)
    after = _state(new)
    for name, value in saved.items():
        if name != ID_EMBEDDING:
            np.testing.assert_array_equal(after[name], value, err_msg=name)
            assert not np.array_equal(fresh[name], value), name
    ids = after[ID_EMBEDDING]
    old_rows = saved[ID_EMBEDDING]
    for new_row, old_row in ((0, 3), (2, 1), (3, 0)):  # d, b, a
        np.testing.assert_array_equal(ids[new_row], old_rows[old_row])
    for new_row in (1, 4):  # x, y keep their fresh initialisation
        np.testing.assert_array_equal(ids[new_row], fresh[ID_EMBEDDING][new_row])
    # buffers describing the new catalogue are untouched
    np.testing.assert_array_equal(after["items.text"], fresh["items.text"])


def test_another_architecture_is_not_copied() -> None:
    saved = model_weights(_model(4, seed=1, config=CONFIG.model_copy(update={"n_layers": 1})))
    new = _model(4, seed=2)
    before = _state(new)
    report = apply_warm_start(new, saved, list("abcd"), list("abcd"), "v1")
    assert not report.reused and "architecture differs" in report.reason
    for name, value in _state(new).items():
        np.testing.assert_array_equal(value, before[name], err_msg=name)


@pytest.fixture(scope="module")
def encoder() -> TextEncoder:
    return TextEncoder()


def test_a_warm_started_version_starts_where_the_served_one_ended(
    tmp_path: Path, encoder: TextEncoder
) -> None:
    """Same data, same seed: a warm start that copied nothing would repeat the cold run's
    first epoch exactly, so a clear gap at epoch 1 shows the weights were reused."""
    items = make_items()
    events = make_interactions(items)
    store = ArtifactStore(tmp_path / "artifacts", "recsys")
    cache = EmbeddingCache(tmp_path / "cache")
    settings = ModelSettings(kind="contrastive", contrastive=CONFIG)
    cold = train_version(events, items, store, settings, cache, encoder=encoder)

    served = store.load(cold.version)
    assert served.has_weights
    assert served.manifest.files[WEIGHTS_FILE] == sha256_file(served.path / WEIGHTS_FILE)
    saved = served.weights()
    assert saved is not None and saved[ID_EMBEDDING].shape == (len(cold.item_ids), 16)

    warm = train_version(events, items, store, settings, cache, encoder=encoder, warm_from=served)

    assert warm.warm_start is not None and warm.warm_start.reused
    assert warm.warm_start.items_reused == len(cold.item_ids) == 28
    recorded = warm.manifest.hyperparameters["warm_start"]
    assert recorded["source_version"] == cold.version and recorded["items_reused"] == 28
    cold_curve = cold.manifest.hyperparameters["valid_masked_ndcg@10_per_epoch"]
    warm_curve = warm.manifest.hyperparameters["valid_masked_ndcg@10_per_epoch"]
    assert warm_curve[0] > cold_curve[0] + 0.1, (warm_curve, cold_curve)
    assert cold.manifest.status == warm.manifest.status == "candidate"


def test_a_version_without_weights_means_a_cold_start(tmp_path: Path, encoder: TextEncoder) -> None:
    items = make_items()
    events = make_interactions(items)
    store = ArtifactStore(tmp_path / "artifacts", "recsys")
    cache = EmbeddingCache(tmp_path / "cache")
    foundation = train_version(
        events, items, store, ModelSettings(kind="recency_mean"), cache, encoder=encoder
    )
    old = store.load(foundation.version)
    assert not old.has_weights and old.weights() is None
    settings = ModelSettings(
        kind="contrastive", contrastive=CONFIG.model_copy(update={"max_epochs": 1})
    )
    version = train_version(events, items, store, settings, cache, encoder=encoder, warm_from=old)
    assert version.warm_start is None
    assert version.manifest.hyperparameters["warm_start"] is None
