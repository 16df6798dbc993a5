"""Entry point: ``python -m services.trainer``.

Replays ``interactions`` and ``items`` into memory, trains in a worker thread when the
policy says so (the consumer keeps polling meanwhile), then announces the new version.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import Future, ThreadPoolExecutor

from prometheus_client import Counter, Histogram

from recsys.artifacts import ArtifactStore
from recsys.kafka import make_consumer, make_producer, usable, wait_for_broker
from recsys.lifecycle import stop_on_signals
from recsys.logs import setup_logging
from recsys.model.text_encoder import EmbeddingCache
from recsys.observability import start_health
from recsys.topics import Topics
from services.trainer.data import EventLog
from services.trainer.pipeline import TrainedVersion, train_version
from services.trainer.publisher import announce
from services.trainer.schedule import RetrainPolicy
from services.trainer.settings import TrainerSettings

log = logging.getLogger("services.trainer")

RUNS = Counter("recsys_trainer_runs_total", "Training runs", ["outcome"])
RUN_SECONDS = Histogram(
    "recsys_trainer_run_seconds", "Training run time", buckets=(5, 15, 30, 60, 120, 300, 600)
)


def main() -> None:
    settings = TrainerSettings()
    setup_logging("trainer", settings.obs.log_level)
    stop = stop_on_signals()
    health = start_health(settings.obs.http_port, lambda: True)
    wait_for_broker(settings.kafka)
    topics = Topics.from_settings(settings.kafka)
    artifacts = ArtifactStore(settings.artifacts.root, settings.artifacts.model_name)
    cache = EmbeddingCache(settings.text_cache_dir or settings.artifacts.root / "text-cache")
    policy = RetrainPolicy(
        settings.min_interactions,
        settings.retrain_threshold,
        settings.quiet_seconds,
        settings.interval_seconds,
    )
    producer = make_producer(settings.kafka)
    consumer = make_consumer(settings.kafka, settings.group_id)
    consumer.subscribe([topics.interactions, topics.items])
    event_log = EventLog(topics)

    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="train")
    running: Future[TrainedVersion] | None = None
    run_started = 0.0
    new_since_last = 0
    last_input_at = time.time()
    latest = artifacts.latest()
    last_trained_at: float | None = latest.created_at if latest else None
    log.info("trainer started", extra={"latest": latest.version if latest else None})
    try:
        while not stop.is_set():
            messages = usable(consumer.consume(1_000, 0.2))
            for message in messages:
                new_since_last += event_log.add(message)
            if messages:
                last_input_at = time.time()

            if running is not None and running.done():
                try:
                    trained = running.result()
                    update = announce(producer, topics, trained)
                    RUNS.labels("announced").inc()
                    log.info(
                        "model announced",
                        extra={
                            "version": update.version,
                            "items": update.item_count,
                            "metrics": update.metrics,
                        },
                    )
                except Exception:
                    RUNS.labels("failed").inc()
                    log.exception("training run failed")
                RUN_SECONDS.observe(time.monotonic() - run_started)
                running = None

            if running is None:
                reason = policy.reason(
                    now=time.time(),
                    total=len(event_log.interactions),
                    new_since_last=new_since_last,
                    last_input_at=last_input_at,
                    last_trained_at=last_trained_at,
                )
                if reason is not None:
                    interactions, items = event_log.snapshot()
                    log.info(
                        "training started",
                        extra={
                            "reason": reason,
                            "interactions": len(interactions),
                            "items": len(items),
                        },
                    )
                    run_started = time.monotonic()
                    running = executor.submit(
                        train_version, interactions, items, artifacts, settings.model, cache
                    )
                    new_since_last = 0
                    last_trained_at = time.time()
    finally:
        executor.shutdown(wait=True, cancel_futures=True)
        consumer.close()
        producer.flush(10)
        if health:
            health.stop()
        log.info("trainer stopped")


if __name__ == "__main__":
    main()
