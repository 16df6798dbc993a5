"""The one small interface every vector-store backend implements.

Ids are the application's string ids; backends map them to the point ids their engine
needs (Qdrant takes unsigned integers or UUIDs) and keep the original in the payload.
A collection name may be an alias everywhere a collection is read or written; aliases
let a new model version's collection fill up while the old one serves.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np


class CollectionNotFound(KeyError):
    """Neither a collection nor an alias has this name."""


@dataclass(frozen=True)
class VectorRecord:
    id: str
    vector: np.ndarray
    payload: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class SearchHit:
    id: str
    score: float
    payload: Mapping[str, Any]


@dataclass(frozen=True)
class Range:
    gte: float | None = None
    lte: float | None = None


@dataclass(frozen=True)
class Filter:
    """Payload conditions, all of which must hold.

    ``any_of``: the keyword field (or list field) holds at least one of the values.
    ``none_of``: the keyword field holds none of the values.
    ``ranges``: the numeric field lies within the range (bounds inclusive).
    ``equals``: the field equals the value (bool, int or keyword).
    """

    any_of: Mapping[str, Sequence[str]] = field(default_factory=dict)
    none_of: Mapping[str, Sequence[str]] = field(default_factory=dict)
    ranges: Mapping[str, Range] = field(default_factory=dict)
    equals: Mapping[str, bool | int | str] = field(default_factory=dict)

    def is_empty(self) -> bool:
        return not (self.any_of or self.none_of or self.ranges or self.equals)

    def matches(self, payload: Mapping[str, Any]) -> bool:
        """Whether a payload passes, with the engines' semantics (for in-memory lists)."""
        for key, values in self.any_of.items():
            if not _as_keywords(payload.get(key)) & {str(v) for v in values}:
                return False
        for key, values in self.none_of.items():
            if _as_keywords(payload.get(key)) & {str(v) for v in values}:
                return False
        for key, bounds in self.ranges.items():
            value = payload.get(key)
            if isinstance(value, bool) or not isinstance(value, int | float):
                return False
            if bounds.gte is not None and value < bounds.gte:
                return False
            if bounds.lte is not None and value > bounds.lte:
                return False
        for key, expected in self.equals.items():
            value = payload.get(key)
            if isinstance(expected, bool) != isinstance(value, bool) or value != expected:
                return False
        return True


def _as_keywords(value: Any) -> set[str]:
    if value is None:
        return set()
    if isinstance(value, str):
        return {value}
    if isinstance(value, list | tuple | set | frozenset):
        return {str(v) for v in value}
    return {str(value)}


@runtime_checkable
class VectorStore(Protocol):
    def create_collection(self, name: str, dim: int, keyword_fields: Sequence[str] = ()) -> None:
        """Create an empty cosine-distance collection; a no-op if it exists with this dim."""

    def drop_collection(self, name: str) -> None:
        """Remove a collection (not an alias); a no-op if it does not exist."""

    def list_collections(self) -> list[str]: ...

    def collection_exists(self, name: str) -> bool:
        """True for an existing collection or an alias that points to one."""

    def set_alias(self, alias: str, collection: str) -> None:
        """Point ``alias`` at ``collection`` atomically (readers see old or new, never none)."""

    def resolve(self, name: str) -> str:
        """The collection an alias points to, or ``name`` if it is a collection."""

    def upsert(self, collection: str, records: Sequence[VectorRecord]) -> None: ...

    def delete(self, collection: str, ids: Sequence[str]) -> None: ...

    def retrieve(
        self, collection: str, ids: Sequence[str], with_vectors: bool = True
    ) -> list[VectorRecord]:
        """The records that exist among ``ids``, in the order asked; missing ids are skipped."""

    def search(
        self,
        collection: str,
        vector: np.ndarray,
        limit: int,
        query_filter: Filter | None = None,
        exclude_ids: Collection[str] = (),
    ) -> list[SearchHit]:
        """Top ``limit`` by cosine similarity (higher is closer), best first."""

    def count(self, collection: str) -> int: ...

    def dimension(self, collection: str) -> int:
        """The vector size of a collection (or the one an alias points to)."""

    def optimize(self, collection: str) -> None:
        """Build the search index after a bulk load, before an alias points readers at it."""

    def close(self) -> None: ...
