"""Reading topics back in tests: poll with a deadline until a condition holds."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable

from confluent_kafka import Message

from recsys.kafka import make_consumer, usable
from recsys.settings import KafkaSettings


class TopicReader:
    """Collects every message of some topics from the beginning, in arrival order."""

    def __init__(self, settings: KafkaSettings, topics: list[str]) -> None:
        self._consumer = make_consumer(settings, f"test-reader-{uuid.uuid4().hex[:8]}")
        self._consumer.subscribe(topics)
        self.messages: list[Message] = []

    def poll(self, timeout_s: float = 0.2) -> None:
        self.messages.extend(usable(self._consumer.consume(1_000, timeout_s)))

    def wait_until(
        self, condition: Callable[[list[Message]], bool], timeout_s: float, what: str
    ) -> list[Message]:
        deadline = time.monotonic() + timeout_s
        while not condition(self.messages):
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"{what}: not seen within {timeout_s:.0f}s ({len(self.messages)} messages read)"
                )
            self.poll()
        return self.messages

    def on(self, topic: str) -> list[Message]:
        return [m for m in self.messages if m.topic() == topic]

    def close(self) -> None:
        self._consumer.close()
