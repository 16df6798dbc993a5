"""The embedded backend: Qdrant's own engine in-process through ``qdrant-edge-py``.

One ``EdgeShard`` per collection under ``<path>/collections/<name>/shard``; aliases, which
the engine does not have, live in ``<path>/aliases.json``. An embedded store belongs to
one process (the engine locks its write-ahead log).

Behaviour of qdrant-edge-py 0.9.0 this module relies on (measured; the unit tests pin
the boolean filter, the normalisation and concurrent reads during writes):

- The binding holds the GIL for the whole of every call, ``optimize()`` included, so a
  long HNSW build stalls every other Python thread of the process. Calls are therefore
  serialised anyway and concurrent queries during updates are safe; readers take no
  lock. Only writes and shard lifecycle (create, drop, close) are locked.
- ``MatchValue(True)`` is converted to the integer 1 and never matches a boolean
  payload; ``MatchValue(numpy.bool_(True))`` does, so booleans go in as ``numpy.bool_``.
- Cosine vectors are stored normalised: ``retrieve`` returns unit vectors.
- An update is in the shard's write-ahead log when ``update`` returns, and ``load``
  replays the log: points written without a ``flush`` survive the process being killed
  (a unit test pins it). So writes flush at most every ``flush_interval_s``, which only
  bounds the replay at the next start; flushing after every batch had been a third of
  the indexer's CPU under a stream of user vectors.
- Every point id the binding takes or returns is a Python ``uuid.UUID`` (about 1 us
  each to build and hash), so a has-id exclusion of a user's 100 seen items, or
  over-fetching 100 hits to drop them, costs more than the search. Every collection
  therefore carries a keyword index on the string id (``_id``), and exclusions are a
  keyword match the engine checks in Rust (beside a payload filter, see ``search``).
- A filtered HNSW search can return fewer hits than asked for although more points
  match (qdrant/qdrant#3094); a short filtered result on HNSW segments is searched again
  with ACORN, then exactly (``recsys.vectorstore.short_results``).
- Segments below the indexing threshold (10 MB by default) are never HNSW-indexed, and
  segments below ``full_scan_threshold`` are searched exactly; both are Qdrant defaults
  that keep small collections exact, and can be lowered here.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import re
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar, cast

import numpy as np
import qdrant_edge as qe

from recsys.vectorstore.base import (
    CollectionNotFound,
    Filter,
    SearchHit,
    VectorRecord,
)
from recsys.vectorstore.short_results import RETRY_MODES, SHORT_RESULT_RETRIES, RetryMode

log = logging.getLogger(__name__)

_T = TypeVar("_T")

# Fixed forever: changing it would orphan every stored point. The server backend uses the
# same namespace so both backends give an item the same point id.
ID_NAMESPACE = uuid.UUID("6f1c2a4e-8d3b-5e7f-9a0c-1b2d3e4f5a6b")
ID_KEY = "_id"  # payload key holding the application's string id

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,199}$")
_ALIASES_FILE = "aliases.json"
_META_FILE = "meta.json"


@functools.lru_cache(maxsize=1 << 18)
def point_id(item_id: str) -> uuid.UUID:
    """Qdrant accepts only integers and UUIDs as point ids, so strings are hashed.

    Cached: every request hashes the user's seen items, the same ids again and again.
    """
    return uuid.uuid5(ID_NAMESPACE, item_id)


def ordered_records(
    found: Iterable[Any], ids: Sequence[str], with_vectors: bool
) -> list[VectorRecord]:
    """Engine records (either backend's) as VectorRecords in the order ``ids`` asked."""
    by_id: dict[str, VectorRecord] = {}
    for rec in found:
        payload = dict(rec.payload or {})
        item_id = str(payload.pop(ID_KEY))
        vector = np.asarray(rec.vector if with_vectors else [], dtype=np.float32)
        by_id[item_id] = VectorRecord(item_id, vector, payload)
    return [by_id[i] for i in ids if i in by_id]


def check_name(name: str) -> None:
    """Names become folder names, so they are restricted to a safe alphabet."""
    if not _NAME.match(name):
        raise ValueError(f"invalid collection or alias name {name!r}: use [A-Za-z0-9_.-]")


def check_payload(payload: Mapping[str, Any]) -> None:
    if ID_KEY in payload:
        raise ValueError(f"payload key {ID_KEY!r} is reserved for the record id")


def _write_json_atomically(path: Path, data: object) -> None:
    """Temp file + fsync + rename, so a crash leaves the old or the new file, never half."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(data, fh, sort_keys=True)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


@dataclass
class _Shard:
    engine: qe.EdgeShard
    dim: int
    folder: Path
    flushed_at: float = field(default_factory=time.monotonic)


class EdgeVectorStore:
    """The default store: HNSW and payload indexes without a server process.

    Thread-safe: one indexer thread writes while request threads read.
    """

    def __init__(
        self,
        path: Path,
        hnsw_ef: int = 128,
        *,
        search_threads: int = 1,
        indexing_threshold_kb: int | None = None,
        full_scan_threshold_kb: int | None = None,
        post_filter_max: int = 256,
        flush_interval_s: float = 5.0,
    ) -> None:
        """``search_threads``: per-shard pool; 1 because requests, not segments, are the
        parallelism. The thresholds apply to collections created by this instance; None
        keeps Qdrant's defaults (tests lower them to exercise HNSW on small data)."""
        self._root = Path(path)
        self._hnsw_ef = hnsw_ef
        self._search_threads = search_threads
        self._indexing_threshold_kb = indexing_threshold_kb
        self._full_scan_threshold_kb = full_scan_threshold_kb
        self._post_filter_max = post_filter_max
        self._flush_interval_s = flush_interval_s
        self._lock = threading.RLock()
        self._closed = False
        (self._root / "collections").mkdir(parents=True, exist_ok=True)
        # Readers fetch these dicts without the lock; writers replace entries or the whole
        # dict under the lock, so a reader sees the old or the new state, never a mix.
        self._shards: dict[str, _Shard] = {}
        self._aliases: dict[str, str] = self._load_aliases()
        self._load_shards()

    # -- start-up ---------------------------------------------------------------------

    def _load_aliases(self) -> dict[str, str]:
        file = self._root / _ALIASES_FILE
        if not file.exists():
            return {}
        data = json.loads(file.read_text(encoding="utf-8"))
        return {str(k): str(v) for k, v in data.items()}

    def _load_shards(self) -> None:
        for folder in sorted((self._root / "collections").iterdir()):
            meta_file = folder / _META_FILE
            if not meta_file.exists():
                # A create that crashed before its metadata was written: never served.
                log.warning("skipping incomplete collection folder", extra={"path": str(folder)})
                continue
            meta = json.loads(meta_file.read_text(encoding="utf-8"))
            engine = qe.EdgeShard.load(str(folder / "shard"))
            # Collections written before ids were indexed get the index once, here.
            self._ensure_keyword_indexes(engine, (ID_KEY,))
            self._shards[folder.name] = _Shard(engine, int(meta["dim"]), folder)
        dangling = {a: c for a, c in self._aliases.items() if c not in self._shards}
        if dangling:
            log.warning("aliases point to missing collections", extra={"aliases": dangling})

    # -- collections and aliases ------------------------------------------------------

    def create_collection(self, name: str, dim: int, keyword_fields: Sequence[str] = ()) -> None:
        check_name(name)
        if dim < 1:
            raise ValueError(f"dim must be positive, got {dim}")
        with self._lock:
            self._check_open()
            if name in self._aliases:
                raise ValueError(f"{name!r} is an alias, not a collection")
            existing = self._shards.get(name)
            if existing is not None:
                if existing.dim != dim:
                    raise ValueError(
                        f"collection {name!r} exists with dim {existing.dim}, not {dim}"
                    )
                self._ensure_keyword_indexes(existing.engine, (*keyword_fields, ID_KEY))
                return
            folder = self._root / "collections" / name
            if folder.exists():  # leftover of a crashed create
                shutil.rmtree(folder)
            folder.mkdir(parents=True)
            engine = qe.EdgeShard.create(str(folder / "shard"), self._config(dim))
            self._ensure_keyword_indexes(engine, (*keyword_fields, ID_KEY))
            engine.flush()
            _write_json_atomically(folder / _META_FILE, {"dim": dim})
            self._shards[name] = _Shard(engine, dim, folder)

    def _config(self, dim: int) -> qe.EdgeConfig:
        hnsw = None
        if self._full_scan_threshold_kb is not None:
            # m and ef_construct are Qdrant's defaults; the constructor needs all three.
            hnsw = qe.HnswIndexConfig(
                m=16, ef_construct=100, full_scan_threshold=self._full_scan_threshold_kb
            )
        optimizers = None
        if self._indexing_threshold_kb is not None:
            optimizers = qe.EdgeOptimizersConfig(indexing_threshold=self._indexing_threshold_kb)
        return qe.EdgeConfig(
            vectors=qe.EdgeVectorParams(size=dim, distance=qe.Distance.Cosine),
            hnsw_config=hnsw,
            optimizers=optimizers,
            max_search_threads=self._search_threads,
        )

    @staticmethod
    def _ensure_keyword_indexes(engine: qe.EdgeShard, fields: Iterable[str]) -> None:
        """Keyword indexes on ``fields``; the string id (``_id``) is always one of them, so
        exclusions are a keyword match (see ``_edge_filter``)."""
        present = set(engine.info().payload_schema)
        for name in fields:
            if name not in present:
                engine.update(
                    qe.UpdateOperation.create_field_index(name, qe.PayloadSchemaType.Keyword)
                )

    def drop_collection(self, name: str) -> None:
        with self._lock:
            self._check_open()
            if name in self._aliases:
                raise ValueError(f"{name!r} is an alias; drop the collection it points to")
            shard = self._shards.get(name)
            if shard is None:
                return
            # Aliases go first so readers get CollectionNotFound, not a closed shard.
            remaining = {a: c for a, c in self._aliases.items() if c != name}
            if remaining != self._aliases:
                self._save_aliases(remaining)
            del self._shards[name]
            _close_engine(shard.engine, flush=False)
            shutil.rmtree(shard.folder)

    def list_collections(self) -> list[str]:
        return sorted(self._shards)

    def collection_exists(self, name: str) -> bool:
        return self._aliases.get(name, name) in self._shards

    def set_alias(self, alias: str, collection: str) -> None:
        check_name(alias)
        with self._lock:
            self._check_open()
            if collection not in self._shards:
                raise CollectionNotFound(collection)
            if alias in self._shards:
                raise ValueError(f"{alias!r} is a collection and cannot also be an alias")
            if self._aliases.get(alias) == collection:
                return
            self._save_aliases({**self._aliases, alias: collection})

    def _save_aliases(self, aliases: dict[str, str]) -> None:
        """Disk first, then memory: a reader never sees an alias that would not survive."""
        _write_json_atomically(self._root / _ALIASES_FILE, aliases)
        self._aliases = aliases

    def resolve(self, name: str) -> str:
        target = self._aliases.get(name, name)
        if target not in self._shards:
            raise CollectionNotFound(name)
        return target

    def _shard(self, name: str) -> _Shard:
        shard = self._shards.get(self._aliases.get(name, name))
        if shard is None:
            raise CollectionNotFound(name)
        return shard

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("the vector store is closed")

    # -- points -----------------------------------------------------------------------

    def upsert(self, collection: str, records: Sequence[VectorRecord]) -> None:
        if not records:
            return
        with self._lock:
            self._check_open()
            shard = self._shard(collection)
            points = [
                qe.Point(point_id(r.id), _as_list(r.vector, shard.dim), _stored_payload(r))
                for r in records
            ]
            shard.engine.update(qe.UpdateOperation.upsert_points(points))
            self._flush_when_due(shard)

    def delete(self, collection: str, ids: Sequence[str]) -> None:
        if not ids:
            return
        with self._lock:
            self._check_open()
            shard = self._shard(collection)
            shard.engine.update(qe.UpdateOperation.delete_points([point_id(i) for i in ids]))
            self._flush_when_due(shard)

    def _flush_when_due(self, shard: _Shard) -> None:
        now = time.monotonic()
        if now - shard.flushed_at >= self._flush_interval_s:
            shard.engine.flush()
            shard.flushed_at = now

    def retrieve(
        self, collection: str, ids: Sequence[str], with_vectors: bool = True
    ) -> list[VectorRecord]:
        if not ids:
            return []
        shard = self._shard(collection)
        found = self._read(
            collection,
            lambda: shard.engine.retrieve([point_id(i) for i in ids], True, with_vectors),
        )
        return ordered_records(found, ids, with_vectors)

    def search(
        self,
        collection: str,
        vector: np.ndarray,
        limit: int,
        query_filter: Filter | None = None,
        exclude_ids: Collection[str] = (),
    ) -> list[SearchHit]:
        if limit <= 0:
            return []
        shard = self._shard(collection)

        @functools.cache
        def indexed() -> bool:
            return self._read(collection, lambda: shard.engine.info().indexed_vectors_count) > 0

        # Beside a payload filter on HNSW segments, an exclusion in the filter makes the
        # planner leave the filtered HNSW path (1M items, category filter: 6.8 ms against
        # 2.4 ms), so a short exclusion list is then dropped from a slightly longer result
        # instead; the top limit + |excluded| always holds the top ``limit`` of the rest.
        # Otherwise it is a keyword match on the indexed string id (module docstring).
        post_filter = (
            query_filter is not None
            and not query_filter.is_empty()
            and 0 < len(exclude_ids) <= self._post_filter_max
            and indexed()
        )
        wanted = limit + len(exclude_ids) if post_filter else limit
        query = qe.Query.Nearest(_as_list(vector, shard.dim))
        edge_filter = _edge_filter(query_filter, () if post_filter else exclude_ids)
        hnsw_ef = max(self._hnsw_ef, wanted)

        def run(params: qe.SearchParams) -> list[Any]:
            request = qe.QueryRequest(
                limit=wanted,
                query=query,
                filter=edge_filter,
                with_payload=True,
                with_vector=False,
                params=params,
            )
            return self._read(collection, lambda: shard.engine.query(request))

        hits = run(qe.SearchParams(hnsw_ef=hnsw_ef))
        if len(hits) < wanted and edge_filter is not None and indexed():
            for mode in RETRY_MODES:  # see recsys.vectorstore.short_results
                SHORT_RESULT_RETRIES.labels("edge", mode).inc()
                hits = run(_retry_params(mode, hnsw_ef))
                if len(hits) >= wanted:
                    break
        excluded: Collection[str] = ()
        if post_filter:
            excluded = exclude_ids if isinstance(exclude_ids, set | frozenset) else set(exclude_ids)
        out = []
        for hit in hits:
            payload = dict(hit.payload or {})
            item_id = str(payload.pop(ID_KEY))
            if item_id in excluded:
                continue
            out.append(SearchHit(item_id, float(hit.score), payload))
            if len(out) == limit:
                break
        return out

    def dimension(self, collection: str) -> int:
        return self._shard(collection).dim

    def count(self, collection: str) -> int:
        shard = self._shard(collection)
        return self._read(collection, lambda: shard.engine.count(qe.CountRequest(exact=True)))

    def optimize(self, collection: str) -> None:
        """Build HNSW segments now rather than leave a bulk load to brute force.

        Blocks the whole process while it runs (the binding keeps the GIL): call it on a
        new versioned collection before its alias flips, not on the serving one.
        """
        with self._lock:
            self._check_open()
            shard = self._shard(collection)
            shard.engine.optimize()
            shard.engine.flush()

    def indexed_vectors(self, collection: str) -> int:
        """Vectors covered by HNSW; 0 means every query on it is a full scan."""
        shard = self._shard(collection)
        return self._read(collection, lambda: shard.engine.info().indexed_vectors_count)

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            shards, self._shards = self._shards, {}
            for shard in shards.values():
                _close_engine(shard.engine)

    def _read(self, name: str, call: Callable[[], _T]) -> _T:
        """Runs a read; a shard dropped or closed under it reads as CollectionNotFound."""
        try:
            return call()
        except Exception as exc:
            if self._aliases.get(name, name) not in self._shards:
                raise CollectionNotFound(name) from exc
            raise


def _close_engine(engine: qe.EdgeShard, flush: bool = True, attempts: int = 200) -> None:
    """Flush and close, waiting out a read still running in another thread (the binding
    refuses with "Already borrowed" rather than block)."""
    for attempt in range(attempts):
        try:
            if flush:
                engine.flush()
            engine.close()
            return
        except RuntimeError as exc:
            if "borrow" not in str(exc) or attempt == attempts - 1:
                raise
            time.sleep(0.01)


def _retry_params(mode: RetryMode, hnsw_ef: int) -> qe.SearchParams:
    if mode == "acorn":
        # max_selectivity 1.0: ACORN whatever share of the points the filter keeps.
        return qe.SearchParams(
            hnsw_ef=hnsw_ef, acorn=qe.AcornSearchParams(enable=True, max_selectivity=1.0)
        )
    return qe.SearchParams(exact=True)


def _as_list(vector: np.ndarray, dim: int) -> list[float]:
    arr = np.asarray(vector, dtype=np.float32)
    if arr.shape != (dim,):
        raise ValueError(f"expected a vector of shape ({dim},), got {arr.shape}")
    values: list[float] = arr.tolist()
    return values


def _stored_payload(record: VectorRecord) -> dict[str, Any]:
    check_payload(record.payload)
    return {**record.payload, ID_KEY: record.id}


def _edge_filter(flt: Filter | None, exclude_ids: Collection[str]) -> qe.Filter | None:
    must: list[Any] = []
    must_not: list[Any] = []
    if flt is not None:
        for key, values in flt.any_of.items():
            must.append(qe.FieldCondition(key, match=qe.MatchAny([str(v) for v in values])))
        for key, values in flt.none_of.items():
            if values:
                must_not.append(qe.FieldCondition(key, match=qe.MatchAny([str(v) for v in values])))
        for key, rng in flt.ranges.items():
            must.append(qe.FieldCondition(key, range=qe.RangeFloat(gte=rng.gte, lte=rng.lte)))
        for key, value in flt.equals.items():
            # A plain bool would reach the engine as the integer 1 or 0 (see module doc).
            match = qe.MatchValue(cast(bool, np.bool_(value)) if isinstance(value, bool) else value)
            must.append(qe.FieldCondition(key, match=match))
    if exclude_ids:
        # In the filter, not after it: excluded points must not use up the limit. Matched
        # on the indexed string id: a has-id condition needs a UUID object per id on the
        # way in, and over-fetching then dropping them needs one per hit on the way out.
        must_not.append(qe.FieldCondition(ID_KEY, match=qe.MatchAny(list(exclude_ids))))
    if not must and not must_not:
        return None
    return qe.Filter(must=must or None, must_not=must_not or None)
