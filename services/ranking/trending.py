"""Trending items: the feature service's time-decayed counts, summed over partitions.

The feature workers are partitioned by user, so each publishes a partial count per
(partition, item) on the compacted ``item-popularity`` topic (:mod:`recsys.popularity`).
Every ranking replica reads the whole topic and keeps, per item, the log-sum of its
latest partials: a starting replica reads one record per (partition, item) instead of
weeks of interactions, and never parses an interaction.

Each window has a half-life (hour, day, week); a response reports each item's share of
the window's decayed interactions.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Sequence
from typing import Protocol

import numpy as np
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Message, TopicPartition
from prometheus_client import Counter

from recsys.events import POPULARITY_WINDOWS, InvalidEvent, ItemPopularity, parse_event
from recsys.kafka import make_consumer, paced_fetch
from recsys.popularity import parse_popularity_key
from recsys.settings import KafkaSettings
from recsys.topics import Topics

log = logging.getLogger(__name__)

RECORDS = Counter(
    "recsys_ranking_popularity_records_total",
    "item-popularity records read by outcome (applied, tombstone, invalid)",
    ["outcome"],
)
# How long a ranked list is reused before it is recomputed from the scores.
_RANKED_TTL_S = 1.0


class TrendingSource(Protocol):
    def ranked(self, window: str) -> list[tuple[str, float]]:
        """(item_id, share) most trending first; empty when nothing was counted."""


class DecayedPopularity:
    """Per item, the log-sum of its partial scores over partitions; thread-safe."""

    def __init__(self) -> None:
        self._windows: list[str] = list(POPULARITY_WINDOWS)
        self._index: dict[str, int] = {}
        self._ids: list[str] = []
        self._partials: list[dict[int, np.ndarray]] = []  # per row: partition -> scores
        self._log_scores = np.full((1024, len(self._windows)), -np.inf)
        self._lock = threading.Lock()
        self._cache: dict[str, tuple[float, list[tuple[str, float]]]] = {}
        self.records = 0

    def set_partial(self, item_id: str, partition: int, log2_scores: Sequence[float]) -> None:
        """The item's latest partial score from ``partition`` (one per window)."""
        with self._lock:
            row = self._row(item_id)
            self._partials[row][partition] = np.asarray(log2_scores, dtype=np.float64)
            self._sum(row)
            self.records += 1

    def drop_partial(self, item_id: str, partition: int) -> None:
        """Forget ``partition``'s partial score of the item (a tombstone)."""
        with self._lock:
            row = self._index.get(item_id)
            if row is not None and self._partials[row].pop(partition, None) is not None:
                self._sum(row)
            self.records += 1

    def _row(self, item_id: str) -> int:
        row = self._index.get(item_id)
        if row is None:
            row = len(self._ids)
            if row == len(self._log_scores):
                grown = np.full((row * 2, len(self._windows)), -np.inf)
                grown[:row] = self._log_scores
                self._log_scores = grown
            self._index[item_id] = row
            self._ids.append(item_id)
            self._partials.append({})
        return row

    def _sum(self, row: int) -> None:
        partials = list(self._partials[row].values())
        self._log_scores[row] = np.logaddexp2.reduce(np.stack(partials)) if partials else -np.inf

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
        counted = np.isfinite(scores)  # an item whose partials were all dropped is not
        if not counted.any():
            return []
        total = float(np.logaddexp2.reduce(scores[counted]))
        top = np.argsort(-scores, kind="stable")[: min(limit, int(counted.sum()))]
        result = [(ids[i], float(2.0 ** (scores[i] - total))) for i in top]
        self._cache[window] = (now, result)
        return result


class TrendingConsumer:
    """Reads ``item-popularity`` into a :class:`DecayedPopularity` on a daemon thread.

    Every replica reads every partition from the beginning (no consumer group offsets
    are committed), so a restart rebuilds the scores from the compacted topic. Records
    that do not validate are counted and skipped: one bad record must not stop trending.
    """

    def __init__(
        self, kafka: KafkaSettings, popularity: DecayedPopularity, fetch_interval_ms: int = 0
    ) -> None:
        self._kafka = kafka
        self._fetch = paced_fetch(fetch_interval_ms)
        self.popularity = popularity
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
        topic = Topics.from_settings(self._kafka).item_popularity
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
                    self._apply(message)
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
        group = f"recsys-ranking-trending-{uuid.uuid4().hex[:8]}"
        consumer = make_consumer(self._kafka, group, **self._fetch)
        metadata = consumer.list_topics(topic, timeout=10)
        if topic not in metadata.topics or metadata.topics[topic].error is not None:
            consumer.close()
            raise RuntimeError(f"topic {topic} is not there yet")
        partitions = metadata.topics[topic].partitions
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
        log.info("trending consumer started", extra={"topic": topic, "partitions": len(partitions)})
        return consumer

    def _apply(self, message: Message) -> None:
        value = message.value()
        if value is None:  # a tombstone: the partial is gone
            try:
                partition, item_id = parse_popularity_key(message.key() or b"")
            except (UnicodeDecodeError, ValueError):
                RECORDS.labels("invalid").inc()
                return
            self.popularity.drop_partial(item_id, partition)
            RECORDS.labels("tombstone").inc()
            return
        try:
            record = parse_event(ItemPopularity, value)
        except InvalidEvent as exc:
            RECORDS.labels("invalid").inc()
            log.warning(
                "invalid item-popularity record skipped",
                extra={
                    "reason": str(exc),
                    "partition": message.partition(),
                    "offset": message.offset(),
                },
            )
            return
        scores = [record.log2_scores[w] for w in POPULARITY_WINDOWS]
        self.popularity.set_partial(record.item_id, record.partition, scores)
        RECORDS.labels("applied").inc()
