"""The popularity fallback: the most popular items of a model version, with their details.

The trainer writes ``<artifacts.root>/<model_name>/<version>/popularity.json`` beside the
model, ``{"item_ids": [most popular first], "counts": [...]}``. The ranking service reads
it once per version, looks the items up in that version's item collection (titles and
categories; items missing from the collection are dropped) and keeps the result in
memory, so a fallback answer costs no I/O after the first request of a version.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from recsys.settings import ArtifactSettings
from recsys.vectorstore.base import VectorStore

log = logging.getLogger(__name__)

# A version whose artifact could not be read is retried after this many seconds.
_RETRY_MISSING_S = 5.0
# Versions kept in memory: the serving one and the one it replaced (during a swap).
_KEEP_VERSIONS = 2


@dataclass(frozen=True)
class PopularItem:
    item_id: str
    score: float
    title: str
    categories: tuple[str, ...]
    payload: Mapping[str, Any] = field(default_factory=dict)  # for filters


class PopularityUnavailable(RuntimeError):
    """The version's popularity artifact is missing or unreadable."""


def item_details(payload: Mapping[str, Any]) -> tuple[str, tuple[str, ...]]:
    """Title and categories from an item payload, tolerating missing or odd fields."""
    title = payload.get("title")
    categories = payload.get("categories")
    if isinstance(categories, str):
        cats: tuple[str, ...] = (categories,)
    elif isinstance(categories, Sequence):
        cats = tuple(map(str, categories))
    else:
        cats = ()
    return ("" if title is None else str(title)), cats


def artifact_path(artifacts: ArtifactSettings, version: str) -> Path:
    return artifacts.root / artifacts.model_name / version / "popularity.json"


def read_popularity(path: Path, depth: int) -> list[tuple[str, float]]:
    """``(item_id, score)`` for the ``depth`` most popular items, most popular first.

    The score is the item's share of the interactions counted over those items; without
    usable counts it falls linearly with the rank.
    """
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise PopularityUnavailable(f"cannot read {path}: {exc}") from exc
    ids = data.get("item_ids") if isinstance(data, dict) else None
    if not isinstance(ids, list):
        raise PopularityUnavailable(f"{path} has no 'item_ids' list")
    ids = [str(i) for i in ids[:depth]]
    counts = data.get("counts")
    if (
        isinstance(counts, list)
        and len(counts) >= len(ids)
        and all(isinstance(c, int | float) for c in counts[: len(ids)])
        and sum(counts[: len(ids)]) > 0
    ):
        total = float(sum(counts[: len(ids)]))
        scores = [float(c) / total for c in counts[: len(ids)]]
    else:
        n = max(len(ids), 1)
        scores = [1.0 - i / n for i in range(len(ids))]
    return list(zip(ids, scores, strict=True))


class PopularityCache:
    """Popular items per model version, loaded on first use and kept in memory.

    ``get`` is safe to call from many concurrent requests: one load runs per version,
    the others wait for it. Blocking work (file and store reads) runs in a thread.
    """

    def __init__(self, store: VectorStore, artifacts: ArtifactSettings, depth: int) -> None:
        self._store = store
        self._artifacts = artifacts
        self._depth = depth
        self._loaded: dict[str, list[PopularItem]] = {}
        self._failed: dict[str, tuple[float, str]] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    async def get(self, version: str, collection: str) -> list[PopularItem]:
        """The popular items of ``version``, whose items live in ``collection``.

        Raises ``PopularityUnavailable`` when the artifact is missing (retried after a
        few seconds, so an artifact written late is picked up).
        """
        items = self._loaded.get(version)
        if items is not None:
            return items
        lock = self._locks.setdefault(version, asyncio.Lock())
        async with lock:
            items = self._loaded.get(version)
            if items is not None:
                return items
            failed = self._failed.get(version)
            if failed is not None and time.monotonic() - failed[0] < _RETRY_MISSING_S:
                raise PopularityUnavailable(failed[1])
            try:
                items = await asyncio.to_thread(self._load, version, collection)
            except PopularityUnavailable as exc:
                self._failed[version] = (time.monotonic(), str(exc))
                log.warning(
                    "popularity fallback unavailable", extra={"version": version, "error": str(exc)}
                )
                raise
            self._failed.pop(version, None)
            self._loaded[version] = items
            for old in list(self._loaded)[:-_KEEP_VERSIONS]:
                del self._loaded[old]
                self._locks.pop(old, None)
            return items

    def _load(self, version: str, collection: str) -> list[PopularItem]:
        started = time.perf_counter()
        ranked = read_popularity(artifact_path(self._artifacts, version), self._depth)
        records = self._store.retrieve(collection, [i for i, _ in ranked], with_vectors=False)
        by_id = {r.id: r for r in records}
        items: list[PopularItem] = []
        for item_id, score in ranked:
            record = by_id.get(item_id)
            if record is None:
                continue
            title, categories = item_details(record.payload)
            items.append(PopularItem(item_id, score, title, categories, dict(record.payload)))
        log.info(
            "popular items loaded",
            extra={
                "version": version,
                "items": len(items),
                "not_in_collection": len(ranked) - len(items),
                "duration_ms": round((time.perf_counter() - started) * 1000, 1),
            },
        )
        return items
