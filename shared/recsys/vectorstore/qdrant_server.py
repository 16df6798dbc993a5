"""The server backend: a Qdrant server (compose, Kubernetes) through ``qdrant-client``.

Tested against ``QdrantClient(":memory:")``, whose local mode speaks the same API with
exact search. Names are passed to Qdrant as given, so the server resolves aliases itself
and a search costs one round trip.

Local mode is not thread-safe (a search racing an upsert fails with IndexError), so calls
go through a readers-writer lock: reads run concurrently, a write runs alone. Against a
server this costs nothing where it matters, since the indexer writes from its own
process and a ranking replica only reads.
"""

from __future__ import annotations

import threading
from collections.abc import Collection, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
from qdrant_client import QdrantClient, models
from qdrant_client.http.exceptions import UnexpectedResponse

from recsys.vectorstore.base import CollectionNotFound, Filter, SearchHit, VectorRecord
from recsys.vectorstore.edge import (
    ID_KEY,
    check_name,
    check_payload,
    ordered_records,
    point_id,
)
from recsys.vectorstore.short_results import RETRY_MODES, SHORT_RESULT_RETRIES, RetryMode


class QdrantServerStore:
    """Same contract as the embedded store; the server does the locking and indexing."""

    def __init__(self, client: QdrantClient, hnsw_ef: int | None = None) -> None:
        """``hnsw_ef`` None leaves the server's own default (and keeps local mode quiet)."""
        self._client = client
        self._hnsw_ef = hnsw_ef
        self._lock = _ReadWriteLock()

    # -- collections and aliases ------------------------------------------------------

    def create_collection(self, name: str, dim: int, keyword_fields: Sequence[str] = ()) -> None:
        check_name(name)
        if dim < 1:
            raise ValueError(f"dim must be positive, got {dim}")
        with self._lock.write():
            self._create_collection(name, dim, keyword_fields)

    def _create_collection(self, name: str, dim: int, keyword_fields: Sequence[str]) -> None:
        if name in self._aliases():
            raise ValueError(f"{name!r} is an alias, not a collection")
        if name in self._collections():
            info = self._client.get_collection(name)
            params = info.config.params.vectors
            size = params.size if isinstance(params, models.VectorParams) else None
            if size != dim:
                raise ValueError(f"collection {name!r} exists with dim {size}, not {dim}")
            present = set(info.payload_schema)
        else:
            self._client.create_collection(
                name, vectors_config=models.VectorParams(size=dim, distance=models.Distance.COSINE)
            )
            present = set()
        for field_name in keyword_fields:
            if field_name not in present:
                self._client.create_payload_index(
                    name, field_name, models.PayloadSchemaType.KEYWORD, wait=True
                )

    def drop_collection(self, name: str) -> None:
        with self._lock.write():
            if name in self._aliases():
                raise ValueError(f"{name!r} is an alias; drop the collection it points to")
            if name not in self._collections():
                return
            # Qdrant removes the collection's aliases with it, as the embedded store does.
            self._client.delete_collection(name)

    def list_collections(self) -> list[str]:
        with self._lock.read():
            return self._collections()

    def collection_exists(self, name: str) -> bool:
        with self._lock.read():
            return self._aliases().get(name, name) in self._collections()

    def set_alias(self, alias: str, collection: str) -> None:
        check_name(alias)
        with self._lock.write():
            self._set_alias(alias, collection)

    def _set_alias(self, alias: str, collection: str) -> None:
        collections = self._collections()
        if collection not in collections:
            raise CollectionNotFound(collection)
        if alias in collections:
            raise ValueError(f"{alias!r} is a collection and cannot also be an alias")
        current = self._aliases().get(alias)
        if current == collection:
            return
        ops: list[
            models.CreateAliasOperation | models.DeleteAliasOperation | models.RenameAliasOperation
        ] = []
        if current is not None:
            ops.append(
                models.DeleteAliasOperation(delete_alias=models.DeleteAlias(alias_name=alias))
            )
        ops.append(
            models.CreateAliasOperation(
                create_alias=models.CreateAlias(collection_name=collection, alias_name=alias)
            )
        )
        # One request: the server applies delete + create atomically.
        self._client.update_collection_aliases(change_aliases_operations=ops)

    def resolve(self, name: str) -> str:
        with self._lock.read():
            target = self._aliases().get(name, name)
            if target not in self._collections():
                raise CollectionNotFound(name)
            return target

    def _collections(self) -> list[str]:
        return sorted(c.name for c in self._client.get_collections().collections)

    def _aliases(self) -> dict[str, str]:
        return {a.alias_name: a.collection_name for a in self._client.get_aliases().aliases}

    # -- points -----------------------------------------------------------------------

    def upsert(self, collection: str, records: Sequence[VectorRecord]) -> None:
        if not records:
            return
        points = []
        for r in records:
            check_payload(r.payload)
            points.append(
                models.PointStruct(
                    id=str(point_id(r.id)),
                    vector=_as_list(r.vector),
                    payload={**r.payload, ID_KEY: r.id},
                )
            )
        with self._lock.write(), _not_found(collection):
            self._client.upsert(collection, points=points, wait=True)

    def delete(self, collection: str, ids: Sequence[str]) -> None:
        if not ids:
            return
        selector = models.PointIdsList(points=[str(point_id(i)) for i in ids])
        with self._lock.write(), _not_found(collection):
            self._client.delete(collection, points_selector=selector, wait=True)

    def retrieve(
        self, collection: str, ids: Sequence[str], with_vectors: bool = True
    ) -> list[VectorRecord]:
        if not ids:
            return []
        with self._lock.read(), _not_found(collection):
            found = self._client.retrieve(
                collection,
                ids=[str(point_id(i)) for i in ids],
                with_payload=True,
                with_vectors=with_vectors,
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
        hnsw_ef = None if self._hnsw_ef is None else max(self._hnsw_ef, limit)
        query = _as_list(vector)
        server_filter = _server_filter(query_filter, exclude_ids)

        def run(params: models.SearchParams | None) -> list[models.ScoredPoint]:
            with self._lock.read(), _not_found(collection):
                return self._client.query_points(
                    collection,
                    query=query,
                    limit=limit,
                    query_filter=server_filter,
                    search_params=params,
                    with_payload=True,
                    with_vectors=False,
                ).points

        points = run(None if hnsw_ef is None else models.SearchParams(hnsw_ef=hnsw_ef))
        if len(points) < limit and server_filter is not None:
            # Unlike the embedded store, no cheap look at whether HNSW answered: a result
            # short because few points match costs two more round trips.
            for mode in RETRY_MODES:  # see recsys.vectorstore.short_results
                SHORT_RESULT_RETRIES.labels("server", mode).inc()
                points = run(_retry_params(mode, hnsw_ef))
                if len(points) >= limit:
                    break
        hits = []
        for point in points:
            payload = dict(point.payload or {})
            hits.append(SearchHit(str(payload.pop(ID_KEY)), float(point.score), payload))
        return hits

    def count(self, collection: str) -> int:
        with self._lock.read(), _not_found(collection):
            return self._client.count(collection, exact=True).count

    def dimension(self, collection: str) -> int:
        with self._lock.read(), _not_found(collection):
            params = self._client.get_collection(collection).config.params.vectors
        if not isinstance(params, models.VectorParams):
            raise ValueError(f"collection {collection!r} has no single unnamed vector")
        return int(params.size)

    def optimize(self, collection: str) -> None:
        """A no-op: the server builds HNSW in the background as segments fill."""
        self.resolve(collection)

    def close(self) -> None:
        with self._lock.write():
            self._client.close()


class _ReadWriteLock:
    """Many readers or one writer; a waiting writer holds off new readers."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._readers = 0
        self._writing = False
        self._writers_waiting = 0

    @contextmanager
    def read(self) -> Iterator[None]:
        with self._cond:
            self._cond.wait_for(lambda: not self._writing and not self._writers_waiting)
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                if not self._readers:
                    self._cond.notify_all()

    @contextmanager
    def write(self) -> Iterator[None]:
        with self._cond:
            self._writers_waiting += 1
            try:
                self._cond.wait_for(lambda: not self._writing and not self._readers)
            finally:
                self._writers_waiting -= 1
            self._writing = True
        try:
            yield
        finally:
            with self._cond:
                self._writing = False
                self._cond.notify_all()


@contextmanager
def _not_found(name: str) -> Iterator[None]:
    """Both client modes say 'no such collection' differently; callers get one exception."""
    try:
        yield
    except UnexpectedResponse as exc:
        if exc.status_code == 404:
            raise CollectionNotFound(name) from exc
        raise
    except ValueError as exc:  # local mode: "Collection <name> not found"
        if "not found" in str(exc):
            raise CollectionNotFound(name) from exc
        raise


def _as_list(vector: np.ndarray) -> list[float]:
    arr = np.asarray(vector, dtype=np.float32)
    if arr.ndim != 1:
        raise ValueError(f"expected a 1-d vector, got shape {arr.shape}")
    values: list[float] = arr.tolist()
    return values


def _retry_params(mode: RetryMode, hnsw_ef: int | None) -> models.SearchParams:
    if mode == "acorn":
        # max_selectivity 1.0: ACORN whatever share of the points the filter keeps.
        return models.SearchParams(
            hnsw_ef=hnsw_ef, acorn=models.AcornSearchParams(enable=True, max_selectivity=1.0)
        )
    return models.SearchParams(exact=True)


def _server_filter(flt: Filter | None, exclude_ids: Collection[str]) -> models.Filter | None:
    must: list[Any] = []
    must_not: list[Any] = []
    if flt is not None:
        for key, values in flt.any_of.items():
            must.append(
                models.FieldCondition(key=key, match=models.MatchAny(any=[str(v) for v in values]))
            )
        for key, values in flt.none_of.items():
            if values:
                must_not.append(
                    models.FieldCondition(
                        key=key, match=models.MatchAny(any=[str(v) for v in values])
                    )
                )
        for key, rng in flt.ranges.items():
            must.append(
                models.FieldCondition(key=key, range=models.Range(gte=rng.gte, lte=rng.lte))
            )
        for key, value in flt.equals.items():
            must.append(models.FieldCondition(key=key, match=models.MatchValue(value=value)))
    if exclude_ids:
        # In the filter, not after it: excluded points must not use up the limit.
        must_not.append(models.HasIdCondition(has_id=[str(point_id(i)) for i in exclude_ids]))
    if not must and not must_not:
        return None
    return models.Filter(must=must or None, must_not=must_not or None)
