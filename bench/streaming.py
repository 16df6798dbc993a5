"""Streaming path benchmark: events in through Kafka, fresh user vectors out.

Starts the whole local stack (the same wiring as ``make run``) on a fresh broker, trains a
first model on a warm-up stream of a synthetic catalogue, then measures:

- throughput: a burst of events published as fast as possible, timed until every user's
  vector on ``user-vectors`` reflects that user's last event (events/s end to end), with
  the CPU seconds each process (services, broker, this benchmark) spent per 1,000 events;
- freshness at a fixed rate: while a background stream runs at ``--rate`` events/s, probe
  users buy their current top item; freshness is the time from the event's timestamp
  until a ranking query over gRPC no longer returns that item (p50/p95/p99, and per hop);
- sustained: a steady stream at ``--sustain-rate`` (default 3,000 events/s) for
  ``--sustain-seconds``; it keeps up if the feature worker's backlog, sampled each second,
  does not grow (its least-squares slope, events/s, near zero against the offered rate)
  and every user's vector is current soon after the stream stops (the drain); each
  process's CPU is recorded every second. The local broker (Tansu, in memory) costs more
  per fetch the more record batches its topics hold, so at 3,000 events/s on 2 cores the
  backlog of a 120 s run starts to grow after about 40 s as the broker's share grows
  (``bench/broker.py``);
- the inference batch-size histogram and each service's full garbage collections (from
  the services' /metrics);
- ONNX Runtime vs torch eager for the served user encoder on the same batch (ratio).

``--runs N`` repeats everything on a fresh stack N times and reports medians (each run is
kept under ``per_run``); ``--env NAME=VALUE`` passes a setting to every service. Writes
``bench/results/streaming.json``. Figures on a shared 2-core machine are noisy: medians
and ratios matter, not single values.
"""

from __future__ import annotations

import argparse
import functools
import io
import json
import os
import shutil
import statistics
import tempfile
import threading
import time
import zlib
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import orjson
import torch

from recsys.artifacts import ArtifactStore
from recsys.data import synthetic
from recsys.devstack.demo import personalised_ready, recommend
from recsys.devstack.stack import LocalStack, StackConfig
from recsys.devstack.supervisor import Supervisor
from recsys.events import EVENT_TYPE_IDS, InteractionEvent
from recsys.hostinfo import machine_summary, process_cpu_seconds
from recsys.kafka import make_consumer, make_producer, produce, usable
from recsys.model.contrastive import ContrastiveConfig, UserTower
from recsys.model.engine_timing import EngineTimer
from recsys.model.onnx_runtime import length_buckets, pad_left
from recsys.model.user_encoder import RecencyWeightedMean, type_weight_vector
from recsys.publish import publish_events
from recsys.topics import Topics
from recsys.v1 import ranking_pb2_grpc
from services.trainer.model_settings import ModelSettings

RESULTS = Path(__file__).parent / "results" / "streaming.json"


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


class VectorWatcher:
    """Follows ``user-vectors`` (each user's newest reflected event timestamp) and
    ``user-sequences``, noting when the messages that carry probe events were written."""

    def __init__(self, stack: LocalStack, probe_users: list[str]) -> None:
        self._topics = Topics.from_settings(stack.kafka)
        # Only the probes' sequences matter; parsing every one would load the same cores.
        self._probe_keys = {user.encode() for user in probe_users}
        self._consumer = make_consumer(stack.kafka, f"bench-watch-{time.time_ns()}")
        self._consumer.subscribe([self._topics.user_vectors, self._topics.user_sequences])
        self.newest: dict[str, float] = {}
        self.lengths: list[int] = []  # history length behind every user vector seen
        self.stage_times: dict[tuple[str, str], float] = {}  # (stage, probe id) -> seconds
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            for message in usable(self._consumer.consume(5_000, 0.1)):
                is_sequence = message.topic() == self._topics.user_sequences
                if is_sequence and message.key() not in self._probe_keys:
                    continue
                value = orjson.loads(message.value() or b"{}")
                written = message.timestamp()[1] / 1000
                if is_sequence:
                    if value["last_event_id"].startswith("probe-"):
                        self.stage_times[("sequence", value["last_event_id"])] = written
                    continue
                user, ts = value["user_id"], value["event_timestamp"]
                self.lengths.append(len(value["recent_item_ids"]))
                if ts > self.newest.get(user, -1.0):
                    self.newest[user] = ts
                probe = value["event_id"].rpartition(":")[2]
                if probe.startswith("probe-"):
                    self.stage_times.setdefault(("vector", probe), written)

    def caught_up(self, last_event: dict[str, float]) -> bool:
        newest = self.newest
        return all(newest.get(u, -1.0) >= ts for u, ts in last_event.items())

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._consumer.close()


def cpu_seconds(stack: LocalStack) -> dict[str, float]:
    """User+system CPU seconds used so far by each service process, the broker and this
    benchmark (which publishes the events and reads every vector back), from Linux /proc."""
    pids = {child.name: child.process.pid for child in stack.supervisor.children if child.process}
    pids["broker"] = stack.broker.pid
    pids["benchmark"] = os.getpid()
    return {name: process_cpu_seconds(pid) for name, pid in pids.items() if pid is not None}


def measure_throughput(
    stack: LocalStack, watcher: VectorWatcher, cat: synthetic.SyntheticCatalogue, args: Any
) -> dict[str, float]:
    events = list(
        synthetic.interactions(
            cat, args.users, args.burst, start=time.time(), seed=23, id_prefix="burst"
        )
    )
    last_event: dict[str, float] = {}
    for event in events:
        last_event[event.user_id] = event.timestamp
    cpu_before = cpu_seconds(stack)
    started = time.monotonic()
    publish_events(stack.kafka, [], events, progress=False)
    published = time.monotonic() - started
    stack.wait_for(lambda: watcher.caught_up(last_event), args.timeout, "the burst's vectors")
    elapsed = time.monotonic() - started
    cpu_after = cpu_seconds(stack)
    per_1k = {
        name: round((cpu_after[name] - cpu_before.get(name, 0.0)) / len(events) * 1000, 3)
        for name in cpu_after
    }
    return {
        # CPU seconds each service spent per 1,000 events: independent of machine load.
        "cpu_seconds_per_1k_events": per_1k,
        "events": len(events),
        "users": len(last_event),
        "publish_seconds": round(published, 2),
        "seconds": round(elapsed, 2),
        "events_per_s": round(len(events) / elapsed, 1),
    }


class SteadyStream(threading.Thread):
    """Publishes synthetic events at a fixed rate until stopped, remembering the newest
    event time of every user it published for.

    The events of the first ``seconds`` are generated before it starts, so the publisher
    only stamps and sends while it runs: a client of the pipeline does not share its
    cores, and this one should take as little of them as it can.
    """

    def __init__(
        self,
        stack: LocalStack,
        cat: synthetic.SyntheticCatalogue,
        users: int,
        rate: float,
        name: str,
        seconds: float,
    ) -> None:
        super().__init__(daemon=True)
        self._stack, self._cat, self._users, self._rate, self._name = stack, cat, users, rate, name
        self._stop_event = threading.Event()
        self.sent = 0
        self.started = self.stopped = 0.0
        self.last_event: dict[str, float] = {}
        self._chunk = 0
        self._ready = [self._next_chunk() for _ in range(int(rate * seconds) // 5_000 + 1)]

    def _next_chunk(self) -> list[dict[str, Any]]:
        self._chunk += 1
        events = synthetic.interactions(
            self._cat,
            self._users,
            5_000,
            start=time.time(),
            seed=zlib.crc32(f"{self._name}{self._chunk}".encode()),
            id_prefix=f"{self._name}{self._chunk}",
        )
        return [event.model_dump(mode="json", exclude_none=True) for event in events]

    def run(self) -> None:
        # A high-rate publisher batches (50 ms): at librdkafka's 5 ms, its produce requests
        # alone cost the local broker 0.08 CPU seconds per 1,000 events, against 0.02.
        producer = make_producer(self._stack.kafka, **{"linger.ms": 50})
        topic = Topics.from_settings(self._stack.kafka).interactions
        started = self.started = time.monotonic()
        while not self._stop_event.is_set():
            chunk = self._ready.pop(0) if self._ready else self._next_chunk()
            self._publish(producer, topic, chunk, started)
        # Every published event must be delivered: the drain waits for each user's last.
        while producer.flush(1.0) > 0:
            pass

    def _publish(
        self, producer: Any, topic: str, events: list[dict[str, Any]], started: float
    ) -> None:
        for event in events:
            if self._stop_event.is_set():
                return
            due = started + self.sent / self._rate
            delay = due - time.monotonic()
            if delay > 0:
                self._stop_event.wait(delay)
            event["timestamp"] = now = time.time()
            produce(producer, topic, event["user_id"], orjson.dumps(event))
            self.last_event[event["user_id"]] = now
            self.sent += 1

    def stop(self) -> None:
        self._stop_event.set()
        self.stopped = time.monotonic()
        self.join()

    @property
    def achieved_rate(self) -> float:
        return self.sent / max(1e-9, self.stopped - self.started)


def measure_sustained(
    stack: LocalStack, watcher: VectorWatcher, cat: synthetic.SyntheticCatalogue, args: Any
) -> dict[str, Any]:
    """A steady stream at ``--sustain-rate`` for ``--sustain-seconds``. The pipeline keeps
    up if the feature worker's backlog does not grow over the run and every user's vector
    reflects their last event soon after the stream stops (the drain)."""
    applied = functools.partial(stack.metric_total, "feature", "recsys_feature_events_total")
    before = applied()
    stream = SteadyStream(
        stack, cat, args.users, args.sustain_rate, "sustain", args.sustain_seconds
    )
    cpu_before = cpu_seconds(stack)
    stream.start()
    backlog: list[float] = []  # events published but not yet applied, once a second
    # CPU cores each process used in each second: shows which one grows if the backlog does
    cores: dict[str, list[float]] = {name: [] for name in cpu_before}
    previous, previous_at = cpu_before, time.monotonic()
    deadline = time.monotonic() + args.sustain_seconds
    while time.monotonic() < deadline:
        time.sleep(1.0)
        backlog.append(stream.sent - (applied() - before))
        now, now_at = cpu_seconds(stack), time.monotonic()
        for name, series in cores.items():
            series.append(round((now[name] - previous[name]) / (now_at - previous_at), 2))
        previous, previous_at = now, now_at
    stream.stop()
    stopped = time.monotonic()
    stack.wait_for(
        lambda: watcher.caught_up(stream.last_event), args.timeout, "the sustained stream"
    )
    drained = time.monotonic()
    cpu_after = cpu_seconds(stack)
    third = max(1, len(backlog) // 3)
    # a pipeline that falls behind grows its backlog by (offered - capacity) every second;
    # one that keeps up holds the events in flight, a level with noise and no slope
    seconds = list(range(1, len(backlog) + 1))
    slope = statistics.linear_regression(seconds, backlog).slope if len(backlog) > 1 else 0.0
    return {
        "cpu_seconds_per_1k_events": {
            name: round((cpu_after[name] - cpu_before.get(name, 0.0)) / stream.sent * 1000, 3)
            for name in cpu_after
        },
        "offered_rate": args.sustain_rate,
        "achieved_rate": round(stream.achieved_rate, 1),
        "seconds": args.sustain_seconds,
        "events": stream.sent,
        "feature_backlog_first_third": round(statistics.median(backlog[:third]), 0),
        "feature_backlog_last_third": round(statistics.median(backlog[-third:]), 0),
        "feature_backlog_slope_per_s": round(slope, 1),
        "feature_backlog_per_s": backlog,
        "drain_seconds": round(drained - stopped, 2),
        "cpu_cores_first_third": {
            n: round(statistics.median(c[:third]), 2) for n, c in cores.items()
        },
        "cpu_cores_last_third": {
            n: round(statistics.median(c[-third:]), 2) for n, c in cores.items()
        },
        "cpu_cores_per_s": cores,
    }


def probe_freshness(
    stack: LocalStack,
    stub: ranking_pb2_grpc.RankingServiceStub,
    users: list[str],
    duration_s: float,
) -> list[float]:
    """Each probe buys the user's top item, then polls until the ranking drops it."""
    producer = make_producer(stack.kafka)
    topic = Topics.from_settings(stack.kafka).interactions
    samples: list[float] = []
    self_probes: list[tuple[str, float, float]] = []  # probe id, event time, visible time
    deadline = time.monotonic() + duration_s
    n = 0
    while time.monotonic() < deadline:
        user = users[n % len(users)]
        n += 1
        top = recommend(stub, user, k=10)
        if top.fallback or not top.items:
            continue
        item = top.items[0].item_id
        event = InteractionEvent(
            event_id=f"probe-{n}-{time.time_ns()}",
            user_id=user,
            item_id=item,
            event_type="purchase",
            timestamp=time.time(),
        )
        produce(producer, topic, user, event.to_bytes())
        producer.flush(5)
        give_up = time.monotonic() + 10
        while time.monotonic() < give_up:
            ranked = [i.item_id for i in recommend(stub, user, k=10).items]
            if item not in ranked:
                visible = time.time()
                samples.append((visible - event.timestamp) * 1000)
                self_probes.append((event.event_id, event.timestamp, visible))
                break
            time.sleep(0.02)  # probe cadence: fine enough for a 1 s target, light on 2 cores
    PROBES.extend(self_probes)
    return samples


PROBES: list[tuple[str, float, float]] = []


def stage_breakdown(watcher: VectorWatcher) -> dict[str, dict[str, float]]:
    """Median and p99 milliseconds of each hop, over the probes whose every stage was seen."""
    hops: dict[str, list[float]] = {
        "event_to_sequence": [],
        "sequence_to_vector": [],
        "vector_to_visible": [],
    }
    for probe, event_at, visible_at in PROBES:
        sequence_at = watcher.stage_times.get(("sequence", probe))
        vector_at = watcher.stage_times.get(("vector", probe))
        if sequence_at is None or vector_at is None:
            continue
        hops["event_to_sequence"].append((sequence_at - event_at) * 1000)
        hops["sequence_to_vector"].append((vector_at - sequence_at) * 1000)
        hops["vector_to_visible"].append((visible_at - vector_at) * 1000)
    return {
        "median_by_stage": {hop: round(percentile(v, 50), 1) for hop, v in hops.items()},
        "p99_by_stage": {hop: round(percentile(v, 99), 1) for hop, v in hops.items()},
    }


def batch_histogram(stack: LocalStack) -> dict[str, float]:
    """Inference's batch-size histogram, per bucket rather than cumulative."""
    buckets: dict[str, float] = {}
    previous = 0.0
    for sample in stack.metric_samples("inference", timeout_s=5):
        if sample.name == "recsys_inference_batch_size_bucket":
            buckets[f"<={sample.labels['le']}"] = sample.value - previous
            previous = sample.value
    return buckets


def gc_pauses(stack: LocalStack) -> dict[str, dict[str, float]]:
    """Each service's full garbage collections so far: how many, their total seconds, and
    how many stopped the process for longer than 100 ms (from its /metrics)."""
    pauses = {}
    for service in stack.http_ports:
        full = {
            sample.name.removeprefix("recsys_gc_pause_seconds"): sample
            for sample in stack.metric_samples(service, timeout_s=5)
            if sample.name.startswith("recsys_gc_pause_seconds")
            and sample.labels.get("generation") == "2"
            and sample.labels.get("le") in (None, "0.1")
        }
        if not full:  # no full collection yet, or the service did not answer
            pauses[service] = {"collections": 0.0, "seconds": 0.0, "over_100ms": 0.0}
            continue
        collections = full["_count"].value
        pauses[service] = {
            "collections": collections,
            "seconds": round(full["_sum"].value, 3),
            "over_100ms": collections - full["_bucket"].value,
        }
    return pauses


def onnx_vs_torch(
    artifacts: ArtifactStore, batches: tuple[int, ...], repeats: int, lengths: list[int]
) -> dict[str, Any]:
    """Median time of the served ONNX user tower vs the same architecture in torch eager,
    one thread each, on the same inputs, per batch size: batches of full-length histories
    (every position real), and batches whose history lengths are drawn from the stream's
    user vectors, encoded as inference encodes them (length buckets, each padded to its
    longest member; torch gets the very same bucket tensors)."""
    loaded = artifacts.load()
    hyperparameters = loaded.manifest.hyperparameters
    module: torch.nn.Module
    if hyperparameters.get("model") == "contrastive":
        # Same architecture as the served graph; timing does not depend on the weights.
        module = UserTower(ContrastiveConfig.model_validate(hyperparameters["contrastive"]))
    else:
        settings = ModelSettings(kind="recency_mean", max_seq_len=loaded.manifest.max_seq_len)
        module = RecencyWeightedMean(settings.half_life, type_weight_vector(settings.type_weights))
    timer = EngineTimer(loaded.onnx_path, module, device="cpu", threads=1, repeats=repeats)
    encoder = timer.encoder
    rng = np.random.default_rng(0)
    timer.warm_up(max(batches))
    full, stream = [], []
    for batch in batches:
        full.append(timer.row(batch, [timer.random_batch(rng, batch, encoder.max_len)]))
        if lengths and encoder.dynamic_length:
            drawn = rng.choice(np.asarray(lengths), size=batch)
            sequences = [
                (
                    rng.standard_normal((n, encoder.dim)).astype(np.float32),
                    rng.integers(1, len(EVENT_TYPE_IDS) + 1, size=n).tolist(),
                )
                for n in drawn
            ]
            buckets = [
                pad_left([sequences[int(i)] for i in rows], width, encoder.dim)
                for rows, width in length_buckets([int(n) for n in drawn], encoder.max_len)
            ]
            stream.append(timer.row(batch, buckets))
    return {
        "providers": encoder.providers,
        "max_len": encoder.max_len,
        "by_batch": full,
        "stream_lengths": {
            "median_length": float(np.median(lengths)) if lengths else None,
            "by_batch": stream,
        },
    }


def discard_stack_data(work: Path) -> None:
    """Keep a run's logs and probe times; remove what the stack stored (vector store,
    artifacts, text cache, tables: about 140 MB a run), so runs do not fill /tmp."""
    for entry in work.iterdir():
        if entry.suffix in {".log", ".json"} and entry.is_file():
            continue
        if entry.is_dir():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)


def run_once(args: Any, run: int) -> dict[str, Any]:
    """One complete measurement on a fresh stack."""
    log = io.StringIO()
    work = Path(tempfile.mkdtemp(prefix="recsys-bench-"))
    config = StackConfig(
        workdir=work,
        trainer_min_interactions=args.warmup,
        trainer_quiet_seconds=2.0,
        log_level="WARNING",
        extra_env={
            "RECSYS_TRAINER_RETRAIN_THRESHOLD": str(10**9),
            # Any served model will do here; quality is bench/evaluate.py's business.
            "RECSYS_TRAINER_MODEL__CONTRASTIVE__TIME_BUDGET_S": "60",
            **dict(setting.split("=", 1) for setting in args.env),
        },
    )
    cat = synthetic.catalogue(args.items)
    PROBES.clear()
    with LocalStack(config, Supervisor(out=log, colour=False)) as stack:
        warm = list(synthetic.interactions(cat, args.users, args.warmup, start=time.time() - 3600))
        print(f"run {run}: warm-up, {len(cat.items)} items, {len(warm)} events; training")
        publish_events(stack.kafka, cat.items, warm, progress=False)
        probe_users = list(dict.fromkeys(e.user_id for e in reversed(warm)))[:50]
        with grpc.insecure_channel(stack.ranking_address) as channel:
            stub = ranking_pb2_grpc.RankingServiceStub(channel)
            stack.wait_for(
                lambda: personalised_ready(channel, probe_users[:5]), args.timeout, "a first model"
            )
            stack.wait_for(
                lambda: stack.metric_total("feature", "recsys_feature_events_total") >= len(warm),
                args.timeout,
                "the warm-up stream",
            )
            watcher = VectorWatcher(stack, probe_users)
            # Tansu's in-memory log makes a fetch cost more with every record batch a topic
            # holds (0.05 -> 0.56 cores to consume 1,000 events/s after 10,000 small
            # batches), so each phase slows the broker for the next: the phases run in the
            # order of what they add to the log, the short burst first, the long
            # sustained stream last.
            print(f"run {run}: throughput, a burst of {args.burst} events")
            throughput = measure_throughput(stack, watcher, cat, args)
            print(json.dumps(throughput))

            print(f"run {run}: freshness, {args.rate:.0f} events/s for {args.duration:.0f}s")
            steady = SteadyStream(stack, cat, args.users, args.rate, "steady", args.duration)
            cpu_before = cpu_seconds(stack)
            steady.start()
            processed_before = stack.metric_total("feature", "recsys_feature_events_total")
            samples = probe_freshness(stack, stub, probe_users, args.duration)
            steady.stop()
            processed = stack.metric_total("feature", "recsys_feature_events_total")
            cpu_after = cpu_seconds(stack)
            # Share of a core each process used while the probes ran.
            cores = {
                name: round((cpu_after[name] - cpu_before.get(name, 0.0)) / args.duration, 3)
                for name in cpu_after
            }
            # Best effort: a probe's vector may be coalesced into a later update of the
            # same user; the breakdown uses the probes whose every stage was seen.
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and not all(
                ("vector", p) in watcher.stage_times for p, _, _ in PROBES
            ):
                time.sleep(0.1)
            stages = stage_breakdown(watcher)
            stack.wait_for(
                lambda: watcher.caught_up(steady.last_event), args.timeout, "the steady stream"
            )

            print(f"run {run}: {args.sustain_rate:.0f} events/s for {args.sustain_seconds:.0f}s")
            sustained = measure_sustained(stack, watcher, cat, args)
            print(json.dumps(sustained))
            watcher.close()
        histogram = batch_histogram(stack)
        full_collections = gc_pauses(stack)
    # Measured with the stack stopped, so the services' idle polling does not share the cores.
    speed = onnx_vs_torch(
        ArtifactStore(work / "artifacts", "recsys"),
        batches=(1, 4, 16, 64, 256),
        repeats=15,
        lengths=watcher.lengths,
    )
    (work / "stack.log").write_text(log.getvalue())
    # Every probe's hop times, for looking into the tail (not part of the results).
    probe_times = [
        {
            "probe": probe,
            "event": event_at,
            "sequence": watcher.stage_times.get(("sequence", probe)),
            "vector": watcher.stage_times.get(("vector", probe)),
            "visible": visible_at,
        }
        for probe, event_at, visible_at in PROBES
    ]
    (work / "probes.json").write_text(json.dumps(probe_times, indent=1))
    discard_stack_data(work)
    print(f"run {run}: stack logs and probe times in {work}")
    return {
        "events_per_s": throughput["events_per_s"],
        "throughput": throughput,
        "sustained": sustained,
        "rate": args.rate,
        "achieved_rate": round(steady.achieved_rate, 1),
        "freshness_ms": {
            "p50": round(percentile(samples, 50), 1),
            "p95": round(percentile(samples, 95), 1),
            "p99": round(percentile(samples, 99), 1),
            "samples": len(samples),
            **stages,
        },
        "backlog_after_rate_test": round(steady.sent + processed_before - processed, 0),
        "cores_used_during_rate_test": cores,
        "inference_batch_size_histogram": histogram,
        # Full garbage collections stop a whole process: the usual cause of tail spikes.
        "gc_full_collections": full_collections,
        "onnx_vs_torch_speedup": {
            f"batch_{row['batch']}": row["speedup"] for row in speed["by_batch"]
        },
        "onnx_vs_torch_speedup_stream_lengths": {
            f"batch_{row['batch']}": row["speedup"] for row in speed["stream_lengths"]["by_batch"]
        },
        "onnx_vs_torch": speed,
    }


def median_of(runs: list[dict[str, Any]], *path: str) -> float:
    values = []
    for run in runs:
        value: Any = run
        for key in path:
            value = value[key]
        values.append(float(value))
    return round(float(np.median(values)), 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--items", type=int, default=10_000)
    parser.add_argument("--warmup", type=int, default=20_000, help="events before training")
    parser.add_argument("--burst", type=int, default=30_000, help="events for throughput")
    parser.add_argument(
        "--sustain-rate", type=float, default=3_000.0, help="events/s of the sustained run"
    )
    parser.add_argument("--sustain-seconds", type=float, default=30.0)
    parser.add_argument("--rate", type=float, default=1_000.0, help="events/s for freshness")
    parser.add_argument("--duration", type=float, default=30.0, help="freshness seconds")
    parser.add_argument("--runs", type=int, default=1, help="each on a fresh stack; medians")
    parser.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a setting for every service of the stack (repeatable)",
    )
    parser.add_argument("--timeout", type=float, default=600.0)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    if any("=" not in setting for setting in args.env):
        parser.error("--env takes NAME=VALUE")

    runs = [run_once(args, run) for run in range(1, args.runs + 1)]
    # On a shared 2-core machine single runs swing; each figure is the median of the runs,
    # and every run is kept beside it.
    speedups = runs[0]["onnx_vs_torch_speedup"]
    result: dict[str, Any] = {
        "machine": f"{machine_summary()}, CPU only",
        "users": args.users,
        "items": args.items,
        "runs": len(runs),
        "settings": args.env,
        "events_per_s": median_of(runs, "events_per_s"),
        "sustained": {
            key: median_of(runs, "sustained", key)
            for key, value in runs[0]["sustained"].items()
            if not isinstance(value, dict | list)
        },
        "rate": args.rate,
        "freshness_ms": {q: median_of(runs, "freshness_ms", q) for q in ("p50", "p95", "p99")},
        "onnx_vs_torch_speedup": {
            batch: median_of(runs, "onnx_vs_torch_speedup", batch) for batch in speedups
        },
        "onnx_vs_torch_speedup_stream_lengths": {
            batch: median_of(runs, "onnx_vs_torch_speedup_stream_lengths", batch)
            for batch in runs[0]["onnx_vs_torch_speedup_stream_lengths"]
        },
        "per_run": runs,
    }
    print(json.dumps({k: v for k, v in result.items() if k != "per_run"}, indent=2))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
