"""The feature worker's Kafka transport: faust's aiokafka driver, changed in two ways.

- Each acknowledged partition reaches the agent contiguously (contiguous.py).
- The longest time the broker may hold a fetch comes from ``KafkaSettings``, as it does
  for every other consumer here. faust fixes it at 1,500 ms, and a broker that holds a
  fetch for its full wait even while records arrive (Tansu does) then delays events by
  hundreds of milliseconds at any rate: 670 ms median at 100 events/s, against 44 ms
  with a 100 ms wait.
"""

from __future__ import annotations

from typing import Any

import faust
from aiokafka import AIOKafkaConsumer  # type: ignore[import-untyped]
from faust.transport.drivers import aiokafka as faust_aiokafka

from services.feature.contiguous import ContiguousConsumer


class _SettingsFetchThread(faust_aiokafka.AIOKafkaConsumerThread):
    def _create_worker_consumer(self, transport: Any) -> AIOKafkaConsumer:
        consumer = super()._create_worker_consumer(transport)
        # Read when the consumer starts and builds its fetcher, which is after this.
        consumer._fetch_max_wait_ms = transport.fetch_max_wait_ms
        return consumer


class FeatureConsumer(ContiguousConsumer):
    def _new_consumer_thread(self) -> faust_aiokafka.AIOKafkaConsumerThread:
        return _SettingsFetchThread(self, loop=self.loop, beacon=self.beacon)


class FeatureTransport(faust_aiokafka.Transport):
    Consumer = FeatureConsumer

    def __init__(self, app: faust.App, fetch_max_wait_ms: int) -> None:
        super().__init__(app.conf.broker_consumer, app)
        self.fetch_max_wait_ms = fetch_max_wait_ms


def use_feature_transport(app: faust.App, fetch_max_wait_ms: int) -> None:
    """Make ``app`` consume through :class:`FeatureConsumer` (before it creates one)."""
    app.transport = FeatureTransport(app, fetch_max_wait_ms)
