"""Inference benchmark: the served user tower in onnxruntime against torch eager, on CPU
and, where there is a GPU, on CUDA too (CUDA vs CPU in the same run).

Builds the user tower of the model the trainer serves (``ContrastiveConfig``'s defaults, or
``--config`` JSON overrides; timing does not depend on the weights), exports it as the
trainer does, and times both engines on the same batches: full-length histories per batch
size, and one batch size across history lengths (the graph's sequence axis is dynamic, so
a short history costs less). Each engine does the whole host-to-host job, numpy in and
numpy out; on CUDA that includes the copies to and from the GPU (onnxruntime through IO
binding). Needs no broker: ``bench/streaming.py`` measures the pipeline around it.

Writes ``bench/results/inference.json``: per device, ``onnx_vs_torch_speedup`` per batch
size; ``cpu_ms_by_operator``, each engine's time on one full-length batch by kind of
operator (matrix products, GELU, layer norm, softmax, the rest), from each engine's own
profiler; with a GPU, ``cuda_vs_cpu`` (CPU time / CUDA time) for each engine.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch

from recsys.hostinfo import machine_summary
from recsys.model.contrastive import ContrastiveConfig, UserTower
from recsys.model.engine_profile import onnx_breakdown, torch_breakdown
from recsys.model.engine_timing import EngineTimer
from recsys.model.onnx_runtime import export_user_encoder
from recsys.model.user_encoder import INPUT_EVENT_TYPES, INPUT_ITEM_VECTORS

RESULTS = Path(__file__).parent / "results" / "inference.json"


def measure(
    onnx_path: Path,
    config: ContrastiveConfig,
    device: str,
    batches: list[int],
    lengths: list[int],
    length_batch: int,
    threads: int,
    repeats: int,
    profile_batch: int,
) -> dict[str, Any]:
    """Both engines on one device: full-length batches, then one batch across lengths;
    on CPU, where each engine's time goes on one full-length batch (``profile_batch``)."""
    torch.manual_seed(0)
    timer = EngineTimer(onnx_path, UserTower(config), device, threads, repeats)
    rng = np.random.default_rng(0)
    timer.warm_up(max(*batches, length_batch))
    by_batch = [
        timer.row(batch, [timer.random_batch(rng, batch, config.max_len)]) for batch in batches
    ]
    by_length = []
    for length in lengths:
        row = timer.row(length_batch, [timer.random_batch(rng, length_batch, length)])
        by_length.append({"length": length, **row})
    by_operator = None
    if device == "cpu" and profile_batch > 0:
        vectors, types = timer.random_batch(rng, profile_batch, config.max_len)
        inputs = {INPUT_ITEM_VECTORS: vectors, INPUT_EVENT_TYPES: types}
        by_operator = {
            "batch": profile_batch,
            "onnx_ms": onnx_breakdown(onnx_path, inputs, threads, runs=repeats),
            "torch_eager_ms": torch_breakdown(timer.module, vectors, types, runs=repeats),
        }
    return {
        "providers": timer.encoder.providers,
        "io_binding": timer.encoder.io_binding,
        "threads": threads if device == "cpu" else None,
        "by_batch": by_batch,
        "by_length": by_length,
        "by_operator": by_operator,
        "onnx_vs_torch_speedup": {f"batch_{row['batch']}": row["speedup"] for row in by_batch},
    }


def cuda_vs_cpu(cpu: dict[str, Any], cuda: dict[str, Any]) -> dict[str, dict[str, float]]:
    """CPU time / CUDA time per batch size, for each engine."""
    ratios: dict[str, dict[str, float]] = {"onnx": {}, "torch_eager": {}}
    for on_cpu, on_gpu in zip(cpu["by_batch"], cuda["by_batch"], strict=True):
        key = f"batch_{on_cpu['batch']}"
        ratios["onnx"][key] = round(on_cpu["onnx_ms"] / on_gpu["onnx_ms"], 2)
        ratios["torch_eager"][key] = round(on_cpu["torch_eager_ms"] / on_gpu["torch_eager_ms"], 2)
    return ratios


def gpu_name() -> str | None:
    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", default="1,4,16,64,256", help="comma-separated sizes")
    parser.add_argument("--lengths", default="1,2,4,8,16,32,50", help="history lengths")
    parser.add_argument("--length-batch", type=int, default=64, help="batch for --lengths")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads of each engine")
    parser.add_argument("--repeats", type=int, default=30, help="timed runs; median kept")
    parser.add_argument(
        "--profile-batch",
        type=int,
        default=64,
        help="full-length batch whose CPU time is broken down by operator (0: none)",
    )
    parser.add_argument("--config", default="{}", help="ContrastiveConfig overrides, JSON")
    parser.add_argument(
        "--devices", default="auto", help="cpu, cuda or both (comma-separated); auto: cuda if any"
    )
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    config = ContrastiveConfig.model_validate(json.loads(args.config))
    batches = [int(b) for b in args.batches.split(",")]
    lengths = [int(n) for n in args.lengths.split(",")]
    if max(lengths) > config.max_len:
        parser.error(f"--lengths go up to max_len ({config.max_len})")
    if args.devices == "auto":
        devices = ["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"]
    else:
        devices = args.devices.split(",")

    with tempfile.TemporaryDirectory(prefix="recsys-inference-bench-") as work:
        onnx_path = export_user_encoder(
            UserTower(config), Path(work) / "user_tower.onnx", config.max_len, config.dim
        )
        results = {
            device: measure(
                onnx_path,
                config,
                device,
                batches,
                lengths,
                args.length_batch,
                args.threads,
                args.repeats,
                args.profile_batch,
            )
            for device in devices
        }

    summary: dict[str, Any] = {
        "machine": machine_summary(),
        "gpu": gpu_name(),
        "torch": torch.__version__,
        "onnxruntime": ort.__version__,
        "model": {"dim": config.dim, "max_len": config.max_len, "n_layers": config.n_layers},
        "repeats": args.repeats,
        "onnx_vs_torch_speedup": {
            device: result["onnx_vs_torch_speedup"] for device, result in results.items()
        },
    }
    if results.get("cpu", {}).get("by_operator"):
        summary["cpu_ms_by_operator"] = results["cpu"]["by_operator"]
    if "cpu" in results and "cuda" in results:
        summary["cuda_vs_cpu"] = cuda_vs_cpu(results["cpu"], results["cuda"])
    result = {**summary, "devices": results}
    print(json.dumps(summary, indent=2))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
