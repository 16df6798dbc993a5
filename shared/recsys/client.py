"""A typed Python client for the ranking API (``recsys.v1.RankingService``).

    with RankingClient("localhost:50051", token="...") as client:
        response = client.recommend("42", k=10, filter=ItemFilter(categories_any=["Comedy"]))
        for item in response.items:
            print(item.item_id, item.score, item.title)

Responses are the protobuf messages of ``recsys.v1.ranking_pb2`` (``RecommendResponse``,
``BatchRecommendResponse``). Every method is a read, so every one is retried on
UNAVAILABLE by gRPC's own retry policy, set in the channel's service config (exponential
backoff with jitter, throttled when most calls fail, always within the call's deadline).
Failures raise a :class:`RankingError` subclass with the status code, the server's
message and the request id; the original ``grpc.RpcError`` is its ``__cause__``.

:class:`AsyncRankingClient` is the same client for ``grpc.aio``; both build their
channels and requests with the same functions.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Self

import grpc

from recsys import __version__
from recsys.v1 import ranking_pb2, ranking_pb2_grpc

__all__ = [
    "DEFAULT_TARGET",
    "MAX_RETRIES",
    "SERVICE_NAME",
    "TARGET_ENV",
    "WINDOWS",
    "AsyncRankingClient",
    "DeadlineExceededError",
    "Diversity",
    "InvalidArgumentError",
    "ItemFilter",
    "NotFoundError",
    "PermissionDeniedError",
    "RankingClient",
    "RankingError",
    "ResourceExhaustedError",
    "UnauthenticatedError",
    "UnavailableError",
    "UnimplementedError",
    "Window",
    "batch_recommend_request",
    "call_metadata",
    "channel_options",
    "error_from_rpc",
    "popular_request",
    "recommend_request",
    "service_config",
    "session_request",
    "similar_items_request",
]

SERVICE_NAME: str = ranking_pb2.DESCRIPTOR.services_by_name["RankingService"].full_name
DEFAULT_TARGET = "localhost:50051"
TARGET_ENV = "RECSYS_RANKING_TARGET"
REQUEST_ID_KEY = "x-request-id"
# gRPC clamps a retry policy's maxAttempts to 5 without a word; refuse more instead.
MAX_RETRIES = 4
# BatchRecommend answers up to 1000 users x 1000 items: far beyond gRPC's 4 MiB default.
DEFAULT_MAX_RECEIVE_BYTES = 256 * 1024 * 1024

Window = Literal["all_time", "hour", "day", "week"]
WINDOWS: dict[str, ranking_pb2.PopularityWindow] = {
    "all_time": ranking_pb2.POPULARITY_WINDOW_ALL_TIME,
    "hour": ranking_pb2.POPULARITY_WINDOW_HOUR,
    "day": ranking_pb2.POPULARITY_WINDOW_DAY,
    "week": ranking_pb2.POPULARITY_WINDOW_WEEK,
}

Bound = float | None
Strings = str | Iterable[str]


def _strings(values: Strings) -> list[str]:
    # A lone string is one id, not an iterable of one-character ids.
    return [values] if isinstance(values, str) else list(values)


# --- request parts ------------------------------------------------------------------


@dataclass(frozen=True)
class ItemFilter:
    """Payload conditions an item must meet, all of them (see ``ItemFilter`` in the proto).

    ``ranges`` maps an attribute to ``(min, max)``; ``None`` leaves that bound open, e.g.
    ``{"year": (1990, 1999), "price": (None, 20)}``. ``available`` None means no condition.
    """

    categories_any: Strings = ()
    categories_none: Strings = ()
    ranges: Mapping[str, tuple[Bound, Bound]] = field(default_factory=dict)
    available: bool | None = None

    def to_proto(self) -> ranking_pb2.ItemFilter:
        message = ranking_pb2.ItemFilter(
            categories_any=_strings(self.categories_any),
            categories_none=_strings(self.categories_none),
        )
        for attribute, (low, high) in self.ranges.items():
            bounds = message.ranges.add(attribute=attribute)
            # Optional fields: only a set bound is sent, so an open side stays open.
            if low is not None:
                bounds.min = low
            if high is not None:
                bounds.max = high
        if self.available is not None:
            message.available = self.available
        return message


@dataclass(frozen=True)
class Diversity:
    """Relevance traded for variety: MMR strength 0..1 and a per-category cap (0 = none)."""

    mmr: float = 0.0
    max_per_category: int = 0

    def to_proto(self) -> ranking_pb2.Diversity:
        return ranking_pb2.Diversity(mmr=self.mmr, max_per_category=self.max_per_category)


FilterArg = ItemFilter | ranking_pb2.ItemFilter | None
# A bare float is the MMR strength alone.
DiversityArg = Diversity | ranking_pb2.Diversity | float | None
# (item_id, event_type), e.g. ("50", "view").
EventArg = ranking_pb2.SessionEvent | tuple[str, str]


def _filter(value: FilterArg) -> ranking_pb2.ItemFilter | None:
    return value.to_proto() if isinstance(value, ItemFilter) else value


def _diversity(value: DiversityArg) -> ranking_pb2.Diversity | None:
    if isinstance(value, Diversity):
        return value.to_proto()
    if isinstance(value, int | float):
        return ranking_pb2.Diversity(mmr=float(value))
    return value


def _event(value: EventArg) -> ranking_pb2.SessionEvent:
    if isinstance(value, ranking_pb2.SessionEvent):
        return value
    item_id, event_type = value
    return ranking_pb2.SessionEvent(item_id=item_id, event_type=event_type)


def _window(window: Window | ranking_pb2.PopularityWindow) -> ranking_pb2.PopularityWindow:
    if isinstance(window, str):
        try:
            return WINDOWS[window]
        except KeyError:
            raise ValueError(
                f"window is {window!r}: use one of {', '.join(sorted(WINDOWS))}"
            ) from None
    return window


def recommend_request(
    user_id: str,
    k: int,
    *,
    filter: FilterArg = None,
    exclude_item_ids: Strings = (),
    exclude_seen: bool | None = None,
    diversity: DiversityArg = None,
    explain: bool = False,
) -> ranking_pb2.RecommendRequest:
    return ranking_pb2.RecommendRequest(
        user_id=user_id,
        k=k,
        filter=_filter(filter),
        exclude_item_ids=_strings(exclude_item_ids),
        exclude_seen=exclude_seen,
        diversity=_diversity(diversity),
        explain=explain,
    )


def session_request(
    events: Iterable[EventArg],
    k: int,
    *,
    filter: FilterArg = None,
    exclude_item_ids: Strings = (),
    exclude_seen: bool | None = None,
    diversity: DiversityArg = None,
    explain: bool = False,
) -> ranking_pb2.SessionRequest:
    return ranking_pb2.SessionRequest(
        events=[_event(e) for e in events],
        k=k,
        filter=_filter(filter),
        exclude_item_ids=_strings(exclude_item_ids),
        exclude_seen=exclude_seen,
        diversity=_diversity(diversity),
        explain=explain,
    )


def similar_items_request(
    item_id: str,
    k: int,
    *,
    filter: FilterArg = None,
    exclude_item_ids: Strings = (),
    diversity: DiversityArg = None,
) -> ranking_pb2.SimilarItemsRequest:
    return ranking_pb2.SimilarItemsRequest(
        item_id=item_id,
        k=k,
        filter=_filter(filter),
        exclude_item_ids=_strings(exclude_item_ids),
        diversity=_diversity(diversity),
    )


def popular_request(
    k: int,
    *,
    window: Window | ranking_pb2.PopularityWindow = "all_time",
    filter: FilterArg = None,
    exclude_item_ids: Strings = (),
) -> ranking_pb2.PopularRequest:
    return ranking_pb2.PopularRequest(
        k=k,
        window=_window(window),
        filter=_filter(filter),
        exclude_item_ids=_strings(exclude_item_ids),
    )


def batch_recommend_request(
    user_ids: Strings,
    k: int,
    *,
    filter: FilterArg = None,
    exclude_item_ids: Strings = (),
    exclude_seen: bool | None = None,
    diversity: DiversityArg = None,
    explain: bool = False,
) -> ranking_pb2.BatchRecommendRequest:
    return ranking_pb2.BatchRecommendRequest(
        user_ids=_strings(user_ids),
        k=k,
        filter=_filter(filter),
        exclude_item_ids=_strings(exclude_item_ids),
        exclude_seen=exclude_seen,
        diversity=_diversity(diversity),
        explain=explain,
    )


# --- errors -------------------------------------------------------------------------


class RankingError(Exception):
    """A failed call: the gRPC status ``code``, the server's ``details`` and, when the
    server answered, the ``request_id`` it logged the call under."""

    def __init__(self, code: grpc.StatusCode, details: str, request_id: str | None = None) -> None:
        suffix = f" (request id {request_id})" if request_id else ""
        super().__init__(f"{code.name}: {details}{suffix}")
        self.code = code
        self.details = details
        self.request_id = request_id

    def __reduce__(self) -> tuple[Any, ...]:
        # Rebuild from the fields, not the message, so the error survives pickling
        # (multiprocessing pools, task queues).
        return (type(self), (self.code, self.details, self.request_id))


class InvalidArgumentError(RankingError):
    """A request field is out of range or malformed; ``details`` starts with its name."""


class NotFoundError(RankingError):
    """The item asked about is not in the serving catalogue."""


class UnavailableError(RankingError):
    """No server could be reached, or no model serves yet (``request_id`` set): retry later."""


class UnauthenticatedError(RankingError):
    """The server wants a bearer token and the call had none or a wrong one."""


class PermissionDeniedError(RankingError):
    """The token is valid but may not make this call."""


class DeadlineExceededError(RankingError):
    """No answer within the call's deadline (all retries included)."""


class ResourceExhaustedError(RankingError):
    """The server is at its concurrency limit, or a message exceeded a size limit."""


class UnimplementedError(RankingError):
    """The server does not offer this method (an older server version)."""


_ERRORS: dict[grpc.StatusCode, type[RankingError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgumentError,
    grpc.StatusCode.NOT_FOUND: NotFoundError,
    grpc.StatusCode.UNAVAILABLE: UnavailableError,
    grpc.StatusCode.UNAUTHENTICATED: UnauthenticatedError,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDeniedError,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceededError,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhaustedError,
    grpc.StatusCode.UNIMPLEMENTED: UnimplementedError,
}


def error_from_rpc(error: grpc.RpcError) -> RankingError:
    """The :class:`RankingError` for a failed call (raise it ``from error``)."""
    # Failed calls are also grpc.Call objects; a bare RpcError has no status to read.
    code_of = getattr(error, "code", None)
    code = code_of() if callable(code_of) else grpc.StatusCode.UNKNOWN
    details_of = getattr(error, "details", None)
    details = (details_of() if callable(details_of) else None) or str(error) or code.name
    trailers_of = getattr(error, "trailing_metadata", None)
    trailers = (trailers_of() if callable(trailers_of) else None) or ()
    # The server puts the request id in every answer's trailers, errors included; a
    # connection failure has none, which is how a caller tells the two UNAVAILABLEs apart.
    request_id = next((str(v) for k, v in trailers if k == REQUEST_ID_KEY), None)
    return _ERRORS.get(code, RankingError)(code, str(details), request_id)


# --- channel ------------------------------------------------------------------------


def service_config(
    retries: int, initial_backoff_s: float = 0.1, max_backoff_s: float = 1.0
) -> dict[str, Any]:
    """The channel's service config: every RankingService method (all are idempotent
    reads) is retried up to ``retries`` times on UNAVAILABLE; ``retries=0`` disables it."""
    if not 0 <= retries <= MAX_RETRIES:
        raise ValueError(f"retries is {retries}: use 0 to {MAX_RETRIES} (gRPC's limit)")
    if not 0 < initial_backoff_s <= max_backoff_s:
        raise ValueError("backoff: use 0 < initial_backoff_s <= max_backoff_s")
    method: dict[str, Any] = {"name": [{"service": SERVICE_NAME}]}
    config: dict[str, Any] = {"methodConfig": [method]}
    if retries:
        method["retryPolicy"] = {
            "maxAttempts": retries + 1,
            "initialBackoff": f"{initial_backoff_s:.3f}s",
            "maxBackoff": f"{max_backoff_s:.3f}s",
            "backoffMultiplier": 2,
            # Only UNAVAILABLE: the call never started or the server refused it before
            # work. DEADLINE_EXCEEDED would be retried past the caller's own deadline.
            "retryableStatusCodes": ["UNAVAILABLE"],
        }
        # While most calls fail, stop retrying (tokens refill on successes) so that an
        # outage is not multiplied by every client's retries.
        config["retryThrottling"] = {"maxTokens": 10, "tokenRatio": 0.1}
    return config


def channel_options(
    *,
    retries: int = 2,
    initial_backoff_s: float = 0.1,
    max_backoff_s: float = 1.0,
    max_receive_message_bytes: int = DEFAULT_MAX_RECEIVE_BYTES,
    extra: Sequence[tuple[str, Any]] = (),
) -> list[tuple[str, Any]]:
    """The options both clients open their channel with; ``extra`` comes last and wins."""
    config = service_config(retries, initial_backoff_s, max_backoff_s)
    return [
        ("grpc.service_config", json.dumps(config)),
        ("grpc.enable_retries", 1),
        # The service config above is the client's own: never take one from DNS TXT.
        ("grpc.service_config_disable_resolution", 1),
        ("grpc.max_receive_message_length", max_receive_message_bytes),
        ("grpc.primary_user_agent", f"recsys-client/{__version__}"),
        *extra,
    ]


Pem = bytes | str | Path


def _pem(value: Pem | None) -> bytes | None:
    """PEM bytes as given, or read from a file path."""
    if value is None or isinstance(value, bytes):
        return value
    return Path(value).read_bytes()


def _credentials(
    tls: bool,
    root_certificates: Pem | None,
    certificate_chain: Pem | None,
    private_key: Pem | None,
) -> Any:
    """Channel credentials for TLS (with a client certificate for mTLS), or None."""
    if (certificate_chain is None) != (private_key is None):
        raise ValueError("a client certificate needs both certificate_chain and private_key")
    if not tls and root_certificates is None and certificate_chain is None:
        return None
    # Without roots gRPC verifies the server against the system's trust store.
    return grpc.ssl_channel_credentials(
        root_certificates=_pem(root_certificates),
        private_key=_pem(private_key),
        certificate_chain=_pem(certificate_chain),
    )


def _check_token(token: str | None) -> None:
    if token is not None and (
        not token
        or not token.isascii()
        or not token.isprintable()
        or any(c.isspace() for c in token)
    ):
        raise ValueError("token must be non-empty printable ASCII without spaces")


def call_metadata(token: str | None, request_id: str | None) -> tuple[tuple[str, str], ...]:
    """The metadata sent with every call: the bearer token and the caller's request id."""
    # Plain metadata rather than call credentials: those are refused on plaintext
    # channels, and a token is also what a local (sidecar, port-forward) server wants.
    pairs: list[tuple[str, str]] = []
    if token is not None:
        pairs.append(("authorization", f"Bearer {token}"))
    if request_id:
        pairs.append((REQUEST_ID_KEY, request_id))
    return tuple(pairs)


@dataclass
class _Settings:
    """What both clients share: the channel's target, options and per-call metadata."""

    target: str
    timeout_s: float
    token: str | None
    credentials: Any
    options: list[tuple[str, Any]]

    def metadata(self, request_id: str | None) -> tuple[tuple[str, str], ...]:
        return call_metadata(self.token, request_id)

    def timeout(self, timeout_s: float | None) -> float:
        return self.timeout_s if timeout_s is None else timeout_s


def _settings(
    target: str,
    *,
    timeout_s: float,
    retries: int,
    token: str | None,
    tls: bool,
    root_certificates: Pem | None,
    certificate_chain: Pem | None,
    private_key: Pem | None,
    initial_backoff_s: float,
    max_backoff_s: float,
    max_receive_message_bytes: int,
    options: Sequence[tuple[str, Any]],
) -> _Settings:
    if timeout_s <= 0:
        raise ValueError(f"timeout_s is {timeout_s}: use a positive number of seconds")
    _check_token(token)
    return _Settings(
        target=target,
        timeout_s=timeout_s,
        token=token,
        credentials=_credentials(tls, root_certificates, certificate_chain, private_key),
        options=channel_options(
            retries=retries,
            initial_backoff_s=initial_backoff_s,
            max_backoff_s=max_backoff_s,
            max_receive_message_bytes=max_receive_message_bytes,
            extra=options,
        ),
    )


# --- clients ------------------------------------------------------------------------


class _ClientBase:
    """What both clients share: settings, channel options and the stub."""

    def __init__(
        self,
        target: str = DEFAULT_TARGET,
        *,
        timeout_s: float = 2.0,
        retries: int = 2,
        token: str | None = None,
        tls: bool = False,
        root_certificates: Pem | None = None,
        certificate_chain: Pem | None = None,
        private_key: Pem | None = None,
        initial_backoff_s: float = 0.1,
        max_backoff_s: float = 1.0,
        max_receive_message_bytes: int = DEFAULT_MAX_RECEIVE_BYTES,
        options: Sequence[tuple[str, Any]] = (),
    ) -> None:
        self._settings = _settings(
            target,
            timeout_s=timeout_s,
            retries=retries,
            token=token,
            tls=tls,
            root_certificates=root_certificates,
            certificate_chain=certificate_chain,
            private_key=private_key,
            initial_backoff_s=initial_backoff_s,
            max_backoff_s=max_backoff_s,
            max_receive_message_bytes=max_receive_message_bytes,
            options=options,
        )
        self._stub = ranking_pb2_grpc.RankingServiceStub(self._open_channel(self._settings))

    def _open_channel(self, settings: _Settings) -> Any:
        raise NotImplementedError

    @property
    def target(self) -> str:
        return self._settings.target


class RankingClient(_ClientBase):
    """A synchronous RankingService client; thread-safe, one channel, close it when done.

    ``timeout_s`` is each call's deadline, retries included (a call may override it).
    ``retries`` is how many times a call is tried again on UNAVAILABLE (0 to 4).
    ``token`` is sent as ``authorization: Bearer <token>``. ``tls=True`` or
    ``root_certificates`` (the CAs to verify the server with) selects TLS;
    ``certificate_chain`` and ``private_key`` add a client certificate (mTLS); each is PEM
    bytes or a file path. ``options`` are extra gRPC channel options, e.g.
    ``("grpc.ssl_target_name_override", "ranking")``.
    """

    def _open_channel(self, settings: _Settings) -> grpc.Channel:
        self._channel = (
            grpc.insecure_channel(settings.target, options=settings.options)
            if settings.credentials is None
            else grpc.secure_channel(
                settings.target, settings.credentials, options=settings.options
            )
        )
        return self._channel

    def _call(self, rpc: Any, request: Any, request_id: str | None, timeout_s: float | None) -> Any:
        try:
            return rpc(
                request,
                timeout=self._settings.timeout(timeout_s),
                metadata=self._settings.metadata(request_id),
            )
        except grpc.RpcError as exc:
            raise error_from_rpc(exc) from exc

    def recommend(
        self,
        user_id: str,
        k: int = 10,
        *,
        filter: FilterArg = None,
        exclude_item_ids: Strings = (),
        exclude_seen: bool | None = None,
        diversity: DiversityArg = None,
        explain: bool = False,
        request_id: str | None = None,
        timeout_s: float | None = None,
    ) -> ranking_pb2.RecommendResponse:
        """The top ``k`` items for ``user_id``, best first (popular ones as a fallback)."""
        request = recommend_request(
            user_id,
            k,
            filter=filter,
            exclude_item_ids=exclude_item_ids,
            exclude_seen=exclude_seen,
            diversity=diversity,
            explain=explain,
        )
        response: ranking_pb2.RecommendResponse = self._call(
            self._stub.Recommend, request, request_id, timeout_s
        )
        return response

    def recommend_for_session(
        self,
        events: Iterable[EventArg],
        k: int = 10,
        *,
        filter: FilterArg = None,
        exclude_item_ids: Strings = (),
        exclude_seen: bool | None = None,
        diversity: DiversityArg = None,
        explain: bool = False,
        request_id: str | None = None,
        timeout_s: float | None = None,
    ) -> ranking_pb2.RecommendResponse:
        """The top ``k`` items for an anonymous session's ``(item_id, event_type)`` events."""
        request = session_request(
            events,
            k,
            filter=filter,
            exclude_item_ids=exclude_item_ids,
            exclude_seen=exclude_seen,
            diversity=diversity,
            explain=explain,
        )
        response: ranking_pb2.RecommendResponse = self._call(
            self._stub.RecommendForSession, request, request_id, timeout_s
        )
        return response

    def similar_items(
        self,
        item_id: str,
        k: int = 10,
        *,
        filter: FilterArg = None,
        exclude_item_ids: Strings = (),
        diversity: DiversityArg = None,
        request_id: str | None = None,
        timeout_s: float | None = None,
    ) -> ranking_pb2.RecommendResponse:
        """The ``k`` items most similar to ``item_id`` (never the item itself)."""
        request = similar_items_request(
            item_id, k, filter=filter, exclude_item_ids=exclude_item_ids, diversity=diversity
        )
        response: ranking_pb2.RecommendResponse = self._call(
            self._stub.SimilarItems, request, request_id, timeout_s
        )
        return response

    def popular(
        self,
        k: int = 10,
        *,
        window: Window | ranking_pb2.PopularityWindow = "all_time",
        filter: FilterArg = None,
        exclude_item_ids: Strings = (),
        request_id: str | None = None,
        timeout_s: float | None = None,
    ) -> ranking_pb2.RecommendResponse:
        """The ``k`` most popular items, all-time or trending over ``window``."""
        request = popular_request(
            k, window=window, filter=filter, exclude_item_ids=exclude_item_ids
        )
        response: ranking_pb2.RecommendResponse = self._call(
            self._stub.Popular, request, request_id, timeout_s
        )
        return response

    def batch_recommend(
        self,
        user_ids: Strings,
        k: int = 10,
        *,
        filter: FilterArg = None,
        exclude_item_ids: Strings = (),
        exclude_seen: bool | None = None,
        diversity: DiversityArg = None,
        explain: bool = False,
        request_id: str | None = None,
        timeout_s: float | None = None,
    ) -> ranking_pb2.BatchRecommendResponse:
        """``recommend`` for many users in one call; results in the order of ``user_ids``."""
        request = batch_recommend_request(
            user_ids,
            k,
            filter=filter,
            exclude_item_ids=exclude_item_ids,
            exclude_seen=exclude_seen,
            diversity=diversity,
            explain=explain,
        )
        response: ranking_pb2.BatchRecommendResponse = self._call(
            self._stub.BatchRecommend, request, request_id, timeout_s
        )
        return response

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class AsyncRankingClient(_ClientBase):
    """:class:`RankingClient` for asyncio (``grpc.aio``): the same arguments and methods,
    awaited. Create it inside the event loop that will use it."""

    def _open_channel(self, settings: _Settings) -> grpc.aio.Channel:
        self._channel = (
            grpc.aio.insecure_channel(settings.target, options=settings.options)
            if settings.credentials is None
            else grpc.aio.secure_channel(
                settings.target, settings.credentials, options=settings.options
            )
        )
        return self._channel

    async def _call(
        self, rpc: Any, request: Any, request_id: str | None, timeout_s: float | None
    ) -> Any:
        try:
            return await rpc(
                request,
                timeout=self._settings.timeout(timeout_s),
                metadata=self._settings.metadata(request_id),
            )
        except grpc.RpcError as exc:
            raise error_from_rpc(exc) from exc

    async def recommend(
        self,
        user_id: str,
        k: int = 10,
        *,
        filter: FilterArg = None,
        exclude_item_ids: Strings = (),
        exclude_seen: bool | None = None,
        diversity: DiversityArg = None,
        explain: bool = False,
        request_id: str | None = None,
        timeout_s: float | None = None,
    ) -> ranking_pb2.RecommendResponse:
        """See :meth:`RankingClient.recommend`."""
        request = recommend_request(
            user_id,
            k,
            filter=filter,
            exclude_item_ids=exclude_item_ids,
            exclude_seen=exclude_seen,
            diversity=diversity,
            explain=explain,
        )
        response: ranking_pb2.RecommendResponse = await self._call(
            self._stub.Recommend, request, request_id, timeout_s
        )
        return response

    async def recommend_for_session(
        self,
        events: Iterable[EventArg],
        k: int = 10,
        *,
        filter: FilterArg = None,
        exclude_item_ids: Strings = (),
        exclude_seen: bool | None = None,
        diversity: DiversityArg = None,
        explain: bool = False,
        request_id: str | None = None,
        timeout_s: float | None = None,
    ) -> ranking_pb2.RecommendResponse:
        """See :meth:`RankingClient.recommend_for_session`."""
        request = session_request(
            events,
            k,
            filter=filter,
            exclude_item_ids=exclude_item_ids,
            exclude_seen=exclude_seen,
            diversity=diversity,
            explain=explain,
        )
        response: ranking_pb2.RecommendResponse = await self._call(
            self._stub.RecommendForSession, request, request_id, timeout_s
        )
        return response

    async def similar_items(
        self,
        item_id: str,
        k: int = 10,
        *,
        filter: FilterArg = None,
        exclude_item_ids: Strings = (),
        diversity: DiversityArg = None,
        request_id: str | None = None,
        timeout_s: float | None = None,
    ) -> ranking_pb2.RecommendResponse:
        """See :meth:`RankingClient.similar_items`."""
        request = similar_items_request(
            item_id, k, filter=filter, exclude_item_ids=exclude_item_ids, diversity=diversity
        )
        response: ranking_pb2.RecommendResponse = await self._call(
            self._stub.SimilarItems, request, request_id, timeout_s
        )
        return response

    async def popular(
        self,
        k: int = 10,
        *,
        window: Window | ranking_pb2.PopularityWindow = "all_time",
        filter: FilterArg = None,
        exclude_item_ids: Strings = (),
        request_id: str | None = None,
        timeout_s: float | None = None,
    ) -> ranking_pb2.RecommendResponse:
        """See :meth:`RankingClient.popular`."""
        request = popular_request(
            k, window=window, filter=filter, exclude_item_ids=exclude_item_ids
        )
        response: ranking_pb2.RecommendResponse = await self._call(
            self._stub.Popular, request, request_id, timeout_s
        )
        return response

    async def batch_recommend(
        self,
        user_ids: Strings,
        k: int = 10,
        *,
        filter: FilterArg = None,
        exclude_item_ids: Strings = (),
        exclude_seen: bool | None = None,
        diversity: DiversityArg = None,
        explain: bool = False,
        request_id: str | None = None,
        timeout_s: float | None = None,
    ) -> ranking_pb2.BatchRecommendResponse:
        """See :meth:`RankingClient.batch_recommend`."""
        request = batch_recommend_request(
            user_ids,
            k,
            filter=filter,
            exclude_item_ids=exclude_item_ids,
            exclude_seen=exclude_seen,
            diversity=diversity,
            explain=explain,
        )
        response: ranking_pb2.BatchRecommendResponse = await self._call(
            self._stub.BatchRecommend, request, request_id, timeout_s
        )
        return response

    async def close(self) -> None:
        await self._channel.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()
