"""The gRPC ranking server: ``RankingService.Recommend`` over a vector store.

Data comes only through the ``VectorStore`` interface:

* the alias ``items`` (``RankingSettings.items_alias``) points at ``items_<version>``; the
  part after ``items_`` is the serving model version, re-resolved at most once a second;
* ``users`` holds one record per user: its vector and ``{"model_version",
  "seen_item_ids", ...}``;
* the popularity fallback comes from the serving version's artifact (``popularity.py``).

A user whose vector was made by the serving version gets a nearest-neighbour search in
that version's item collection, minus the items already seen. Anyone else gets the
version's popular items (``fallback=true`` with the reason). No alias yet means no model
serves: calls fail with UNAVAILABLE and the health status of the service is NOT_SERVING
until the alias appears.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ParamSpec, TypeVar

import grpc
import numpy as np
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import Counter, Gauge, Histogram

from recsys.logs import correlation_id
from recsys.v1 import ranking_pb2, ranking_pb2_grpc
from recsys.vectorstore.base import CollectionNotFound, VectorRecord, VectorStore
from services.ranking.popularity import (
    PopularityCache,
    PopularityUnavailable,
    item_details,
    top_popular,
)
from services.ranking.settings import RankingSettings

log = logging.getLogger(__name__)

SERVICE_NAME: str = ranking_pb2.DESCRIPTOR.services_by_name["RankingService"].full_name
MAX_USER_ID_CHARS = 256
REQUEST_ID_KEY = "x-request-id"
# A caller's request id is echoed only if it is this short and printable.
_MAX_REQUEST_ID_CHARS = 128

T = TypeVar("T")
P = ParamSpec("P")

REQUESTS = Counter(
    "recsys_ranking_requests_total",
    "gRPC calls answered, by method and status code",
    ["method", "code"],
)
LATENCY = Histogram(
    "recsys_ranking_request_seconds",
    "gRPC call duration in the server, by method",
    ["method"],
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)
FALLBACKS = Counter(
    "recsys_ranking_fallbacks_total",
    "Recommend answers from the popularity fallback, by cause",
    ["cause"],
)
MODEL_SERVING = Gauge(
    "recsys_ranking_model_serving", "1 while a model version serves (the items alias exists)"
)


class RpcError(Exception):
    """A call's failure, answered with ``code`` and ``message``."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass
class ServingVersion:
    """The serving model version, read from the items alias and trusted for a while."""

    store: VectorStore
    alias: str
    ttl_s: float
    on_change: Callable[[str | None], Awaitable[None]] | None = None
    _version: str | None = None
    _checked_at: float = -1e18
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    @property
    def prefix(self) -> str:
        return f"{self.alias}_"

    def collection(self, version: str) -> str:
        return f"{self.prefix}{version}"

    @property
    def cached(self) -> str | None:
        return self._version

    async def get(self) -> str | None:
        """The serving version, or None while the alias does not exist."""
        if time.monotonic() - self._checked_at < self.ttl_s:
            return self._version
        return await self.refresh()

    async def refresh(self) -> str | None:
        async with self._lock:
            if time.monotonic() - self._checked_at < self.ttl_s * 0.5:
                return self._version  # another caller has just refreshed it
            version = await asyncio.to_thread(self._resolve)
            self._checked_at = time.monotonic()
            if version != self._version:
                log.info(
                    "serving model version changed",
                    extra={"previous": self._version, "version": version},
                )
                self._version = version
                MODEL_SERVING.set(0 if version is None else 1)
                if self.on_change is not None:
                    await self.on_change(version)
            return version

    def invalidate(self) -> None:
        self._checked_at = -1e18

    def _resolve(self) -> str | None:
        try:
            target = self.store.resolve(self.alias)
        except CollectionNotFound:
            return None
        if not target.startswith(self.prefix) or target == self.prefix:
            # A plain collection named like the alias carries no version: not a model.
            log.warning(
                "items alias does not point at a versioned collection",
                extra={"alias": self.alias, "target": target},
            )
            return None
        return target[len(self.prefix) :]


@dataclass(frozen=True)
class UserState:
    vector: np.ndarray
    model_version: str
    seen_item_ids: frozenset[str]


def _user_state(record: VectorRecord) -> UserState:
    payload = record.payload
    seen = payload.get("seen_item_ids") or ()
    if isinstance(seen, str):
        seen = (seen,)
    version = payload.get("model_version")
    return UserState(
        vector=np.asarray(record.vector, dtype=np.float32),
        model_version="" if version is None else str(version),
        seen_item_ids=frozenset(str(i) for i in seen),
    )


def validate(request: ranking_pb2.RecommendRequest, max_k: int) -> None:
    if not request.user_id:
        raise RpcError(
            grpc.StatusCode.INVALID_ARGUMENT,
            "user_id is empty: set it to the id of the user to recommend for",
        )
    if len(request.user_id) > MAX_USER_ID_CHARS:
        raise RpcError(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"user_id is {len(request.user_id)} characters long: use at most {MAX_USER_ID_CHARS}",
        )
    if not 1 <= request.k <= max_k:
        raise RpcError(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"k is {request.k}: ask for between 1 and {max_k} items",
        )


def inline_store_calls(settings: RankingSettings) -> bool:
    """Whether per-request store reads run on the event loop (see ``store_calls``)."""
    if settings.store_calls == "auto":
        return settings.store.backend == "edge"
    return settings.store_calls == "inline"


def _request_id(context: grpc.aio.ServicerContext) -> str:
    for key, value in context.invocation_metadata() or ():
        if key == REQUEST_ID_KEY and isinstance(value, str):
            value = value.strip()
            if 0 < len(value) <= _MAX_REQUEST_ID_CHARS and value.isprintable():
                return value
    return uuid.uuid4().hex


class RankingServicer(ranking_pb2_grpc.RankingServiceServicer):  # type: ignore[misc]
    """Answers ``Recommend`` from ``store``; see the module docstring for the flow.

    ``serving`` tracks the items alias; ``popularity`` supplies the fallback.
    """

    def __init__(
        self,
        settings: RankingSettings,
        store: VectorStore,
        serving: ServingVersion | None = None,
        popularity: PopularityCache | None = None,
    ) -> None:
        self._settings = settings
        self._store = store
        self.serving = serving or ServingVersion(
            store, settings.items_alias, settings.alias_refresh_seconds
        )
        self.popularity = popularity or PopularityCache(
            store, settings.artifacts, settings.popular_depth
        )
        self.inline_store_calls = inline_store_calls(settings)

    async def _store_call(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """A per-request store read: inline on the event loop or in a worker thread."""
        if self.inline_store_calls:
            return fn(*args, **kwargs)
        return await asyncio.to_thread(fn, *args, **kwargs)

    async def Recommend(
        self, request: ranking_pb2.RecommendRequest, context: grpc.aio.ServicerContext
    ) -> ranking_pb2.RecommendResponse:
        return await self._observe("Recommend", request, context, self._recommend)

    async def _observe(
        self,
        method: str,
        request: Any,
        context: grpc.aio.ServicerContext,
        handler: Callable[[Any, str, dict[str, Any]], Awaitable[T]],
    ) -> T:
        """Run ``handler`` with a request id, one log line, metrics and error mapping."""
        request_id = _request_id(context)
        token = correlation_id.set(request_id)
        started = time.perf_counter()
        details: dict[str, Any] = {}
        code = grpc.StatusCode.OK
        message = ""
        trailer = ((REQUEST_ID_KEY, request_id),)
        try:
            response = await handler(request, request_id, details)
            context.set_trailing_metadata(trailer)
            return response
        except RpcError as exc:
            code, message = exc.code, exc.message
        except asyncio.CancelledError:
            code, message = grpc.StatusCode.CANCELLED, "cancelled by the client or shutdown"
            raise
        except Exception:
            code = grpc.StatusCode.INTERNAL
            message = f"internal error; quote request id {request_id} when reporting it"
            log.exception("request failed", extra={"method": method})
        finally:
            elapsed = time.perf_counter() - started
            REQUESTS.labels(method, code.name).inc()
            LATENCY.labels(method).observe(elapsed)
            level = logging.INFO if code in _EXPECTED_CODES else logging.WARNING
            log.log(
                level,
                "request",
                extra={
                    "method": method,
                    "code": code.name,
                    "duration_ms": round(elapsed * 1000, 3),
                    **({"error": message} if message else {}),
                    **details,
                },
            )
            correlation_id.reset(token)
        await context.abort(code, message, trailing_metadata=trailer)
        raise AssertionError("unreachable: abort raises")  # pragma: no cover

    async def _recommend(
        self, request: ranking_pb2.RecommendRequest, request_id: str, details: dict[str, Any]
    ) -> ranking_pb2.RecommendResponse:
        details.update(user_id=request.user_id[:MAX_USER_ID_CHARS], k=request.k)
        validate(request, self._settings.max_k)
        for attempt in range(2):
            version = await self._serving_version()
            try:
                response = await self._rank(request, version)
            except CollectionNotFound:
                # The alias moved on and the old collection is gone: resolve again once.
                if attempt:
                    raise
                self.serving.invalidate()
                continue
            response.request_id = request_id
            details.update(
                model_version=response.model_version,
                items=len(response.items),
                fallback=response.fallback,
            )
            return response
        raise AssertionError("unreachable")  # pragma: no cover

    async def _serving_version(self) -> str:
        try:
            version = await self.serving.get()
        except Exception as exc:
            log.exception("cannot resolve the serving model")
            raise RpcError(grpc.StatusCode.UNAVAILABLE, f"vector store unavailable: {exc}") from exc
        if version is None:
            raise RpcError(grpc.StatusCode.UNAVAILABLE, "no model is serving yet")
        return version

    async def _rank(
        self, request: ranking_pb2.RecommendRequest, version: str
    ) -> ranking_pb2.RecommendResponse:
        collection = self.serving.collection(version)
        user = await self._user(request.user_id)
        if user is None:
            return await self._popular(
                version,
                collection,
                request.k,
                frozenset(),
                "unknown",
                "unknown user: most popular items",
            )
        if user.model_version != version or user.vector.size == 0:
            reason = (
                f"user vector is from model version {user.model_version or '(none)'}, "
                f"serving {version}: most popular items not yet seen"
            )
            return await self._popular(
                version, collection, request.k, user.seen_item_ids, "version_mismatch", reason
            )
        hits = await self._store_call(
            self._store.search,
            collection,
            user.vector,
            request.k,
            exclude_ids=user.seen_item_ids,
        )
        items = []
        for hit in hits:
            title, categories = item_details(hit.payload)
            items.append(
                ranking_pb2.ScoredItem(
                    item_id=str(hit.payload.get("item_id", hit.id)),
                    score=hit.score,
                    title=title,
                    categories=categories,
                )
            )
        return ranking_pb2.RecommendResponse(items=items, model_version=version)

    async def _user(self, user_id: str) -> UserState | None:
        try:
            records = await self._store_call(
                self._store.retrieve, self._settings.users_collection, [user_id]
            )
        except CollectionNotFound:
            return None  # no user vector written yet: everyone is unknown
        return _user_state(records[0]) if records else None

    async def _popular(
        self,
        version: str,
        collection: str,
        k: int,
        exclude: frozenset[str],
        cause: str,
        reason: str,
    ) -> ranking_pb2.RecommendResponse:
        FALLBACKS.labels(cause).inc()
        try:
            popular = await self.popularity.get(version, collection)
        except PopularityUnavailable:
            popular = []
            reason = f"{reason} (none: the popularity artifact of {version} is missing)"
        items = [
            ranking_pb2.ScoredItem(
                item_id=p.item_id, score=p.score, title=p.title, categories=p.categories
            )
            for p in top_popular(popular, k, exclude)
        ]
        return ranking_pb2.RecommendResponse(
            items=items, model_version=version, fallback=True, fallback_reason=reason
        )


_EXPECTED_CODES = frozenset(
    {grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.CANCELLED}
)


@dataclass
class RunningServer:
    """A started ranking server; ``stop`` drains in-flight calls then ends it."""

    server: grpc.aio.Server
    port: int
    servicer: RankingServicer
    health: health.aio.HealthServicer
    grace_seconds: float
    _watcher: asyncio.Task[None]

    @property
    def model_serving(self) -> bool:
        """True while a model version serves (for readiness probes)."""
        return self.servicer.serving.cached is not None

    async def stop(self, grace: float | None = None) -> None:
        """Report NOT_SERVING, refuse new calls, let in-flight ones finish within grace."""
        grace = self.grace_seconds if grace is None else grace
        log.info("ranking server stopping", extra={"grace_s": grace})
        self._watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._watcher
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace)
        log.info("ranking server stopped")

    async def wait(self) -> None:
        await self.server.wait_for_termination()


async def _watch_alias(serving: ServingVersion, period_s: float) -> None:
    """Keep the serving version (and so the health status) fresh without traffic."""
    while True:
        try:
            await serving.refresh()
        except Exception:
            log.exception("cannot resolve the serving model")
        await asyncio.sleep(period_s)


async def serve(
    settings: RankingSettings,
    store: VectorStore,
    *,
    interceptors: Sequence[grpc.aio.ServerInterceptor] = (),
) -> RunningServer:
    """Start the ranking server on ``settings.host:settings.port`` (0 = a free port).

    Health checking (``grpc.health.v1``: "" SERVING once started, ``recsys.v1.RankingService``
    SERVING only while a model serves) and server reflection are on.
    """
    health_servicer = health.aio.HealthServicer()
    popularity = PopularityCache(store, settings.artifacts, settings.popular_depth)

    async def on_change(version: str | None) -> None:
        status = (
            health_pb2.HealthCheckResponse.NOT_SERVING
            if version is None
            else health_pb2.HealthCheckResponse.SERVING
        )
        await health_servicer.set(SERVICE_NAME, status)
        if version is not None:
            # Warm the fallback so the first unknown user of a new version does not wait.
            with contextlib.suppress(PopularityUnavailable, CollectionNotFound):
                await popularity.get(version, serving.collection(version))

    serving = ServingVersion(
        store, settings.items_alias, settings.alias_refresh_seconds, on_change=on_change
    )
    servicer = RankingServicer(settings, store, serving=serving, popularity=popularity)
    server = grpc.aio.server(
        interceptors=list(interceptors),
        maximum_concurrent_rpcs=settings.max_concurrent_rpcs or None,
        options=[("grpc.so_reuseport", 0)],
    )
    ranking_pb2_grpc.add_RankingServiceServicer_to_server(servicer, server)  # type: ignore[no-untyped-call]
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server
    )
    address = f"{settings.host}:{settings.port}"
    port = server.add_insecure_port(address)
    if port == 0:
        raise RuntimeError(f"cannot bind the gRPC server to {address}")
    await health_servicer.set(SERVICE_NAME, health_pb2.HealthCheckResponse.NOT_SERVING)
    await server.start()
    await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    watcher = asyncio.create_task(
        _watch_alias(serving, settings.alias_refresh_seconds), name="ranking-alias-watch"
    )
    log.info(
        "ranking server listening",
        extra={"address": f"{settings.host}:{port}", "grpc_service": SERVICE_NAME},
    )
    return RunningServer(
        server=server,
        port=port,
        servicer=servicer,
        health=health_servicer,
        grace_seconds=settings.grace_seconds,
        _watcher=watcher,
    )
