"""Turning search candidates into the final list: diversity and explanations.

Pure functions over candidates (no I/O), so the servicer decides what to fetch and
this module decides the order.

* **MMR** (maximal marginal relevance): items are chosen greedily; each step takes the
  candidate maximising ``relevance - mmr * max(0, max cosine to the items chosen so
  far)``. ``mmr = 0`` keeps the relevance order.
* **Category cap**: at most ``max_per_category`` items share a first category.
* **Explanations**: for every chosen item, the history item it is most similar to.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np

from services.ranking.popularity import item_details


@dataclass(frozen=True)
class Candidate:
    item_id: str
    relevance: float
    payload: Mapping[str, Any]
    vector: np.ndarray | None = None  # unit norm; needed by MMR and explanations

    @cached_property
    def details(self) -> tuple[str, tuple[str, ...]]:
        """Title and categories, read from the payload once."""
        return item_details(self.payload)

    @property
    def title(self) -> str:
        return self.details[0]

    @property
    def categories(self) -> tuple[str, ...]:
        return self.details[1]


@dataclass(frozen=True)
class Ranked:
    candidate: Candidate
    score: float  # relevance - penalty
    penalty: float


@dataclass(frozen=True)
class HistoryItem:
    item_id: str
    title: str
    vector: np.ndarray


@dataclass(frozen=True)
class Reason:
    item_id: str
    title: str
    similarity: float


def pool_size(k: int, diversified: bool, factor: int, ceiling: int) -> int:
    """How many candidates to search for: k, or a wider pool for diversity to pick from."""
    if not diversified:
        return k
    return max(k, min(ceiling, max(k * factor, k + 50)))


def select(
    candidates: Sequence[Candidate], k: int, mmr: float = 0.0, max_per_category: int = 0
) -> list[Ranked]:
    """The top ``k`` of ``candidates`` (given best first) under MMR and the category cap."""
    if mmr <= 0:
        return _capped(candidates, k, max_per_category)
    usable = [c for c in candidates if c.vector is not None]
    if not usable:
        return _capped(candidates, k, max_per_category)
    vectors = np.stack([np.asarray(c.vector, dtype=np.float32) for c in usable])
    relevance = np.array([c.relevance for c in usable], dtype=np.float64)
    # the highest similarity of each candidate to any item chosen so far
    closest = np.zeros(len(usable), dtype=np.float64)
    available = np.ones(len(usable), dtype=bool)
    per_category: dict[str, int] = {}
    chosen: list[Ranked] = []
    while len(chosen) < k and available.any():
        penalty = mmr * np.maximum(closest, 0.0)
        scores = np.where(available, relevance - penalty, -np.inf)
        best = int(np.argmax(scores))
        available[best] = False
        candidate = usable[best]
        if not _fits(candidate, per_category, max_per_category):
            continue
        chosen.append(Ranked(candidate, float(scores[best]), float(penalty[best])))
        closest = np.maximum(closest, vectors @ vectors[best])
    return chosen


def _capped(candidates: Sequence[Candidate], k: int, max_per_category: int) -> list[Ranked]:
    chosen: list[Ranked] = []
    per_category: dict[str, int] = {}
    for candidate in candidates:
        if len(chosen) == k:
            break
        if _fits(candidate, per_category, max_per_category):
            chosen.append(Ranked(candidate, candidate.relevance, 0.0))
    return chosen


def _fits(candidate: Candidate, per_category: dict[str, int], cap: int) -> bool:
    """Counts the candidate in its first category if the cap allows it."""
    if cap <= 0:
        return True
    categories = candidate.categories
    if not categories:
        return True
    first = categories[0]
    if per_category.get(first, 0) >= cap:
        return False
    per_category[first] = per_category.get(first, 0) + 1
    return True


def closest_in_history(
    chosen: Sequence[Ranked], history: Sequence[HistoryItem]
) -> list[Reason | None]:
    """For each chosen item, the most similar history item (None without vectors)."""
    if not history:
        return [None] * len(chosen)
    matrix = np.stack([np.asarray(h.vector, dtype=np.float32) for h in history])
    reasons: list[Reason | None] = []
    for ranked in chosen:
        vector = ranked.candidate.vector
        if vector is None:
            reasons.append(None)
            continue
        similarities = matrix @ np.asarray(vector, dtype=np.float32)
        best = int(np.argmax(similarities))
        reasons.append(
            Reason(history[best].item_id, history[best].title, float(similarities[best]))
        )
    return reasons
