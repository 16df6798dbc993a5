"""A paced consumer (the trainer's, trending's) on the real broker: every record, fewer fetches."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import pytest

from recsys.kafka import make_consumer, make_producer, paced_fetch, produce, usable
from recsys.settings import KafkaSettings
from recsys.topics import Topics

pytestmark = pytest.mark.integration

RECORDS = 3_000


class _Reader(threading.Thread):
    """Reads the topic as it fills; counts its fetch requests from librdkafka statistics."""

    def __init__(self, kafka: KafkaSettings, topic: str, **overrides: Any) -> None:
        super().__init__(daemon=True)
        self.values: list[bytes] = []
        self.fetch_requests = 0
        self.done = threading.Event()
        self.assigned = threading.Event()
        self._consumer = make_consumer(
            kafka,
            f"paced-{id(self)}",
            **overrides,
            **{"statistics.interval.ms": 100, "stats_cb": self._stats},
        )
        self._consumer.subscribe([topic])

    def _stats(self, raw: str) -> None:
        brokers = json.loads(raw).get("brokers", {}).values()
        self.fetch_requests = sum(b.get("req", {}).get("Fetch", 0) for b in brokers)

    def run(self) -> None:
        deadline = time.monotonic() + 60
        while len(self.values) < RECORDS and time.monotonic() < deadline:
            self.values += [m.value() or b"" for m in usable(self._consumer.consume(500, 0.1))]
            if self._consumer.assignment():
                self.assigned.set()
        self._consumer.consume(1, 0.3)  # serves the last statistics callback
        self._consumer.close()
        self.done.set()


def test_paced_consumer_reads_every_record_in_fewer_fetches(
    kafka: KafkaSettings, topics: Topics
) -> None:
    streaming_kafka = kafka.model_copy(update={"fetch_max_wait_ms": 50})  # as the local stack
    topic = topics.interactions
    streaming = _Reader(streaming_kafka, topic)
    paced = _Reader(streaming_kafka, topic, **paced_fetch(500))
    streaming.start()
    paced.start()
    # both read as the topic fills, not a backlog left while they joined their groups
    assert streaming.assigned.wait(60) and paced.assigned.wait(60), "no partitions assigned"
    producer = make_producer(kafka, **{"linger.ms": 20})
    # about 3 s of records in many small record batches, as a busy topic fills
    for n in range(RECORDS):
        produce(producer, topic, f"user-{n % 97}", json.dumps({"n": n}).encode())
        if n % 30 == 29:
            producer.poll(0)
            time.sleep(0.03)
    assert producer.flush(10) == 0
    for reader in (streaming, paced):
        assert reader.done.wait(90), "a reader did not finish"
        numbers = sorted(json.loads(value)["n"] for value in reader.values)
        assert numbers == list(range(RECORDS)), "a record was lost or read twice"
    # the streaming reader fetches as record batches land (every 50 ms at most); the paced
    # one waits 500 ms between fetches while records flow
    assert 0 < paced.fetch_requests < streaming.fetch_requests / 2, (
        paced.fetch_requests,
        streaming.fetch_requests,
    )
