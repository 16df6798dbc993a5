"""Time-decayed item popularity: the arithmetic, and the ``item-popularity`` records.

Each window has a half-life (hour, day, week): an interaction of age ``a`` and weight
``w`` counts ``w * 2 ** (-a / half_life)``. Scores are kept in the log domain,
``L = log2(sum w * 2 ** (t / h))``, so they never overflow and an update needs no "now":
the decayed score at any time is ``2 ** (L - now / h)``, and the order of items does not
depend on when it is read. Two partial scores add up as ``logaddexp2(L1, L2)``.

The feature workers are partitioned by user, so each counts the events of the partitions
it owns: a *partial* score per (partition, item), published as an
:class:`~recsys.events.ItemPopularity` record. A reader (ranking) sums an item's partials
over partitions.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import orjson

from recsys.events import POPULARITY_WINDOWS

HALF_LIVES_S: Mapping[str, float] = {"hour": 3600.0, "day": 86_400.0, "week": 604_800.0}
_INVERSE_HALF_LIVES = tuple(1.0 / HALF_LIVES_S[w] for w in POPULARITY_WINDOWS)

Scores = tuple[float, ...]  # log2 scores, one per window of POPULARITY_WINDOWS


def logaddexp2(a: float, b: float) -> float:
    """``log2(2 ** a + 2 ** b)`` without overflow; ``-inf`` is the empty sum."""
    if a < b:
        a, b = b, a
    if b == -math.inf:
        return a
    return a + math.log2(1.0 + 2.0 ** (b - a))


def log2_increment(timestamp: float, weight: float) -> Scores:
    """The log2 scores of one interaction (``weight`` > 0) at ``timestamp``."""
    base = math.log2(weight)
    return tuple(base + timestamp * inverse for inverse in _INVERSE_HALF_LIVES)


def add_scores(a: Sequence[float], b: Sequence[float]) -> Scores:
    return tuple(logaddexp2(x, y) for x, y in zip(a, b, strict=True))


def popularity_key(partition: int, item_id: str) -> str:
    return f"{partition}/{item_id}"


def parse_popularity_key(key: bytes) -> tuple[int, str]:
    """``(partition, item_id)`` of an ``item-popularity`` key; ValueError if malformed."""
    partition, _, item_id = key.decode().partition("/")
    if not item_id:
        raise ValueError(f"not a <partition>/<item_id> key: {key!r}")
    return int(partition), item_id


class PartialCount:
    """One partition's count of one item: the published record plus events added since.

    ``through_offset`` is the highest offset of the partition's ``interactions`` counted,
    so a worker replaying messages after a crash can tell which ones the published record
    already holds: those at or below ``recorded_through``, the record's own.
    """

    __slots__ = (
        "added",
        "events",
        "latest_timestamp",
        "recorded_through",
        "scores",
        "through_offset",
    )

    def __init__(self) -> None:
        self.scores: Scores = (-math.inf,) * len(POPULARITY_WINDOWS)
        self.events = 0
        self.latest_timestamp = 0.0
        self.through_offset = -1
        self.recorded_through = -1
        self.added = 0  # events added since the record was read

    @classmethod
    def from_record(cls, record: bytes | None) -> PartialCount:
        """The count an ``ItemPopularity`` record (its bytes, or None) holds."""
        counted = cls()
        if record is not None:
            fields = orjson.loads(record)
            counted.scores = tuple(fields["log2_scores"][w] for w in POPULARITY_WINDOWS)
            counted.events = fields["events"]
            counted.latest_timestamp = fields["latest_timestamp"]
            counted.through_offset = counted.recorded_through = fields["through_offset"]
        return counted

    def holds(self, offset: int) -> bool:
        """Whether the record this count was read from counted ``offset`` already."""
        return offset <= self.recorded_through

    def add(self, timestamp: float, weight: float, offset: int = -1) -> None:
        self.scores = add_scores(self.scores, log2_increment(timestamp, weight))
        self.events += 1
        self.added += 1
        self.latest_timestamp = max(self.latest_timestamp, timestamp)
        self.through_offset = max(self.through_offset, offset)

    def to_record(self, item_id: str, partition: int) -> bytes:
        """The ``ItemPopularity`` record, serialised without re-validation."""
        return orjson.dumps(
            {
                "item_id": item_id,
                "partition": partition,
                "log2_scores": dict(zip(POPULARITY_WINDOWS, self.scores, strict=True)),
                "events": self.events,
                "latest_timestamp": self.latest_timestamp,
                "through_offset": self.through_offset,
            }
        )
