"""Soak: events and queries together for a set time on the whole stack (MovieLens).

Starts the stack as ``make run`` does, loads MovieLens-100K, waits for the first model,
then runs :func:`recsys.devstack.soak.run_soak` (default 10 minutes, 100 events/s and
two query clients) and writes ``bench/results/soak.json``: errors, p99 latency overall
and per 10-second window, and each process's resident-memory slope in MB per minute
(least squares after a warm-up; the target is zero errors and < 1 MB/min).

    .venv/bin/python bench/soak.py [--minutes 10] [--runs 3]

With ``--runs N`` it soaks N times, each on a fresh stack, and reports the median slope
per service (and every run's figures): on a shared machine one run's slope is noisy.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
from pathlib import Path

import grpc
import numpy as np

from recsys.data import movielens
from recsys.devstack.demo import personalised_ready
from recsys.devstack.soak import SoakResult, run_soak
from recsys.devstack.stack import LocalStack, StackConfig
from recsys.devstack.supervisor import Supervisor
from recsys.publish import publish_events

RESULTS = Path(__file__).parent / "results" / "soak.json"


def soak_once(
    args: argparse.Namespace, data: movielens.MovieLens, users: list[str], items: list[str]
) -> SoakResult:
    """One soak on a fresh stack: MovieLens loaded, first model serving, then the soak."""
    with tempfile.TemporaryDirectory(prefix="soak-bench-") as work:
        config = StackConfig(
            workdir=Path(work),
            extra_env={
                "RECSYS_TRAINER_MODEL__CONTRASTIVE__TIME_BUDGET_S": str(args.train_seconds),
                # steady state: a retrain mid-soak loads a second model and collection,
                # a step in memory that would read as a slope (bench/refresh.py covers it)
                "RECSYS_TRAINER_RETRAIN_THRESHOLD": str(10**9),
            },
        )
        with LocalStack(config, Supervisor(colour=False)) as stack:
            publish_events(stack.kafka, data.items, data.interactions, progress=False)
            with grpc.insecure_channel(stack.ranking_address) as channel:
                stack.wait_for(lambda: personalised_ready(channel, users[:3]), 900, "model v1")
            return run_soak(
                stack,
                users,
                items,
                seconds=args.minutes * 60,
                events_per_s=args.events_per_s,
                query_clients=args.clients,
                warmup_s=60.0,
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--events-per-s", type=float, default=100.0)
    parser.add_argument("--clients", type=int, default=2)
    parser.add_argument("--train-seconds", type=float, default=60.0)
    parser.add_argument(
        "--runs", type=int, default=1, help="soaks in a row, each on a fresh stack; medians"
    )
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    data = movielens.load()
    users = sorted({e.user_id for e in data.interactions})
    items = [item.item_id for item in data.items]
    runs = [soak_once(args, data, users, items) for _ in range(args.runs)]
    # A memory slope over ten minutes on a shared machine is noisy: the median of the
    # runs per service is the figure, each run is kept beside it.
    slopes = {
        name: float(np.median([run.rss_slope_mb_per_min[name] for run in runs]))
        for name in runs[0].rss_slope_mb_per_min
    }
    errors = sum(run.errors for run in runs)
    summary = {
        "dataset": "MovieLens-100K",
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, CPU only",
        "minutes": args.minutes,
        "events_per_s": args.events_per_s,
        "query_clients": args.clients,
        **(runs[0].as_json() if len(runs) == 1 else {}),
        "runs": len(runs),
        "errors": errors,
        "p99_ms": round(float(np.median([run.p99_ms for run in runs])), 2),
        "rss_slope_mb_per_min": {name: round(slope, 3) for name, slope in slopes.items()},
        "targets": {
            "errors": {"value": errors, "target": 0, "met": errors == 0},
            "rss_slope_mb_per_min": {
                name: {"value": round(slope, 3), "target": 1.0, "met": slope < 1.0}
                for name, slope in slopes.items()
            },
        },
        **({"per_run": [run.as_json() for run in runs]} if len(runs) > 1 else {}),
    }
    print(json.dumps(summary, indent=2))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
