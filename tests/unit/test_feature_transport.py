"""The feature worker's consumer takes its fetch wait from the Kafka settings."""

from __future__ import annotations

import asyncio
from pathlib import Path

from recsys.settings import KafkaSettings
from services.feature.app import create_app
from services.feature.settings import FeatureSettings
from services.feature.transport import FeatureConsumer, FeatureTransport


def test_the_worker_consumer_fetches_with_the_configured_wait(tmp_path: Path) -> None:
    settings = FeatureSettings(
        data_dir=tmp_path,
        kafka=KafkaSettings(bootstrap_servers="127.0.0.1:9", fetch_max_wait_ms=37),
    )
    app = create_app(settings).app
    transport = app.transport
    assert isinstance(transport, FeatureTransport)

    async def worker_consumer_wait() -> int:
        consumer = app.consumer
        assert isinstance(consumer, FeatureConsumer)
        # faust builds its aiokafka consumer in the consumer thread's start; build it here.
        kafka_consumer = consumer._new_consumer_thread()._create_worker_consumer(transport)
        return int(kafka_consumer._fetch_max_wait_ms)

    # faust's own driver fixes 1,500 ms whatever the settings say.
    assert asyncio.run(worker_consumer_wait()) == 37
