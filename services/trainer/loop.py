"""The trainer's loop state, kept apart from Kafka and threads so tests can drive it.

:class:`TrainerLoop` takes polled messages (interactions, items, train requests) and,
at each :meth:`TrainerLoop.step`, finishes a completed run and starts the next one when
the schedule says so or a request is pending. One run at a time: requests that arrive
during a run become one pending run, started when the current one ends. A request's
offset is committed only once the run it asked for has finished, so a trainer that dies
mid-run runs it again after a restart.

A run (:func:`train_and_gate`, in a worker thread) trains a candidate, warm-started from
the serving version, and puts it through the gate; the loop's thread then acts on the
decision (announce and promote, or reject).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Executor, Future
from dataclasses import dataclass

from confluent_kafka import Message, TopicPartition
from prometheus_client import Counter, Histogram

from recsys.artifacts import ArtifactIntegrityError, ArtifactStore, LoadedVersion
from recsys.events import InteractionEvent, InvalidEvent, ItemEvent, TrainRequest, parse_event
from recsys.model.text_encoder import EmbeddingCache, TextEncoder
from recsys.topics import Topics
from services.trainer.data import EventLog
from services.trainer.gate import GateDecision, run_gate
from services.trainer.model_settings import ModelSettings
from services.trainer.pipeline import TrainedVersion, train_version
from services.trainer.schedule import RetrainPolicy

log = logging.getLogger("services.trainer")

RUNS = Counter("recsys_trainer_runs_total", "Training runs by outcome", ["outcome"])
RUN_SECONDS = Histogram(
    "recsys_trainer_run_seconds", "Training run time", buckets=(5, 15, 30, 60, 120, 300, 600)
)
for _outcome in ("promoted", "rejected", "failed"):
    RUNS.labels(_outcome)  # export zeros, so a rate of rejections exists before the first

MANUAL = "manual"


@dataclass(frozen=True)
class RunResult:
    trained: TrainedVersion
    decision: GateDecision


Job = Callable[[list[InteractionEvent], dict[str, ItemEvent]], RunResult]
Finish = Callable[[RunResult], str]


def load_serving(store: ArtifactStore) -> LoadedVersion | None:
    """The verified serving version, or None (nothing promoted, or its files are bad)."""
    serving = store.serving()
    if serving is None:
        return None
    try:
        return store.load(serving.version)
    except (ArtifactIntegrityError, OSError) as exc:
        log.warning(
            "serving version unreadable: no warm start, nothing to compare with",
            extra={"version": serving.version, "error": str(exc)},
        )
        return None


def train_and_gate(
    interactions: Sequence[InteractionEvent],
    items: Mapping[str, ItemEvent],
    store: ArtifactStore,
    model: ModelSettings,
    *,
    tolerance: float,
    warm_start: bool = True,
    cache: EmbeddingCache | None = None,
    encoder: TextEncoder | None = None,
) -> RunResult:
    """Train a candidate (status ``candidate``) and decide whether it may be served."""
    serving = load_serving(store)
    trained = train_version(
        interactions,
        items,
        store,
        model,
        cache,
        encoder=encoder,
        warm_from=serving if warm_start else None,
    )
    decision = run_gate(
        store.load(trained.version),
        serving,
        interactions,
        items,
        tolerance,
        trained.text_vectors,
    )
    return RunResult(trained, decision)


class TrainerLoop:
    """Event log, schedule, pending request and the run in progress."""

    def __init__(
        self,
        topics: Topics,
        policy: RetrainPolicy,
        job: Job,
        finish: Finish,
        executor: Executor,
        *,
        last_trained_at: float | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.topics = topics
        self.policy = policy
        self.event_log = EventLog(topics)
        self._job = job
        self._finish = finish
        self._executor = executor
        self._clock = clock
        self.new_since_last = 0
        self.last_input_at = clock()
        self.last_trained_at = last_trained_at
        self.pending: TrainRequest | None = None  # a manual run waiting to start
        self.running: Future[RunResult] | None = None
        self.run_reason: str | None = None
        self._run_started = 0.0
        self._pending_offsets: list[TopicPartition] = []
        self._running_offsets: list[TopicPartition] = []
        self._committable: list[TopicPartition] = []

    def handle(self, messages: Sequence[Message]) -> None:
        """Apply polled messages: data to the event log, requests to the pending run."""
        data = False
        for message in messages:
            if message.topic() == self.topics.trainer_commands:
                self._on_request(message)
            else:
                self.new_since_last += self.event_log.add(message)
                data = True
        if data:
            self.last_input_at = self._clock()

    def _on_request(self, message: Message) -> None:
        offset = TopicPartition(
            self.topics.trainer_commands, message.partition() or 0, (message.offset() or 0) + 1
        )
        try:
            request = parse_event(TrainRequest, message.value())
        except InvalidEvent as exc:
            log.warning("invalid train request skipped", extra={"error": str(exc)})
            self._committable.append(offset)
            return
        queued = self.running is not None
        if self.pending is None:
            self.pending = request
        self._pending_offsets.append(offset)
        log.info(
            "training requested",
            extra={
                "event_id": request.event_id,
                "note": request.reason,
                "queued_behind_run": queued,
            },
        )

    def step(self) -> str | None:
        """Finish a completed run and start the next if one is due; the finished outcome."""
        outcome = None
        if self.running is not None and self.running.done():
            outcome = self._complete(self.running)
        if self.running is None:
            self._maybe_start()
        return outcome

    def committable(self) -> list[TopicPartition]:
        """Offsets of requests that have been served, to commit (handed out once)."""
        offsets, self._committable = self._committable, []
        return offsets

    def _complete(self, run: Future[RunResult]) -> str:
        try:
            outcome = self._finish(run.result())
        except Exception:
            outcome = "failed"
            log.exception("training run failed", extra={"reason": self.run_reason})
        RUNS.labels(outcome).inc()
        RUN_SECONDS.observe(time.monotonic() - self._run_started)
        log.info("training run finished", extra={"outcome": outcome, "reason": self.run_reason})
        self.running, self.run_reason = None, None
        self._committable.extend(self._running_offsets)
        self._running_offsets = []
        return outcome

    def _maybe_start(self) -> None:
        now = self._clock()
        reason = MANUAL if self.pending is not None else None
        reason = reason or self.policy.reason(
            now=now,
            total=len(self.event_log.interactions),
            new_since_last=self.new_since_last,
            last_input_at=self.last_input_at,
            last_trained_at=self.last_trained_at,
        )
        if reason is None:
            return
        interactions, items = self.event_log.snapshot()
        log.info(
            "training started",
            extra={
                "reason": reason,
                "interactions": len(interactions),
                "items": len(items),
                "request": self.pending.event_id if self.pending else None,
            },
        )
        self._run_started = time.monotonic()
        self.running = self._executor.submit(self._job, interactions, items)
        self.run_reason = reason
        self.pending = None
        self._running_offsets, self._pending_offsets = self._pending_offsets, []
        self.new_since_last = 0
        self.last_trained_at = now
