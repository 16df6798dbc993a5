"""Where each engine spends one batch's time, by kind of operator: the evidence behind an
ONNX vs torch eager ratio (``bench/inference.py``).

onnxruntime's own profiler gives each node's kernel time; ``torch.profiler`` gives each
aten operator's self CPU time. Both are summed per kind and averaged over the runs. Each
profiler adds its own cost (torch's more, per operator), so a breakdown says where time
goes, and the wall-clock medians of :class:`recsys.model.engine_timing.EngineTimer` say
how long a batch takes.
"""

from __future__ import annotations

import json
import tempfile
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
from torch import nn

from recsys.model.onnx_runtime import CPU_PROVIDER, session_options

MATRIX_PRODUCTS = "matrix_products"
GELU = "gelu"
LAYER_NORM = "layer_norm"
SOFTMAX = "softmax"
OTHER = "other"  # masking, residual adds, embeddings, reshapes, per-operator overhead
KINDS = (MATRIX_PRODUCTS, GELU, LAYER_NORM, SOFTMAX, OTHER)

_ONNX_KINDS = {
    "Gemm": MATRIX_PRODUCTS,
    "FusedGemm": MATRIX_PRODUCTS,
    "MatMul": MATRIX_PRODUCTS,
    "FusedMatMul": MATRIX_PRODUCTS,
    "Gelu": GELU,
    "BiasGelu": GELU,
    "LayerNormalization": LAYER_NORM,
    "SimplifiedLayerNormalization": LAYER_NORM,
    "Softmax": SOFTMAX,
}
_TORCH_KINDS = {
    "aten::addmm": MATRIX_PRODUCTS,
    "aten::mm": MATRIX_PRODUCTS,
    "aten::bmm": MATRIX_PRODUCTS,
    "aten::baddbmm": MATRIX_PRODUCTS,
    "aten::gelu": GELU,
    "aten::native_layer_norm": LAYER_NORM,
    "aten::_softmax": SOFTMAX,
}


def onnx_breakdown(
    onnx_path: Path, inputs: dict[str, np.ndarray], threads: int = 1, runs: int = 50
) -> dict[str, float]:
    """Milliseconds per run by operator kind, and their ``total``, on the CPU provider."""
    import onnxruntime as ort

    if runs < 1:
        raise ValueError("runs must be positive")
    with tempfile.TemporaryDirectory(prefix="recsys-onnx-profile-") as work:
        options = session_options(threads)
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(work) / "profile")
        session = ort.InferenceSession(
            str(onnx_path), sess_options=options, providers=[CPU_PROVIDER]
        )
        for _ in range(runs + 1):
            session.run(None, inputs)
        events = _node_events(Path(session.end_profiling()))
    # every run executes the same nodes; the first (allocations, prepacking) is not counted
    events = events[len(events) // (runs + 1) :]
    totals: dict[str, float] = defaultdict(float)
    for op_type, micros in events:
        totals[_ONNX_KINDS.get(op_type, OTHER)] += micros
    return _per_run_ms(totals, runs)


def torch_breakdown(
    module: nn.Module, vectors: np.ndarray, types: np.ndarray, runs: int = 50
) -> dict[str, float]:
    """Milliseconds per run by operator kind, and their ``total``, in torch eager on CPU
    (with the thread count torch is set to). Run it after
    :meth:`~recsys.model.engine_timing.EngineTimer.warm_up` in the same process, so torch's
    allocator is in the steady state the timer measures."""
    from torch.profiler import ProfilerActivity, profile

    if runs < 1:
        raise ValueError("runs must be positive")
    module = module.eval()
    inputs = (torch.from_numpy(vectors), torch.from_numpy(types))
    totals: dict[str, float] = defaultdict(float)
    with torch.inference_mode():
        module(*inputs)
        with profile(activities=[ProfilerActivity.CPU]) as profiler:
            for _ in range(runs):
                module(*inputs)
    for event in profiler.key_averages():
        totals[_TORCH_KINDS.get(event.key, OTHER)] += event.self_cpu_time_total
    return _per_run_ms(totals, runs)


def _node_events(trace: Path) -> list[tuple[str, float]]:
    """(operator type, kernel microseconds) of every node run in an onnxruntime trace."""
    events = json.loads(trace.read_text())
    return [
        (event["args"]["op_name"], float(event["dur"]))
        for event in events
        if event.get("cat") == "Node" and event.get("name", "").endswith("_kernel_time")
    ]


def _per_run_ms(micros_by_kind: dict[str, float], runs: int) -> dict[str, float]:
    per_run = {kind: round(micros_by_kind.get(kind, 0.0) / runs / 1000, 3) for kind in KINDS}
    per_run["total"] = round(sum(micros_by_kind.values()) / runs / 1000, 3)
    return per_run
