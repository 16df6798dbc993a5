"""The ONNX vs torch eager timer behind bench/inference.py and bench/streaming.py."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from recsys.model.contrastive import ContrastiveConfig, UserTower
from recsys.model.engine_timing import EngineTimer
from recsys.model.onnx_runtime import export_user_encoder

CONFIG = ContrastiveConfig(dim=8, max_len=6, n_layers=1)


@pytest.fixture(scope="module")
def onnx_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("timing") / "u.onnx"
    return export_user_encoder(UserTower(CONFIG), path, CONFIG.max_len, CONFIG.dim)


def test_both_engines_encode_the_same_batches(onnx_path: Path) -> None:
    torch.manual_seed(0)
    module = UserTower(CONFIG)
    timer = EngineTimer(onnx_path, module, "cpu", threads=1, repeats=2)
    rng = np.random.default_rng(0)
    vectors, types = timer.random_batch(rng, 3, 4)
    assert vectors.shape == (3, 4, CONFIG.dim) and types.shape == (3, 4)
    assert types.min() >= 1  # every position real: no padding in a timed batch
    row = timer.row(3, [(vectors, types)])
    assert set(row) == {"batch", "onnx_ms", "torch_eager_ms", "speedup"}
    assert row["batch"] == 3 and row["onnx_ms"] > 0 and row["torch_eager_ms"] > 0
    # the timed torch module is the exported one, in eval mode (dropout off)
    assert not timer.module.training
    with torch.inference_mode():
        eager = module(torch.from_numpy(vectors), torch.from_numpy(types)).numpy()
    np.testing.assert_allclose(timer.encoder.encode(vectors, types), eager, atol=1e-5)


def test_unknown_or_missing_devices_are_named(onnx_path: Path) -> None:
    module = UserTower(CONFIG)
    with pytest.raises(ValueError, match="device must be one of"):
        EngineTimer(onnx_path, module, "tpu")
    with pytest.raises(ValueError, match="positive"):
        EngineTimer(onnx_path, module, "cpu", repeats=0)
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA build of torch and a GPU"):
            EngineTimer(onnx_path, module, "cuda")
