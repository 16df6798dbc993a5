"""Entry point: ``python -m services.inference``."""

from __future__ import annotations

import logging

from recsys.artifacts import ArtifactStore
from recsys.kafka import (
    make_consumer,
    make_producer,
    make_replay_consumer,
    usable,
    wait_for_broker,
)
from recsys.lifecycle import freeze_startup_heap, stop_on_signals
from recsys.logs import setup_logging
from recsys.model.text_encoder import EmbeddingCache, TextEncoder
from recsys.observability import start_health
from services.inference.grpc_api import EmbedServer
from services.inference.service import InferenceService
from services.inference.settings import InferenceSettings

log = logging.getLogger("services.inference")


def main() -> None:
    settings = InferenceSettings()
    setup_logging("inference", settings.obs.log_level)
    stop = stop_on_signals()
    service: InferenceService | None = None
    # Up before anything slow, so probes see a live process that is not yet ready.
    health = start_health(
        settings.obs.http_port, lambda: service is not None and service.model is not None
    )
    wait_for_broker(settings.kafka)
    text_encoder = TextEncoder()
    cache = EmbeddingCache(settings.text_cache_dir)
    artifacts = ArtifactStore(settings.artifacts.root, settings.artifacts.model_name)
    producer = make_producer(settings.kafka)
    service = InferenceService(
        settings, producer, artifacts, lambda texts: cache.encode(text_encoder, list(texts))
    )
    embed_server = None
    if settings.grpc_port:
        embed_server = EmbedServer(lambda: service.model if service else None, settings.grpc_port)
        embed_server.start()
    consumer = make_consumer(settings.kafka, settings.group_id)
    consumer.subscribe(service.partitioned_topics)
    # Every replica must see every model announcement, so they are read outside the group.
    announcements = make_replay_consumer(settings.kafka, service.announcement_topic, "inference")
    log.info("inference started", extra={"topics": service.partitioned_topics})
    freeze_startup_heap()
    wait_s = settings.max_wait_ms / 1000
    try:
        while not stop.is_set():
            messages = usable(announcements.consume(100, 0.001))
            messages += usable(consumer.consume(settings.max_batch_size, wait_s or 0.001))
            if messages:
                had_model = service.model is not None
                service.handle(messages)
                if embed_server and not had_model and service.model is not None:
                    embed_server.model_ready()
    finally:
        if embed_server:
            embed_server.stop()
        consumer.close()
        announcements.close()
        producer.flush(10)
        if health:
            health.stop()
        log.info("inference stopped")


if __name__ == "__main__":
    main()
