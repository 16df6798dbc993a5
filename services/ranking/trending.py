"""Trending items: interactions counted with exponential time decay, per window.

Popularity is a global per-item aggregate, while the feature worker is partitioned by
user, so each ranking replica folds the ``interactions`` topic itself (a dictionary
update per event) instead of merging partial counts from every feature partition.

Each window has a half-life (hour, day, week): an interaction of age ``a`` counts
``2 ** (-a / half_life)``. Scores are kept in the log domain, ``log2(sum 2 ** (t / h))``,
so they never overflow and need no "now" to update: the decayed score at any time is
``2 ** (L - now / h)``, and the order of items does not depend on when it is read. A
response reports each item's share of the window's decayed interactions.
"""

from __future__ import annotations

import logging
import math
import threading
import time
import uuid
from collections.abc import Mapping
from typing import Protocol

import numpy as np
import orjson
from confluent_kafka import Consumer, KafkaError, TopicPartition

from recsys.kafka import make_consumer
from recsys.settings import KafkaSettings
from recsys.topics import Topics

log = logging.getLogger(__name__)

HALF_LIVES_S: Mapping[str, float] = {"hour": 3600.0, "day": 86_400.0, "week": 604_800.0}
# How long a ranked list is reused before it is recomputed from the scores.
_RANKED_TTL_S = 1.0


class TrendingSource(Protocol):
    def ranked(self, window: str) -> list[tuple[str, float]]:
        """(item_id, share) most trending first; empty when nothing was counted."""


class DecayedPopularity:
    """Time-decayed interaction counts per item for several half-lives; thread-safe."""

    def __init__(self, half_lives_s: Mapping[str, float] = HALF_LIVES_S) -> None:
        self._windows = list(half_lives_s)
        self._inverse = np.array([1.0 / half_lives_s[w] for w in self._windows])
        self._index: dict[str, int] = {}
        self._ids: list[str] = []
        self._log_scores = np.full((1024, len(self._windows)), -np.inf)
        self._lock = threading.Lock()
        self._cache: dict[str, tuple[float, list[tuple[str, float]]]] = {}
        self.events = 0

    def add(self, item_id: str, timestamp: float, weight: float = 1.0) -> None:
        if weight <= 0 or not math.isfinite(timestamp):
            return
        increment = math.log2(weight) + timestamp * self._inverse
        with self._lock:
            row = self._index.get(item_id)
            if row is None:
                row = len(self._ids)
                if row == len(self._log_scores):
                    grown = np.full((row * 2, len(self._windows)), -np.inf)
                    grown[:row] = self._log_scores
                    self._log_scores = grown
                self._index[item_id] = row
                self._ids.append(item_id)
            self._log_scores[row] = np.logaddexp2(self._log_scores[row], increment)
            self.events += 1

    def ranked(self, window: str, limit: int = 5000) -> list[tuple[str, float]]:
        """The ``limit`` items with the highest decayed count, with their share."""
        column = self._windows.index(window)
        cached = self._cache.get(window)
        now = time.monotonic()
        if cached is not None and now - cached[0] < _RANKED_TTL_S:
            return cached[1]
        with self._lock:
            n = len(self._ids)
            scores = self._log_scores[:n, column].copy()
            ids = list(self._ids)
        if n == 0:
            return []
        total = float(np.logaddexp2.reduce(scores))
        top = np.argsort(-scores, kind="stable")[:limit]
        result = [(ids[i], float(2.0 ** (scores[i] - total))) for i in top]
        self._cache[window] = (now, result)
        return result


class TrendingConsumer:
    """Folds ``interactions`` into a :class:`DecayedPopularity` on a daemon thread.

    Every replica reads every partition (no consumer group offsets are committed),
    starting ``lookback_s`` before now, so a restart rebuilds the counts from the log.
    Messages that do not parse are skipped here: the feature service dead-letters them.
    """

    def __init__(
        self, kafka: KafkaSettings, popularity: DecayedPopularity, lookback_s: float
    ) -> None:
        self._kafka = kafka
        self.popularity = popularity
        self._lookback_s = lookback_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="trending", daemon=True)

    def start(self) -> TrendingConsumer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def ranked(self, window: str) -> list[tuple[str, float]]:
        return self.popularity.ranked(window)

    def _run(self) -> None:
        consumer: Consumer | None = None
        topic = Topics.from_settings(self._kafka).interactions
        while not self._stop.is_set():
            try:
                if consumer is None:
                    consumer = self._open(topic)
                for message in consumer.consume(500, timeout=0.5):
                    error = message.error()
                    if error is not None:
                        if error.code() != KafkaError._PARTITION_EOF:
                            log.warning("trending consumer error", extra={"error": str(error)})
                        continue
                    self._fold(message.value())
            except Exception:
                # broker down or topic missing: retry with a fresh consumer, never die
                log.exception("trending consumer failed; retrying in 2 s")
                if consumer is not None:
                    consumer.close()
                    consumer = None
                self._stop.wait(2.0)
        if consumer is not None:
            consumer.close()

    def _open(self, topic: str) -> Consumer:
        consumer = make_consumer(self._kafka, f"recsys-ranking-trending-{uuid.uuid4().hex[:8]}")
        metadata = consumer.list_topics(topic, timeout=10)
        if topic not in metadata.topics or metadata.topics[topic].error is not None:
            consumer.close()
            raise RuntimeError(f"topic {topic} is not there yet")
        since_ms = int((time.time() - self._lookback_s) * 1000)
        wanted = [TopicPartition(topic, p, since_ms) for p in metadata.topics[topic].partitions]
        consumer.assign(consumer.offsets_for_times(wanted, timeout=10))
        log.info("trending consumer started", extra={"topic": topic, "partitions": len(wanted)})
        return consumer

    def _fold(self, value: bytes | None) -> None:
        if not value:
            return
        try:
            event = orjson.loads(value)
            item_id = event["item_id"]
            timestamp = float(event["timestamp"])
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            return
        if isinstance(item_id, str) and item_id:
            self.popularity.add(item_id, timestamp)
