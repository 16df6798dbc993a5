"""Entry point: ``python -m services.trainer``.

Replays ``interactions`` and ``items`` into memory and listens on ``trainer-commands``;
trains in a worker thread when the policy says so or a ``recsys train`` request arrives
(the consumer keeps polling meanwhile), puts the candidate through the gate, then
announces it or rejects it (``loop.py``).
"""

from __future__ import annotations

import functools
import logging
from concurrent.futures import ThreadPoolExecutor

from confluent_kafka import KafkaException

from recsys.artifacts import ArtifactStore
from recsys.kafka import make_consumer, make_producer, paced_fetch, usable, wait_for_broker
from recsys.lifecycle import freeze_startup_heap, stop_on_signals
from recsys.logs import setup_logging
from recsys.model.text_encoder import EmbeddingCache
from recsys.observability import start_health
from recsys.topics import Topics
from services.trainer.loop import RunResult, TrainerLoop, train_and_gate
from services.trainer.schedule import RetrainPolicy
from services.trainer.settings import TrainerSettings
from services.trainer.versions import apply_decision

log = logging.getLogger("services.trainer")


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
    consumer = make_consumer(
        settings.kafka, settings.group_id, **paced_fetch(settings.fetch_interval_ms)
    )
    consumer.subscribe([topics.interactions, topics.items, topics.trainer_commands])
    job = functools.partial(
        train_and_gate,
        store=artifacts,
        model=settings.model,
        tolerance=settings.gate_tolerance,
        warm_start=settings.warm_start,
        cache=cache,
    )

    def finish(result: RunResult) -> str:
        return apply_decision(artifacts, producer, topics, result.trained, result.decision)

    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="train")
    newest = artifacts.latest(status=None)  # a rejected run still counts as a run
    serving = artifacts.serving()
    loop = TrainerLoop(
        topics,
        policy,
        job,
        finish,
        executor,
        last_trained_at=newest.created_at if newest else None,
    )
    log.info(
        "trainer started",
        extra={
            "serving": serving.version if serving else None,
            "newest": newest.version if newest else None,
            "gate_tolerance": settings.gate_tolerance,
            "warm_start": settings.warm_start,
        },
    )
    freeze_startup_heap()
    try:
        while not stop.is_set():
            loop.handle(usable(consumer.consume(1_000, 0.2)))
            loop.step()
            offsets = loop.committable()
            if offsets:
                # Only trainer-commands offsets are ever committed: the data topics are
                # replayed whole at every start.
                try:
                    consumer.commit(offsets=offsets, asynchronous=False)
                except KafkaException as exc:
                    log.warning("request offsets not committed", extra={"error": str(exc)})
    finally:
        executor.shutdown(wait=True, cancel_futures=True)
        consumer.close()
        producer.flush(10)
        if health:
            health.stop()
        log.info("trainer stopped")


if __name__ == "__main__":
    main()
