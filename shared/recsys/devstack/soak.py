"""A soak run: events and queries together for a set time, against a running stack.

Used by ``bench/soak.py`` (10 minutes, ``bench/results/soak.json``) and by
``tests/e2e/test_soak.py`` (60 s). It publishes interaction events at a steady rate,
keeps clients calling ``Recommend``, ``SimilarItems`` and ``Popular``, samples every
service's resident memory, and reports errors, p99 latency per window and each
process's memory slope (least squares, MB per minute, after a warm-up).
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np

from recsys.devstack.stack import LocalStack
from recsys.events import EVENT_TYPES, InteractionEvent
from recsys.kafka import make_producer, produce
from recsys.topics import Topics
from recsys.v1 import ranking_pb2, ranking_pb2_grpc


@dataclass
class SoakResult:
    seconds: float
    events_published: int
    calls: int
    errors: int
    error_codes: dict[str, int]
    p99_ms: float
    p99_ms_by_window: list[float]
    rss_mb: dict[str, list[float]]
    rss_slope_mb_per_min: dict[str, float]
    window_s: float = 10.0
    notes: list[str] = field(default_factory=list)

    def as_json(self) -> dict[str, object]:
        return {
            "seconds": round(self.seconds, 1),
            "events_published": self.events_published,
            "calls": self.calls,
            "errors": self.errors,
            "error_codes": self.error_codes,
            "p99_ms": round(self.p99_ms, 2),
            "p99_ms_by_window": [round(p, 2) for p in self.p99_ms_by_window],
            "window_s": self.window_s,
            "rss_slope_mb_per_min": {k: round(v, 3) for k, v in self.rss_slope_mb_per_min.items()},
            "rss_mb_first_last": {
                k: [round(v[0], 1), round(v[-1], 1)] for k, v in self.rss_mb.items() if v
            },
        }


def rss_mb(pid: int) -> float | None:
    """Resident memory of a process from /proc (None if it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        return None
    return None


def slope_per_minute(times: Sequence[float], values: Sequence[float]) -> float:
    if len(values) < 3:
        return 0.0
    t = np.asarray(times, dtype=np.float64) / 60.0
    v = np.asarray(values, dtype=np.float64)
    return float(np.polyfit(t - t[0], v, 1)[0])


def run_soak(
    stack: LocalStack,
    users: Sequence[str],
    items: Sequence[str],
    seconds: float,
    events_per_s: float = 100.0,
    query_clients: int = 2,
    warmup_s: float = 10.0,
    window_s: float = 10.0,
) -> SoakResult:
    stop = threading.Event()
    started = time.time()
    latencies: list[tuple[float, float]] = []  # (ended, seconds)
    codes: dict[str, int] = {}
    lock = threading.Lock()
    published = [0]

    def publisher() -> None:
        producer = make_producer(stack.kafka)
        topic = Topics.from_settings(stack.kafka).interactions
        rng = np.random.default_rng(1)
        interval = 1.0 / events_per_s
        next_at = time.monotonic()
        while not stop.is_set():
            user = users[int(rng.integers(len(users)))]
            event = InteractionEvent(
                event_id=uuid.uuid4().hex,
                user_id=user,
                item_id=items[int(rng.integers(len(items)))],
                event_type=EVENT_TYPES[int(rng.integers(4))],  # not rating: it needs a value
                timestamp=time.time(),
            )
            produce(producer, topic, user, event.to_bytes())
            published[0] += 1
            next_at += interval
            time.sleep(max(0.0, next_at - time.monotonic()))
        producer.flush(30)

    def querier(seed: int) -> None:
        rng = np.random.default_rng(100 + seed)
        with grpc.insecure_channel(stack.ranking_address) as channel:
            stub = ranking_pb2_grpc.RankingServiceStub(channel)  # type: ignore[no-untyped-call]
            while not stop.is_set():
                kind = rng.random()
                begin = time.perf_counter()
                try:
                    if kind < 0.7:
                        user = users[int(rng.integers(len(users)))]
                        stub.Recommend(ranking_pb2.RecommendRequest(user_id=user, k=10), timeout=5)
                    elif kind < 0.9:
                        item = items[int(rng.integers(len(items)))]
                        stub.SimilarItems(
                            ranking_pb2.SimilarItemsRequest(item_id=item, k=10), timeout=5
                        )
                    else:
                        stub.Popular(ranking_pb2.PopularRequest(k=10), timeout=5)
                    code = "OK"
                except grpc.RpcError as exc:
                    code = exc.code().name
                ended = time.time()
                with lock:
                    codes[code] = codes.get(code, 0) + 1
                    if code == "OK":
                        latencies.append((ended, time.perf_counter() - begin))
                time.sleep(0.005)

    threads = [threading.Thread(target=publisher, daemon=True)]
    threads += [
        threading.Thread(target=querier, args=(n,), daemon=True) for n in range(query_clients)
    ]
    for thread in threads:
        thread.start()
    samples: dict[str, tuple[list[float], list[float]]] = {}
    deadline = started + seconds
    while time.time() < deadline:
        now = time.time()
        for child in stack.supervisor.children:
            if child.process is None:
                continue
            value = rss_mb(child.process.pid)
            if value is not None and now - started >= warmup_s:
                times, values = samples.setdefault(child.name, ([], []))
                times.append(now)
                values.append(value)
        time.sleep(min(2.0, max(0.0, deadline - time.time())))
    stop.set()
    for thread in threads:
        thread.join(timeout=30)
    elapsed = time.time() - started

    windows: list[float] = []
    for start in np.arange(started, started + elapsed, window_s):
        inside = [s for t, s in latencies if start <= t < start + window_s]
        if inside:
            windows.append(float(np.percentile(inside, 99)) * 1000)
    all_latencies = [s for _, s in latencies]
    errors = sum(n for code, n in codes.items() if code != "OK")
    return SoakResult(
        seconds=elapsed,
        events_published=published[0],
        calls=sum(codes.values()),
        errors=errors,
        error_codes={c: n for c, n in codes.items() if c != "OK"},
        p99_ms=float(np.percentile(all_latencies, 99)) * 1000 if all_latencies else float("nan"),
        p99_ms_by_window=windows,
        rss_mb={name: values for name, (_, values) in samples.items()},
        rss_slope_mb_per_min={
            name: slope_per_minute(times, values) for name, (times, values) in samples.items()
        },
        window_s=window_s,
    )
