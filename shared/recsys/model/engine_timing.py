"""The served ONNX user tower against the same architecture in torch eager, on identical
inputs: what ``bench/inference.py`` (CPU, and CUDA where there is a GPU) and
``bench/streaming.py`` (the trained model, on the stream's batches) report.

Both engines do the whole host-to-host job: numpy in, numpy out. On CUDA that includes
copying the inputs to the GPU and the vectors back (onnxruntime through IO binding, torch
through ``.to``/``.cpu``), which is what the inference service pays per batch.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from recsys.events import EVENT_TYPE_IDS
from recsys.model.onnx_runtime import CUDA_PROVIDER, OnnxUserEncoder

Batch = tuple[np.ndarray, np.ndarray]  # item vectors [B, L, D], event types [B, L]
DEVICES = ("cpu", "cuda")


class EngineTimer:
    """Median wall time of both engines on the same batches, on one device."""

    def __init__(
        self,
        onnx_path: Path,
        module: nn.Module,
        device: str = "cpu",
        threads: int = 1,
        repeats: int = 15,
    ) -> None:
        if device not in DEVICES:
            raise ValueError(f"device must be one of {DEVICES}, got {device!r}")
        if repeats < 1 or threads < 1:
            raise ValueError("repeats and threads must be positive")
        if device == "cuda" and not torch.cuda.is_available():
            raise RuntimeError("device 'cuda' needs a CUDA build of torch and a GPU; none found")
        self.device = device
        self.repeats = repeats
        self.encoder = OnnxUserEncoder(
            onnx_path, prefer_cuda=device == "cuda", intra_op_threads=threads
        )
        if device == "cuda" and self.encoder.providers[0] != CUDA_PROVIDER:
            raise RuntimeError(
                "device 'cuda' needs onnxruntime-gpu's CUDAExecutionProvider; the session "
                f"runs on {self.encoder.providers}"
            )
        if device == "cpu":
            torch.set_num_threads(threads)
        self.module = module.to(device).eval()
        self._types = len(EVENT_TYPE_IDS) + 1

    def random_batch(self, rng: np.random.Generator, batch: int, length: int) -> Batch:
        """``batch`` histories of ``length`` real interactions (no padding)."""
        vectors = rng.standard_normal((batch, length, self.encoder.dim)).astype(np.float32)
        types = rng.integers(1, self._types, size=(batch, length))
        return vectors, types

    def compare(self, batches: list[Batch]) -> tuple[float, float]:
        """Seconds for onnxruntime and for torch eager to encode every batch once."""
        device = torch.device(self.device)
        tensors = [(torch.from_numpy(v), torch.from_numpy(t)) for v, t in batches]

        def eager() -> None:
            with torch.inference_mode():
                for vectors, types in tensors:
                    self.module(vectors.to(device), types.to(device)).cpu()

        def onnx() -> None:
            for vectors, types in batches:
                self.encoder.encode(vectors, types)

        return self._timed(onnx), self._timed(eager)

    def row(self, batch: int, batches: list[Batch]) -> dict[str, float]:
        onnx_s, torch_s = self.compare(batches)
        return {
            "batch": batch,
            "onnx_ms": round(onnx_s * 1000, 3),
            "torch_eager_ms": round(torch_s * 1000, 3),
            "speedup": round(torch_s / onnx_s, 2),
        }

    def warm_up(self, largest_batch: int) -> None:
        """Run the largest full-length batch through both engines once.

        Torch's first pass over a batch bigger than any before it allocates with mmap
        (glibc's threshold only rises once such a block is freed) and pays page faults on
        every call: 64 full-length histories measured 7 ms warm and 12 ms cold. Seeing the
        largest batch first, torch is timed in its faster, steady state.
        """
        rng = np.random.default_rng(1)
        self.compare([self.random_batch(rng, largest_batch, self.encoder.max_len)])

    def _timed(self, fn: Callable[[], None]) -> float:
        fn()
        self._synchronize()
        runs = []
        for _ in range(self.repeats):
            started = time.perf_counter()
            fn()
            self._synchronize()
            runs.append(time.perf_counter() - started)
        return statistics.median(runs)

    def _synchronize(self) -> None:
        if self.device == "cuda":
            torch.cuda.synchronize()
