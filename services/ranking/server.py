"""The gRPC ranking server: ``RankingService.Recommend`` over a vector store.

Data comes only through the ``VectorStore`` interface:

* the alias ``items`` (``RankingSettings.items_alias``) points at ``items_<version>``; the
  part after ``items_`` is the serving model version, re-resolved at most once a second;
* ``users`` holds one record per user: its vector and ``{"model_version", ...}`` with
  the seen and recent items (``recsys.vectorstore.user_payload``);
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
from dataclasses import dataclass, field, replace
from typing import Any, ParamSpec, TypeVar

import grpc
import numpy as np
from google.protobuf.message import DecodeError
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import Counter, Gauge, Histogram

from recsys.events import EVENT_TYPES
from recsys.logs import correlation_id
from recsys.v1 import ranking_pb2, ranking_pb2_grpc
from recsys.vectorstore.base import CollectionNotFound, VectorRecord, VectorStore
from recsys.vectorstore.user_payload import read_history
from services.ranking import auth, requests
from services.ranking.embedder import Embedder, EmbedUnavailable
from services.ranking.popularity import (
    PopularItem,
    PopularityCache,
    PopularityUnavailable,
    item_details,
)
from services.ranking.ranker import (
    Candidate,
    HistoryItem,
    Ranked,
    Reason,
    closest_in_history,
    pool_size,
    select,
)
from services.ranking.settings import RankingSettings
from services.ranking.trending import TrendingSource

log = logging.getLogger(__name__)

SERVICE_NAME: str = ranking_pb2.DESCRIPTOR.services_by_name["RankingService"].full_name
MAX_USER_ID_CHARS = 256
REQUEST_ID_KEY = "x-request-id"
# A caller's request id is echoed only if it is this short and printable.
_MAX_REQUEST_ID_CHARS = 128

T = TypeVar("T")
Response = TypeVar("Response", ranking_pb2.RecommendResponse, ranking_pb2.BatchRecommendResponse)
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
REENCODED = Counter(
    "recsys_ranking_reencoded_users_total",
    "users re-encoded through Embed because their stored vector is from another model",
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
    recent_item_ids: tuple[str, ...] = ()
    recent_event_types: tuple[str, ...] = ()

    def recent_events(self) -> list[requests.SessionEvent]:
        """The recent interactions as Embed input (views where a type is not known)."""
        types = self.recent_event_types
        if len(types) != len(self.recent_item_ids):
            types = ("view",) * len(self.recent_item_ids)
        return [
            requests.SessionEvent(item_id, event_type if event_type in EVENT_TYPES else "view")
            for item_id, event_type in zip(self.recent_item_ids, types, strict=True)
        ]


def _user_state(record: VectorRecord) -> UserState:
    payload = record.payload
    version = payload.get("model_version")
    history = read_history(payload)
    return UserState(
        vector=np.asarray(record.vector, dtype=np.float32),
        model_version="" if version is None else str(version),
        seen_item_ids=frozenset(history.seen_item_ids),
        recent_item_ids=history.recent_item_ids,
        recent_event_types=history.recent_event_types,
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


def _time_left(context: grpc.aio.ServicerContext) -> float | None:
    remaining = context.time_remaining()
    return None if remaining is None else float(remaining)


@dataclass(frozen=True)
class Ranking:
    """One ranked list before it becomes a response."""

    chosen: Sequence[Ranked]
    model_version: str
    fallback: bool = False
    fallback_reason: str = ""
    explain: bool = False
    reasons: Sequence[Reason | None] | None = None

    def fill(self, items: Any) -> None:
        """Append the list to a response's repeated ``ScoredItem`` field (built in place:
        messages passed to a constructor are copied)."""
        add = items.add
        for index, ranked in enumerate(self.chosen):
            candidate = ranked.candidate
            title, categories = candidate.details
            item = add(
                item_id=candidate.item_id, score=ranked.score, title=title, categories=categories
            )
            if self.explain:
                reason = self.reasons[index] if self.reasons is not None else None
                item.explanation.relevance = candidate.relevance
                item.explanation.diversity_penalty = ranked.penalty
                if reason is not None:
                    item.explanation.closest_history_item_id = reason.item_id
                    item.explanation.closest_history_title = reason.title
                    item.explanation.history_similarity = reason.similarity

    def response(self, request_id: str) -> ranking_pb2.RecommendResponse:
        response = ranking_pb2.RecommendResponse(
            model_version=self.model_version,
            fallback=self.fallback,
            fallback_reason=self.fallback_reason,
            request_id=request_id,
        )
        self.fill(response.items)
        return response


class RankingServicer(ranking_pb2_grpc.RankingServiceServicer):  # type: ignore[misc]
    """Answers every ``RankingService`` method from ``store``; see the module docstring.

    ``serving`` tracks the items alias, ``popularity`` supplies popular lists and the
    fallback, ``embedder`` encodes anonymous sessions through inference, ``trending``
    (optional) supplies the windowed popularity of ``Popular``.
    """

    def __init__(
        self,
        settings: RankingSettings,
        store: VectorStore,
        serving: ServingVersion | None = None,
        popularity: PopularityCache | None = None,
        embedder: Embedder | None = None,
        trending: TrendingSource | None = None,
    ) -> None:
        self._settings = settings
        self._store = store
        self._limits = requests.Limits(settings.max_k, settings.max_batch_users)
        self.serving = serving or ServingVersion(
            store, settings.items_alias, settings.alias_refresh_seconds
        )
        self.popularity = popularity or PopularityCache(
            store, settings.artifacts, settings.popular_depth
        )
        self.embedder = embedder or Embedder(settings.inference_target, settings.embed_timeout_s)
        self.trending = trending
        self.inline_store_calls = inline_store_calls(settings)

    async def _store_call(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """A per-request store read: inline on the event loop or in a worker thread."""
        if self.inline_store_calls:
            return fn(*args, **kwargs)
        return await asyncio.to_thread(fn, *args, **kwargs)

    # -- the API ------------------------------------------------------------------

    async def Recommend(
        self, request: ranking_pb2.RecommendRequest, context: grpc.aio.ServicerContext
    ) -> ranking_pb2.RecommendResponse:
        return await self._observe("Recommend", request, context, self._recommend)

    async def RecommendForSession(
        self, request: ranking_pb2.SessionRequest, context: grpc.aio.ServicerContext
    ) -> ranking_pb2.RecommendResponse:
        return await self._observe("RecommendForSession", request, context, self._session)

    async def SimilarItems(
        self, request: ranking_pb2.SimilarItemsRequest, context: grpc.aio.ServicerContext
    ) -> ranking_pb2.RecommendResponse:
        return await self._observe("SimilarItems", request, context, self._similar)

    async def Popular(
        self, request: ranking_pb2.PopularRequest, context: grpc.aio.ServicerContext
    ) -> ranking_pb2.RecommendResponse:
        return await self._observe("Popular", request, context, self._popular_call)

    async def BatchRecommend(
        self, request: ranking_pb2.BatchRecommendRequest, context: grpc.aio.ServicerContext
    ) -> ranking_pb2.BatchRecommendResponse:
        return await self._observe("BatchRecommend", request, context, self._batch)

    async def _observe(
        self,
        method: str,
        request: Any,
        context: grpc.aio.ServicerContext,
        handler: Callable[[Any, grpc.aio.ServicerContext, dict[str, Any]], Awaitable[Response]],
    ) -> Response:
        """Run ``handler`` with a request id, one log line, metrics and error mapping."""
        request_id = _request_id(context)
        token = correlation_id.set(request_id)
        started = time.perf_counter()
        details: dict[str, Any] = {}
        code = grpc.StatusCode.OK
        message = ""
        trailer = ((REQUEST_ID_KEY, request_id),)
        try:
            if isinstance(request, Undecodable):
                raise requests.InvalidArgument(
                    f"request body is not a valid {request.message}: {request.error}; "
                    "send a serialized message of that type"
                )
            response = await handler(request, context, details)
            response.request_id = request_id
            context.set_trailing_metadata(trailer)
            return response
        except requests.InvalidArgument as exc:
            code, message = grpc.StatusCode.INVALID_ARGUMENT, str(exc)
        except RpcError as exc:
            code, message = exc.code, exc.message
        except asyncio.CancelledError:
            code, message = (
                grpc.StatusCode.CANCELLED,
                "cancelled by the client, deadline or shutdown",
            )
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
        self,
        request: ranking_pb2.RecommendRequest,
        context: grpc.aio.ServicerContext,
        details: dict[str, Any],
    ) -> ranking_pb2.RecommendResponse:
        details.update(user_id=request.user_id[:MAX_USER_ID_CHARS], k=request.k)
        user_id, options = requests.recommend(request, self._limits)

        async def rank(version: str) -> Ranking:
            return await self._rank_user(user_id, options, version)

        ranking = await self._with_serving_version(rank)
        details.update(_summary(ranking))
        return ranking.response("")

    async def _session(
        self,
        request: ranking_pb2.SessionRequest,
        context: grpc.aio.ServicerContext,
        details: dict[str, Any],
    ) -> ranking_pb2.RecommendResponse:
        details.update(events=len(request.events), k=request.k)
        events, options = requests.session(request, self._limits)
        session_items = [e.item_id for e in events]
        exclude = options.exclude_item_ids | (
            frozenset(session_items) if options.exclude_seen else frozenset()
        )

        async def rank(version: str) -> Ranking:
            collection = self.serving.collection(version)
            try:
                session = await self.embedder.embed(events, _time_left(context))
            except EmbedUnavailable as exc:
                return await self._popular(
                    version, options, exclude, exc.cause, f"{exc}: most popular items"
                )
            if session.model_version != version:
                reason = (
                    f"the session was encoded by model {session.model_version}, serving "
                    f"{version} (a model swap is under way): most popular items"
                )
                return await self._popular(version, options, exclude, "version_mismatch", reason)
            return await self._nearest(
                collection, version, session.vector, options, exclude, session_items
            )

        ranking = await self._with_serving_version(rank)
        details.update(_summary(ranking))
        return ranking.response("")

    async def _similar(
        self,
        request: ranking_pb2.SimilarItemsRequest,
        context: grpc.aio.ServicerContext,
        details: dict[str, Any],
    ) -> ranking_pb2.RecommendResponse:
        details.update(item_id=request.item_id[:MAX_USER_ID_CHARS], k=request.k)
        item_id, options = requests.similar(request, self._limits)

        async def rank(version: str) -> Ranking:
            collection = self.serving.collection(version)
            records = await self._store_call(self._store.retrieve, collection, [item_id])
            if not records:
                raise RpcError(
                    grpc.StatusCode.NOT_FOUND,
                    f"item_id {item_id!r} is not in the catalogue of model {version}",
                )
            vector = np.asarray(records[0].vector, dtype=np.float32)
            return await self._nearest(
                collection, version, vector, options, options.exclude_item_ids, ()
            )

        ranking = await self._with_serving_version(rank)
        details.update(_summary(ranking))
        return ranking.response("")

    async def _popular_call(
        self,
        request: ranking_pb2.PopularRequest,
        context: grpc.aio.ServicerContext,
        details: dict[str, Any],
    ) -> ranking_pb2.RecommendResponse:
        details.update(k=request.k, window=request.window)
        window, options = requests.popular(request, self._limits)

        async def rank(version: str) -> Ranking:
            if window != "all_time":
                trending = self.trending.ranked(window) if self.trending is not None else []
                if trending:
                    collection = self.serving.collection(version)
                    candidates = await self._trending_candidates(collection, trending, options)
                    return Ranking(select(candidates, options.k, 0.0, 0), version)
                ranking = await self._popular(
                    version,
                    options,
                    options.exclude_item_ids,
                    "no_trending",
                    f"no interactions counted for the {window} window yet: all-time popular items",
                )
                return ranking
            return await self._popular(version, options, options.exclude_item_ids, "", "")

        ranking = await self._with_serving_version(rank)
        details.update(_summary(ranking))
        return ranking.response("")

    async def _batch(
        self,
        request: ranking_pb2.BatchRecommendRequest,
        context: grpc.aio.ServicerContext,
        details: dict[str, Any],
    ) -> ranking_pb2.BatchRecommendResponse:
        details.update(users=len(request.user_ids), k=request.k)
        parsed = requests.batch(request, self._limits)

        async def rank_all(version: str) -> tuple[str, dict[str, Ranking]]:
            # one version for the whole batch: a swap mid-batch must not mix models
            results: dict[str, Ranking] = {}
            for user_id in parsed.unique_ids:
                results[user_id] = await self._rank_user(user_id, parsed.options, version)
            return version, results

        version, by_user = await self._with_serving_version(rank_all)
        fallbacks = sum(r.fallback for r in by_user.values())
        details.update(model_version=version, fallbacks=fallbacks)
        response = ranking_pb2.BatchRecommendResponse(model_version=version)
        for user_id in parsed.user_ids:
            ranking = by_user[user_id]
            result = response.results.add(
                user_id=user_id, fallback=ranking.fallback, fallback_reason=ranking.fallback_reason
            )
            ranking.fill(result.items)
        return response

    # -- ranking ------------------------------------------------------------------

    async def _with_serving_version(self, rank: Callable[[str], Awaitable[T]]) -> T:
        for attempt in range(2):
            version = await self._serving_version()
            try:
                return await rank(version)
            except CollectionNotFound:
                # The alias moved on and the old collection is gone: resolve again once.
                if attempt:
                    raise
                self.serving.invalidate()
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

    async def _rank_user(self, user_id: str, options: requests.Options, version: str) -> Ranking:
        user = await self._user(user_id)
        if user is None:
            return await self._popular(
                version,
                options,
                options.exclude_item_ids,
                "unknown",
                "unknown user: most popular items",
            )
        exclude = options.exclude_item_ids | (
            user.seen_item_ids if options.exclude_seen else frozenset()
        )
        vector = user.vector
        if user.model_version != version or vector.size == 0:
            # A swap is under way: encode the user's recent history with the serving
            # model rather than search one model's items with another model's vector.
            reencoded = await self._reencode(user, version)
            if reencoded is None:
                reason = (
                    f"user vector is from model version {user.model_version or '(none)'}, "
                    f"serving {version}: most popular items not yet seen"
                )
                return await self._popular(version, options, exclude, "version_mismatch", reason)
            vector = reencoded
        return await self._nearest(
            self.serving.collection(version),
            version,
            vector,
            options,
            exclude,
            user.recent_item_ids,
        )

    async def _reencode(self, user: UserState, version: str) -> np.ndarray | None:
        events = user.recent_events()
        if not events:
            return None
        try:
            encoded = await self.embedder.embed(events)
        except EmbedUnavailable:
            return None
        if encoded.model_version != version:
            return None
        REENCODED.inc()
        return encoded.vector

    async def _nearest(
        self,
        collection: str,
        version: str,
        vector: np.ndarray,
        options: requests.Options,
        exclude: frozenset[str],
        history_ids: Sequence[str],
    ) -> Ranking:
        """Nearest items to ``vector`` under the options; history feeds explanations."""
        limit = pool_size(
            options.k,
            options.diversified,
            self._settings.diversity_pool_factor,
            self._settings.max_k * self._settings.diversity_pool_factor,
        )
        hits = await self._store_call(
            self._store.search,
            collection,
            vector,
            limit,
            query_filter=options.filter,
            exclude_ids=exclude,
        )
        candidates = [
            Candidate(str(hit.payload.get("item_id", hit.id)), hit.score, hit.payload)
            for hit in hits
        ]
        if candidates and (options.mmr > 0 or options.explain):
            candidates = await self._with_vectors(collection, candidates)
        chosen = select(candidates, options.k, options.mmr, options.max_per_category)
        reasons = None
        if options.explain:
            history = await self._history(collection, history_ids)
            reasons = closest_in_history(chosen, history)
        return Ranking(chosen, version, explain=options.explain, reasons=reasons)

    async def _with_vectors(self, collection: str, candidates: list[Candidate]) -> list[Candidate]:
        records = await self._store_call(
            self._store.retrieve, collection, [c.item_id for c in candidates]
        )
        vectors = {r.id: np.asarray(r.vector, dtype=np.float32) for r in records}
        return [replace(c, vector=vectors.get(c.item_id)) for c in candidates]

    async def _history(self, collection: str, history_ids: Sequence[str]) -> list[HistoryItem]:
        newest = list(dict.fromkeys(reversed(history_ids)))[: self._settings.explain_history]
        if not newest:
            return []
        records = await self._store_call(self._store.retrieve, collection, newest)
        return [
            HistoryItem(r.id, item_details(r.payload)[0], np.asarray(r.vector, dtype=np.float32))
            for r in records
        ]

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
        options: requests.Options,
        exclude: frozenset[str],
        cause: str,
        reason: str,
    ) -> Ranking:
        """The version's popular items under the options; a fallback when ``cause`` is set.

        Diversity on popular lists is the category cap alone (MMR needs relevance).
        """
        if cause:
            FALLBACKS.labels(cause).inc()
        try:
            popular = await self.popularity.get(version, self.serving.collection(version))
        except PopularityUnavailable:
            popular = []
            reason = f"{reason} (none: the popularity artifact of {version} is missing)"
        candidates = [
            Candidate(p.item_id, p.score, p.payload or _display_payload(p))
            for p in popular
            if p.item_id not in exclude
            and (options.filter is None or options.filter.matches(p.payload))
        ]
        chosen = select(candidates, options.k, 0.0, options.max_per_category)
        return Ranking(
            chosen,
            version,
            explain=options.explain,
            fallback=bool(cause),
            fallback_reason=reason if cause else "",
        )

    async def _trending_candidates(
        self, collection: str, trending: Sequence[tuple[str, float]], options: requests.Options
    ) -> list[Candidate]:
        """Trending ids in order, with payloads, filtered; enough of them for ``k``."""
        out: list[Candidate] = []
        depth = self._settings.popular_depth
        wanted = [(i, s) for i, s in trending[:depth] if i not in options.exclude_item_ids]
        for start in range(0, len(wanted), 500):
            chunk = wanted[start : start + 500]
            records = await self._store_call(
                self._store.retrieve, collection, [i for i, _ in chunk], with_vectors=False
            )
            payloads = {r.id: r.payload for r in records}
            for item_id, score in chunk:
                payload = payloads.get(item_id)
                if payload is None:
                    continue  # not in the serving catalogue (deleted or not indexed yet)
                if options.filter is None or options.filter.matches(payload):
                    out.append(Candidate(item_id, score, payload))
            if len(out) >= options.k:
                break
        return out


def _display_payload(item: PopularItem) -> dict[str, Any]:
    return {"title": item.title, "categories": list(item.categories)}


def _summary(ranking: Ranking) -> dict[str, Any]:
    return {
        "model_version": ranking.model_version,
        "items": len(ranking.chosen),
        "fallback": ranking.fallback,
    }


_EXPECTED_CODES = frozenset(
    {
        grpc.StatusCode.OK,
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.CANCELLED,
    }
)


@dataclass(frozen=True)
class Undecodable:
    """A request body its message type cannot parse (answered INVALID_ARGUMENT)."""

    message: str
    error: str


def _lenient_parser(message_type: Any) -> Callable[[bytes], Any]:
    # grpc's own deserializer failure would reach the caller as UNKNOWN with no details
    def parse(data: bytes) -> Any:
        try:
            return message_type.FromString(data)
        except DecodeError as exc:
            return Undecodable(message_type.DESCRIPTOR.full_name, str(exc) or "cannot parse")

    return parse


def add_ranking_servicer(servicer: RankingServicer, server: grpc.aio.Server) -> None:
    """Like the generated ``add_RankingServiceServicer_to_server``, with lenient parsing."""
    service = ranking_pb2.DESCRIPTOR.services_by_name["RankingService"]
    handlers = {
        method.name: grpc.unary_unary_rpc_method_handler(
            getattr(servicer, method.name),
            request_deserializer=_lenient_parser(getattr(ranking_pb2, method.input_type.name)),
            response_serializer=getattr(ranking_pb2, method.output_type.name).SerializeToString,
        )
        for method in service.methods
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))
    server.add_registered_method_handlers(SERVICE_NAME, handlers)


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
        await self.servicer.embedder.close()
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
    trending: TrendingSource | None = None,
    embedder: Embedder | None = None,
) -> RunningServer:
    """Start the ranking server on ``settings.host:settings.port`` (0 = a free port).

    Health checking (``grpc.health.v1``: "" SERVING once started, ``recsys.v1.RankingService``
    SERVING only while a model serves) and server reflection are on. Bearer-token auth
    and TLS follow the settings (see ``services.ranking.auth``).
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
    servicer = RankingServicer(
        settings,
        store,
        serving=serving,
        popularity=popularity,
        embedder=embedder,
        trending=trending,
    )
    server = grpc.aio.server(
        interceptors=[*auth.interceptors(settings), *interceptors],
        maximum_concurrent_rpcs=settings.max_concurrent_rpcs or None,
        options=[
            ("grpc.so_reuseport", 0),
            ("grpc.max_receive_message_length", settings.max_request_bytes),
        ],
    )
    add_ranking_servicer(servicer, server)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server
    )
    address = f"{settings.host}:{settings.port}"
    credentials = auth.server_credentials(settings)
    if credentials is None:
        port = server.add_insecure_port(address)
    else:
        port = server.add_secure_port(address, credentials)
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
        extra={
            "address": f"{settings.host}:{port}",
            "grpc_service": SERVICE_NAME,
            "tls": credentials is not None,
            "auth": bool(settings.auth_tokens),
        },
    )
    return RunningServer(
        server=server,
        port=port,
        servicer=servicer,
        health=health_servicer,
        grace_seconds=settings.grace_seconds,
        _watcher=watcher,
    )
