"""The per-operator breakdown behind bench/inference.py's ONNX vs torch figures."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from recsys.model.contrastive import ContrastiveConfig, UserTower
from recsys.model.engine_profile import (
    GELU,
    KINDS,
    LAYER_NORM,
    MATRIX_PRODUCTS,
    SOFTMAX,
    onnx_breakdown,
    torch_breakdown,
)
from recsys.model.onnx_runtime import export_user_encoder
from recsys.model.user_encoder import INPUT_EVENT_TYPES, INPUT_ITEM_VECTORS

CONFIG = ContrastiveConfig(dim=8, max_len=6, n_layers=2)


@pytest.fixture(scope="module")
def tower() -> UserTower:
    torch.manual_seed(0)
    return UserTower(CONFIG).eval()


@pytest.fixture(scope="module")
def batch() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((4, CONFIG.max_len, CONFIG.dim)).astype(np.float32)
    return vectors, rng.integers(1, 4, size=(4, CONFIG.max_len))


def _check(breakdown: dict[str, float]) -> None:
    assert set(breakdown) == {*KINDS, "total"}
    # every kind the tower is built from shows up, and the kinds add up to the total
    for kind in (MATRIX_PRODUCTS, GELU, LAYER_NORM, SOFTMAX):
        assert breakdown[kind] > 0, kind
    assert sum(breakdown[kind] for kind in KINDS) == pytest.approx(breakdown["total"], abs=0.01)


def test_onnx_breakdown_names_each_kind_of_operator(
    tower: UserTower, batch: tuple[np.ndarray, np.ndarray], tmp_path: Path
) -> None:
    path = export_user_encoder(tower, tmp_path / "u.onnx", CONFIG.max_len, CONFIG.dim)
    vectors, types = batch
    inputs = {INPUT_ITEM_VECTORS: vectors, INPUT_EVENT_TYPES: types}
    _check(onnx_breakdown(path, inputs, runs=3))
    assert not list(tmp_path.glob("*.json")), "profiles are written to a temporary folder"


def test_torch_breakdown_names_each_kind_of_operator(
    tower: UserTower, batch: tuple[np.ndarray, np.ndarray]
) -> None:
    _check(torch_breakdown(tower, *batch, runs=3))


def test_runs_must_be_positive(tower: UserTower, batch: tuple[np.ndarray, np.ndarray]) -> None:
    with pytest.raises(ValueError, match="positive"):
        torch_breakdown(tower, *batch, runs=0)
