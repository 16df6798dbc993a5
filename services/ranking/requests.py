"""Request validation: protobuf requests in, checked plain values out.

Every check raises :class:`InvalidArgument` with a message that names the field and says
what to send instead; the servicer answers it as INVALID_ARGUMENT. Nothing past this
module looks at a raw request, so limits live in one place.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from recsys.events import EVENT_TYPES
from recsys.v1 import ranking_pb2
from recsys.vectorstore.base import Filter, Range

MAX_ID_CHARS = 256
MAX_EXCLUDED_IDS = 1000
MAX_SESSION_EVENTS = 1000
MAX_FILTER_VALUES = 100
MAX_CATEGORY_CHARS = 200
MAX_RANGES = 16
# No dots: the engines read a dot as a path into nested payload, and attributes are flat.
_ATTRIBUTE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]{0,63}")
# Item payload keys: the indexer stores catalogue attributes as attr_<name>.
CATEGORIES_KEY = "categories"
ATTRIBUTE_PREFIX = "attr_"
AVAILABLE_KEY = f"{ATTRIBUTE_PREFIX}available"


class InvalidArgument(ValueError):
    """A request field is malformed; the message names it."""


@dataclass(frozen=True)
class Options:
    """What shapes a ranked list, shared by every method."""

    k: int
    filter: Filter | None = None
    exclude_item_ids: frozenset[str] = frozenset()
    exclude_seen: bool = True
    mmr: float = 0.0
    max_per_category: int = 0
    explain: bool = False

    @property
    def diversified(self) -> bool:
        return self.mmr > 0 or self.max_per_category > 0


@dataclass(frozen=True)
class SessionEvent:
    item_id: str
    event_type: str


@dataclass(frozen=True)
class Limits:
    max_k: int
    max_batch_users: int = 1000


@dataclass(frozen=True)
class ParsedBatch:
    user_ids: list[str]
    options: Options
    unique_ids: list[str] = field(default_factory=list)


def check_id(value: str, name: str) -> str:
    if not value:
        raise InvalidArgument(f"{name} is empty: set it to a non-empty id")
    if len(value) > MAX_ID_CHARS:
        raise InvalidArgument(f"{name} is {len(value)} characters long: use at most {MAX_ID_CHARS}")
    return value


def check_k(k: int, limits: Limits) -> int:
    if not 1 <= k <= limits.max_k:
        raise InvalidArgument(f"k is {k}: ask for between 1 and {limits.max_k} items")
    return k


def item_filter(message: ranking_pb2.ItemFilter, name: str = "filter") -> Filter | None:
    """The store filter for a request's ``ItemFilter``; None when it sets nothing."""
    any_of = _categories(message.categories_any, f"{name}.categories_any")
    none_of = _categories(message.categories_none, f"{name}.categories_none")
    if len(message.ranges) > MAX_RANGES:
        raise InvalidArgument(
            f"{name}.ranges has {len(message.ranges)} entries: use at most {MAX_RANGES}"
        )
    ranges: dict[str, Range] = {}
    for index, entry in enumerate(message.ranges):
        where = f"{name}.ranges[{index}]"
        if not _ATTRIBUTE_NAME.fullmatch(entry.attribute):
            raise InvalidArgument(
                f"{where}.attribute is {entry.attribute!r}: name an item attribute "
                "(1-64 letters, digits, '_' or '-')"
            )
        key = ATTRIBUTE_PREFIX + entry.attribute
        if key in ranges:
            raise InvalidArgument(f"{where}.attribute {entry.attribute!r} appears twice")
        low = entry.min if entry.HasField("min") else None
        high = entry.max if entry.HasField("max") else None
        if low is None and high is None:
            raise InvalidArgument(f"{where} sets neither min nor max: set at least one")
        for bound, value in (("min", low), ("max", high)):
            if value is not None and not math.isfinite(value):
                raise InvalidArgument(f"{where}.{bound} is {value}: use a finite number")
        if low is not None and high is not None and low > high:
            raise InvalidArgument(f"{where}: min {low} is greater than max {high}")
        ranges[key] = Range(gte=low, lte=high)
    equals: dict[str, bool | int | str] = {}
    if message.HasField("available"):
        equals[AVAILABLE_KEY] = message.available
    flt = Filter(
        any_of={CATEGORIES_KEY: any_of} if any_of else {},
        none_of={CATEGORIES_KEY: none_of} if none_of else {},
        ranges=ranges,
        equals=equals,
    )
    return None if flt.is_empty() else flt


def _categories(values: Sequence[str], name: str) -> list[str]:
    if len(values) > MAX_FILTER_VALUES:
        raise InvalidArgument(f"{name} has {len(values)} values: use at most {MAX_FILTER_VALUES}")
    for index, value in enumerate(values):
        if not value or len(value) > MAX_CATEGORY_CHARS:
            raise InvalidArgument(
                f"{name}[{index}] is {len(value)} characters long: use 1 to {MAX_CATEGORY_CHARS}"
            )
    return list(dict.fromkeys(values))


def excluded_ids(values: Sequence[str], name: str = "exclude_item_ids") -> frozenset[str]:
    if len(values) > MAX_EXCLUDED_IDS:
        raise InvalidArgument(f"{name} has {len(values)} ids: exclude at most {MAX_EXCLUDED_IDS}")
    for index, value in enumerate(values):
        check_id(value, f"{name}[{index}]")
    return frozenset(values)


def diversity(message: ranking_pb2.Diversity, k: int) -> tuple[float, int]:
    mmr = message.mmr
    if not (math.isfinite(mmr) and 0.0 <= mmr <= 1.0):
        raise InvalidArgument(f"diversity.mmr is {mmr}: use a strength between 0 and 1")
    cap = message.max_per_category
    if cap < 0:
        raise InvalidArgument(
            f"diversity.max_per_category is {cap}: use 0 (no cap) or a positive number"
        )
    return mmr, min(cap, k)


def _options(
    request: ranking_pb2.RecommendRequest
    | ranking_pb2.SessionRequest
    | ranking_pb2.BatchRecommendRequest,
    limits: Limits,
) -> Options:
    k = check_k(request.k, limits)
    mmr, cap = diversity(request.diversity, k)
    return Options(
        k=k,
        filter=item_filter(request.filter),
        exclude_item_ids=excluded_ids(request.exclude_item_ids),
        exclude_seen=request.exclude_seen if request.HasField("exclude_seen") else True,
        mmr=mmr,
        max_per_category=cap,
        explain=request.explain,
    )


def recommend(request: ranking_pb2.RecommendRequest, limits: Limits) -> tuple[str, Options]:
    user_id = check_id(request.user_id, "user_id")
    return user_id, _options(request, limits)


def session(
    request: ranking_pb2.SessionRequest, limits: Limits
) -> tuple[list[SessionEvent], Options]:
    if not request.events:
        raise InvalidArgument("events is empty: send the session's events, oldest first")
    if len(request.events) > MAX_SESSION_EVENTS:
        raise InvalidArgument(
            f"events has {len(request.events)} entries: send at most {MAX_SESSION_EVENTS} "
            "(the newest)"
        )
    events = []
    for index, event in enumerate(request.events):
        check_id(event.item_id, f"events[{index}].item_id")
        if event.event_type not in EVENT_TYPES:
            raise InvalidArgument(
                f"events[{index}].event_type is {event.event_type!r}: use one of "
                f"{', '.join(EVENT_TYPES)}"
            )
        events.append(SessionEvent(event.item_id, event.event_type))
    return events, _options(request, limits)


def similar(request: ranking_pb2.SimilarItemsRequest, limits: Limits) -> tuple[str, Options]:
    item_id = check_id(request.item_id, "item_id")
    k = check_k(request.k, limits)
    mmr, cap = diversity(request.diversity, k)
    return item_id, Options(
        k=k,
        filter=item_filter(request.filter),
        exclude_item_ids=excluded_ids(request.exclude_item_ids) | {item_id},
        exclude_seen=False,
        mmr=mmr,
        max_per_category=cap,
    )


WINDOWS: dict[int, str] = {
    ranking_pb2.POPULARITY_WINDOW_UNSPECIFIED: "all_time",
    ranking_pb2.POPULARITY_WINDOW_ALL_TIME: "all_time",
    ranking_pb2.POPULARITY_WINDOW_HOUR: "hour",
    ranking_pb2.POPULARITY_WINDOW_DAY: "day",
    ranking_pb2.POPULARITY_WINDOW_WEEK: "week",
}


def popular(request: ranking_pb2.PopularRequest, limits: Limits) -> tuple[str, Options]:
    window = WINDOWS.get(request.window)
    if window is None:
        raise InvalidArgument(
            f"window is {request.window}: use one of "
            + ", ".join(ranking_pb2.PopularityWindow.Name(w) for w in WINDOWS)
        )
    k = check_k(request.k, limits)
    return window, Options(
        k=k,
        filter=item_filter(request.filter),
        exclude_item_ids=excluded_ids(request.exclude_item_ids),
        exclude_seen=False,
    )


def batch(request: ranking_pb2.BatchRecommendRequest, limits: Limits) -> ParsedBatch:
    if not request.user_ids:
        raise InvalidArgument("user_ids is empty: send at least one user id")
    if len(request.user_ids) > limits.max_batch_users:
        raise InvalidArgument(
            f"user_ids has {len(request.user_ids)} ids: send at most "
            f"{limits.max_batch_users} per call"
        )
    user_ids = [check_id(u, f"user_ids[{i}]") for i, u in enumerate(request.user_ids)]
    return ParsedBatch(
        user_ids=user_ids,
        options=_options(request, limits),
        unique_ids=list(dict.fromkeys(user_ids)),
    )
