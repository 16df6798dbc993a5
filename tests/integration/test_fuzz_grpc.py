"""Fuzzing every ``recsys.v1.RankingService`` method with generated requests.

The real grpc.aio ranking server runs in this process over a small catalogue (the
``api`` fixture of ``test_ranking_api``, on both store backends). Hypothesis builds
request messages with hostile values (empty, huge and exotic strings, negative and huge
``k``, NaN and infinite bounds, unknown enum values, oversized repeated fields) and raw
random bytes sent as the serialised request. Whatever arrives, the answer is OK or a
client error (INVALID_ARGUMENT, NOT_FOUND, RESOURCE_EXHAUSTED), never INTERNAL or
UNKNOWN, and the server still answers a valid Recommend afterwards. (Exception, for now:
bytes that do not parse as the request message get UNKNOWN from grpc's deserializer,
before the servicer; ``test_undecodable_request_is_invalid_argument`` tracks it.)

Each request mixes plausible fields (which pass validation, so the store and ranking
code run on exotic but valid values) with hostile ones; half the requests are plausible
throughout. pytest-asyncio runs each example of an async ``@given`` test on the session
loop, so the server started by the fixture serves every example.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar, cast

import grpc
import pytest
from google.protobuf.message import DecodeError, Message
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from recsys.events import EVENT_TYPES
from recsys.v1 import ranking_pb2
from services.ranking.requests import (
    MAX_CATEGORY_CHARS,
    MAX_EXCLUDED_IDS,
    MAX_FILTER_VALUES,
    MAX_ID_CHARS,
    MAX_RANGES,
    MAX_SESSION_EVENTS,
)
from services.ranking.server import SERVICE_NAME, RunningServer
from tests.integration import test_ranking_api as ranking_api
from tests.integration.test_ranking_api import CATALOGUE, Api, ids

pytestmark = [
    pytest.mark.integration,
    pytest.mark.filterwarnings("ignore:Payload indexes have no effect:UserWarning"),
]

# The ranking API tests' server fixture, over both store backends.
api = ranking_api.api
backend_name = ranking_api.backend_name
catalogue_store = ranking_api.catalogue_store

M = TypeVar("M", bound=Message)

# Client errors a hostile request may get; anything else (INTERNAL, UNKNOWN) is a bug.
ALLOWED = frozenset(
    {
        grpc.StatusCode.OK,
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    }
)
FUZZ = settings(
    max_examples=120,
    deadline=None,
    # The server fixture is meant to be shared by every example.
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1

# ------------------------------------------------------------------ strategies

# protobuf strings are UTF-8: no lone surrogates (raw bytes below cover invalid UTF-8).
_chars = st.characters(codec="utf-8")
_odd_chars = st.sampled_from(
    " \t\n\r\x00\x7f\u200b\u202e\ufeff\uffff\U0001f600\U0010ffffé'\"\\%*:/"
)
_known_ids = st.sampled_from([*CATALOGUE, "alice", "nobody", "gone"])


def _long(element: st.SearchStrategy[str], low: int, high: int) -> st.SearchStrategy[str]:
    """One long string, built cheaply (generated text is much shorter than this)."""
    return st.builds(lambda c, n: c * n, element, st.integers(low, high))


def _boundary_lists(
    element: st.SearchStrategy[Any], limit: int, over: int = 0
) -> st.SearchStrategy[list[Any]]:
    """A few values, or about ``limit`` copies of one (up to ``over`` past it), cheaply."""
    return st.one_of(
        st.lists(element, max_size=6),
        st.builds(lambda e, n: [e] * n, element, st.integers(limit - 2, limit + over)),
    )


@dataclass(frozen=True)
class Values:
    """Where each request field draws from: plausible values pass validation, hostile
    ones probe it (each request mixes the two, see ``_values``)."""

    ids: st.SearchStrategy[str]
    single_ids: st.SearchStrategy[str]  # user_id, item_id: may be huge (never copied)
    ks: st.SearchStrategy[int]
    categories: st.SearchStrategy[list[str]]
    attributes: st.SearchStrategy[str]
    bounds: st.SearchStrategy[float]
    range_counts: st.SearchStrategy[int]
    excluded: st.SearchStrategy[list[str]]
    mmrs: st.SearchStrategy[float]
    caps: st.SearchStrategy[int]
    event_types: st.SearchStrategy[str]
    event_counts: st.SearchStrategy[int]
    user_counts: st.SearchStrategy[int]
    windows: st.SearchStrategy[int]


_plausible_ids = st.one_of(
    _known_ids,
    st.text(_chars, min_size=1, max_size=30),
    st.text(_odd_chars, min_size=1, max_size=8),
    _long(_chars, 1, MAX_ID_CHARS),
)
PLAUSIBLE = Values(
    ids=_plausible_ids,
    single_ids=_plausible_ids,
    ks=st.one_of(st.integers(1, 12), st.integers(1, 1000), st.just(1000)),
    categories=st.lists(
        st.one_of(
            st.sampled_from(["Animation", "Crime", "Drama", "Nope"]),
            st.text(_chars, min_size=1, max_size=20),
            _long(_chars, 1, MAX_CATEGORY_CHARS),
        ),
        max_size=MAX_FILTER_VALUES,
    ),
    attributes=st.one_of(
        st.sampled_from(["year", "available", "x" * 64, "a.b", "a..b", "_", "0", "a-"]),
        st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}", fullmatch=True),
    ),
    bounds=st.one_of(
        st.floats(allow_nan=False, allow_infinity=False),
        st.integers(1900, 2000).map(float),
        st.sampled_from([0.0, -0.0, 5e-324, 1.7976931348623157e308, -1.7976931348623157e308]),
    ),
    range_counts=st.one_of(st.integers(0, 3), st.integers(0, MAX_RANGES)),
    excluded=_boundary_lists(_plausible_ids, MAX_EXCLUDED_IDS),
    mmrs=st.one_of(st.just(0.0), st.floats(0.0, 1.0, width=32)),
    caps=st.one_of(st.integers(0, 5), st.integers(0, INT32_MAX)),
    event_types=st.sampled_from(EVENT_TYPES),
    event_counts=st.one_of(st.integers(1, 6), st.just(MAX_SESSION_EVENTS)),
    user_counts=st.one_of(st.integers(1, 6), st.just(1000)),
    windows=st.integers(0, 4),
)
_hostile_texts = st.one_of(
    st.just(""),
    st.text(_chars, max_size=20),
    st.text(_odd_chars, max_size=5),
    _known_ids.map(lambda s: f" {s} "),
    _long(_chars, MAX_ID_CHARS - 1, 1_000),
)
_int32s = st.one_of(
    st.integers(INT32_MIN, INT32_MAX), st.sampled_from([0, -1, 1001, INT32_MIN, INT32_MAX])
)
HOSTILE = Values(
    ids=_hostile_texts,
    # up to twice the server's 1 MiB request limit (RESOURCE_EXHAUSTED)
    single_ids=st.one_of(_hostile_texts, _long(st.sampled_from("x\U0001f600"), 1_000, 500_000)),
    ks=_int32s,
    categories=_boundary_lists(_hostile_texts, MAX_FILTER_VALUES, over=2),
    attributes=st.one_of(
        _hostile_texts,
        st.sampled_from(["x" * 65, "-a", ".a", "a b", "attr_year", "é"]),
        st.from_regex(r"[A-Za-z0-9_.-]{0,80}", fullmatch=True),
    ),
    bounds=st.one_of(st.floats(), st.sampled_from([math.nan, -math.nan, math.inf, -math.inf])),
    range_counts=st.integers(0, MAX_RANGES + 2),
    excluded=_boundary_lists(_hostile_texts, MAX_EXCLUDED_IDS, over=2),
    mmrs=st.one_of(
        st.floats(width=32), st.sampled_from([math.nan, math.inf, -0.0, 1.0000001, -1e-45])
    ),
    caps=_int32s,
    event_types=st.one_of(_hostile_texts, st.sampled_from([t.upper() for t in EVENT_TYPES])),
    event_counts=st.one_of(st.integers(0, 6), st.integers(MAX_SESSION_EVENTS, 1002)),
    user_counts=st.one_of(st.integers(0, 6), st.integers(1000, 1002)),
    windows=_int32s,
)


def _values(draw: st.DrawFn) -> Callable[[], Values]:
    """Per request, how hostile it is: no field (half the requests), about one field in
    ten, or every field."""
    hostility = draw(st.sampled_from([0, 0, 1, 10]), label="hostility")
    return lambda: HOSTILE if draw(st.integers(0, 9)) < hostility else PLAUSIBLE


def _range(draw: st.DrawFn, values: Callable[[], Values]) -> ranking_pb2.NumericRange:
    message = ranking_pb2.NumericRange(attribute=draw(values().attributes))
    low, high = (draw(values().bounds) if draw(st.booleans()) else None for _ in range(2))
    if values() is PLAUSIBLE:  # a well-formed range: some bound, min <= max
        if low is None and high is None:
            low = draw(values().bounds)
        if low is not None and high is not None and low > high:
            low, high = high, low
    if low is not None:
        message.min = low
    if high is not None:
        message.max = high
    return message


def _filter(draw: st.DrawFn, values: Callable[[], Values]) -> ranking_pb2.ItemFilter:
    message = ranking_pb2.ItemFilter(
        categories_any=draw(values().categories), categories_none=draw(values().categories)
    )
    ranges = [_range(draw, values) for _ in range(draw(values().range_counts))]
    if values() is PLAUSIBLE:  # each attribute at most once
        ranges = list({r.attribute: r for r in ranges}.values())
    message.ranges.extend(ranges)
    if draw(st.booleans()):
        message.available = draw(st.booleans())
    return message


def _diversity(draw: st.DrawFn, values: Callable[[], Values]) -> ranking_pb2.Diversity:
    return ranking_pb2.Diversity(mmr=draw(values().mmrs), max_per_category=draw(values().caps))


def _options(draw: st.DrawFn, message: M, values: Callable[[], Values]) -> M:
    """Fill the option fields the request types share (whichever ``message`` has)."""
    fields: Any = message
    descriptor = message.DESCRIPTOR.fields_by_name
    fields.k = draw(values().ks)
    if draw(st.booleans()):
        fields.filter.CopyFrom(_filter(draw, values))
    fields.exclude_item_ids.extend(draw(values().excluded))
    if "exclude_seen" in descriptor and draw(st.booleans()):
        fields.exclude_seen = draw(st.booleans())
    if "diversity" in descriptor and draw(st.booleans()):
        fields.diversity.CopyFrom(_diversity(draw, values))
    if "explain" in descriptor:
        fields.explain = draw(st.booleans())
    return message


def _many(count: int, element: Callable[[], Any]) -> list[Any]:
    """``count`` values: distinct ones when few, else copies of a handful (cheap)."""
    distinct = [element() for _ in range(min(count, 6))]
    return [distinct[i % len(distinct)] for i in range(count)] if distinct else []


@st.composite
def recommend_requests(draw: st.DrawFn) -> ranking_pb2.RecommendRequest:
    values = _values(draw)
    message = ranking_pb2.RecommendRequest(user_id=draw(values().single_ids))
    return _options(draw, message, values)


@st.composite
def session_requests(draw: st.DrawFn) -> ranking_pb2.SessionRequest:
    values = _values(draw)
    events = _many(
        draw(values().event_counts),
        lambda: ranking_pb2.SessionEvent(
            item_id=draw(values().ids), event_type=draw(values().event_types)
        ),
    )
    return _options(draw, ranking_pb2.SessionRequest(events=events), values)


@st.composite
def similar_requests(draw: st.DrawFn) -> ranking_pb2.SimilarItemsRequest:
    values = _values(draw)
    item_id = draw(st.one_of(st.sampled_from(list(CATALOGUE)), values().single_ids))
    return _options(draw, ranking_pb2.SimilarItemsRequest(item_id=item_id), values)


@st.composite
def popular_requests(draw: st.DrawFn) -> ranking_pb2.PopularRequest:
    values = _values(draw)
    message = ranking_pb2.PopularRequest()
    cast(Any, message).window = draw(values().windows)  # any int32: unknown values too
    return _options(draw, message, values)


@st.composite
def batch_requests(draw: st.DrawFn) -> ranking_pb2.BatchRecommendRequest:
    values = _values(draw)
    user_ids = _many(draw(values().user_counts), lambda: draw(values().ids))
    return _options(draw, ranking_pb2.BatchRecommendRequest(user_ids=user_ids), values)


METHODS: dict[str, st.SearchStrategy[Any]] = {
    "Recommend": recommend_requests(),
    "RecommendForSession": session_requests(),
    "SimilarItems": similar_requests(),
    "Popular": popular_requests(),
    "BatchRecommend": batch_requests(),
}

# Raw request bodies: random bytes, and valid requests with bytes flipped, cut or added.
_valid_bodies = st.one_of(*METHODS.values()).map(lambda m: m.SerializeToString())


@st.composite
def raw_bodies(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["random", "mutated", "invalid utf-8"]))
    if kind == "random":
        return draw(st.binary(max_size=200))
    if kind == "invalid utf-8":
        # field 1 (a string in every request but PopularRequest) holding invalid UTF-8
        payload = draw(st.sampled_from([b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"a\x80b"]))
        return bytes([0x0A, len(payload)]) + payload
    body = bytearray(draw(_valid_bodies))
    for _ in range(draw(st.integers(1, 4))):
        operation = draw(st.sampled_from(["flip", "cut", "insert"]))
        position = draw(st.integers(0, len(body)))
        if operation == "flip" and body:
            body[min(position, len(body) - 1)] ^= draw(st.integers(1, 255))
        elif operation == "cut":
            del body[position:]
        else:
            body[position:position] = draw(st.binary(min_size=1, max_size=8))
    return bytes(body)


REQUEST_TYPES: dict[str, type[Message]] = {
    "Recommend": ranking_pb2.RecommendRequest,
    "RecommendForSession": ranking_pb2.SessionRequest,
    "SimilarItems": ranking_pb2.SimilarItemsRequest,
    "Popular": ranking_pb2.PopularRequest,
    "BatchRecommend": ranking_pb2.BatchRecommendRequest,
}
# The smallest bodies no request type parses: field number 0, and invalid UTF-8 in a
# string (field 4 is exclude_item_ids in every request type).
UNDECODABLE = {"field number 0": b"\x00", "invalid utf-8": b"\x22\x01\xff"}

# ------------------------------------------------------------------ calls


async def _status(
    call: Callable[..., Any],
    request: Any,
    allowed: frozenset[grpc.StatusCode] = ALLOWED,
    record: bool = True,
) -> grpc.StatusCode:
    code = grpc.StatusCode.OK
    try:
        await call(request, timeout=30)
    except grpc.aio.AioRpcError as error:
        assert error.code() in allowed, (
            f"{error.code().name}: {error.details()} for {_describe(request)}"
        )
        code = error.code()
    if record:  # hypothesis statistics: only inside a @given test
        event(code.name)
    return code


def _describe(request: Any) -> str:
    text = repr(request) if isinstance(request, bytes) else str(request)
    return text if len(text) < 2_000 else f"{text[:2_000]}... ({len(text)} characters)"


async def _still_serving(client: Api) -> None:
    assert ids(await client.recommend(user_id="alice", k=1)) == ["i2"]


@pytest.mark.parametrize("method", list(METHODS))
@FUZZ
@given(data=st.data())
async def test_generated_requests_get_ok_or_a_client_error(
    api: tuple[Api, RunningServer], method: str, data: st.DataObject
) -> None:
    client, _ = api
    request = data.draw(METHODS[method], label="request")
    await _status(getattr(client.stub, method), request)
    await _still_serving(client)


@pytest.mark.parametrize("method", list(METHODS))
@FUZZ
@given(body=raw_bodies())
async def test_raw_request_bytes_get_ok_or_a_client_error(
    api: tuple[Api, RunningServer], method: str, body: bytes
) -> None:
    client, _ = api
    # No serializers: the bytes go on the wire as they are, the response comes back raw.
    call = client.channel.unary_unary(f"/{SERVICE_NAME}/{method}")
    allowed = ALLOWED
    await _status(call, body, allowed)
    await _still_serving(client)


def _decodes(method: str, body: bytes) -> bool:
    """Whether the server can deserialise ``body`` as the method's request message."""
    request_type = REQUEST_TYPES[method]
    try:
        request_type.FromString(body)
    except DecodeError:
        return False
    return True


# Found by the fuzzer: a range attribute the request check accepted but the store cannot
# use as a payload path (an empty segment: trailing or doubled dot) failed as INTERNAL.
@pytest.mark.parametrize("attribute", ["a.", "a..b", "0.", "a.b"])
@pytest.mark.parametrize("method", ["Recommend", "SimilarItems", "BatchRecommend"])
async def test_range_attribute_with_an_empty_path_segment_is_a_client_error(
    api: tuple[Api, RunningServer], method: str, attribute: str
) -> None:
    client, _ = api
    only = ranking_pb2.ItemFilter(ranges=[ranking_pb2.NumericRange(attribute=attribute, min=0)])
    request = {
        "Recommend": ranking_pb2.RecommendRequest(user_id="alice", k=1, filter=only),
        "SimilarItems": ranking_pb2.SimilarItemsRequest(item_id="i1", k=1, filter=only),
        "BatchRecommend": ranking_pb2.BatchRecommendRequest(user_ids=["alice"], k=1, filter=only),
    }[method]
    code = await _status(getattr(client.stub, method), request, record=False)
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    await _still_serving(client)


# Found by the fuzzer: grpc's own deserializer answered UNKNOWN with no details.
@pytest.mark.parametrize("body", list(UNDECODABLE.values()), ids=list(UNDECODABLE))
@pytest.mark.parametrize("method", list(METHODS))
async def test_undecodable_request_is_invalid_argument(
    api: tuple[Api, RunningServer], method: str, body: bytes
) -> None:
    client, _ = api
    assert not _decodes(method, body)
    call = client.channel.unary_unary(f"/{SERVICE_NAME}/{method}")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call(body, timeout=10)
    await _still_serving(client)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, caught.value.code()
