"""Event schemas: the contract of every Kafka topic, defined once.

Clients publish :class:`InteractionEvent` and :class:`ItemEvent`; the services exchange
the others. Every event carries an ``event_id`` (idempotency) and a ``timestamp`` in
seconds since the Unix epoch (UTC, fractions allowed). Unknown fields are ignored so that
producers can add fields without breaking consumers. JSON Schema files generated from
these models live in ``recsys/schemas/`` for non-Python clients (``python -m
recsys.schemas`` regenerates them; a test checks they are current).

Vectors travel as base64 of little-endian float32, which is exact and about four times
smaller and faster to parse than a JSON list of floats.
"""

from __future__ import annotations

import base64
import math
from typing import Annotated, Any, Literal, Self, TypeVar

import numpy as np
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

EventType = Literal["view", "click", "add_to_cart", "purchase", "rating"]
EVENT_TYPES: tuple[EventType, ...] = ("view", "click", "add_to_cart", "purchase", "rating")
# Index 0 is padding in model inputs, so event types are numbered from 1.
EVENT_TYPE_IDS: dict[str, int] = {name: i + 1 for i, name in enumerate(EVENT_TYPES)}
# What an event of each type says about a user's interest, relative to a view: the
# default of the trainer's reward and type weights and of the feature service's
# popularity weights (each a setting of its own).
DEFAULT_EVENT_WEIGHTS: dict[str, float] = {
    "view": 1.0,
    "click": 1.5,
    "add_to_cart": 2.5,
    "purchase": 4.0,
    "rating": 1.0,
}

MAX_ID_LENGTH = 256
MAX_TEXT_LENGTH = 10_000
MAX_EVENT_BYTES = 1_000_000

Identifier = Annotated[str, Field(min_length=1, max_length=MAX_ID_LENGTH)]
# Seconds since the epoch, 1970 .. 2100 (MovieLens dates from 1997).
Timestamp = Annotated[float, Field(ge=0, le=4_102_444_800, allow_inf_nan=False, strict=True)]


class _Event(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True, str_strip_whitespace=True)

    def to_bytes(self) -> bytes:
        return self.model_dump_json(exclude_none=True).encode()


class InteractionEvent(_Event):
    """A user did something with an item. Topic ``interactions``, key ``user_id``."""

    event_id: Identifier
    user_id: Identifier
    item_id: Identifier
    event_type: EventType
    timestamp: Timestamp
    value: float | None = Field(
        None,
        allow_inf_nan=False,
        strict=True,
        description="rating value, price paid, watch time, ...",
    )


FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]
AttributeValue = str | FiniteFloat | bool


class ItemEvent(_Event):
    """A catalogue change. Topic ``items``, key ``item_id``. ``op=delete`` needs no text."""

    event_id: Identifier
    item_id: Identifier
    timestamp: Timestamp
    op: Literal["upsert", "delete"] = "upsert"
    title: str = Field("", max_length=1_000)
    description: str = Field("", max_length=MAX_TEXT_LENGTH)
    categories: list[Annotated[str, Field(min_length=1, max_length=200)]] = Field(
        default_factory=list, max_length=100
    )
    attributes: dict[str, AttributeValue] = Field(default_factory=dict, max_length=100)

    @model_validator(mode="after")
    def _upsert_needs_text(self) -> ItemEvent:
        if self.op == "upsert" and not (self.title or self.description):
            raise ValueError("an upsert needs a title or a description")
        return self

    def text(self) -> str:
        """The text the item tower encodes: title, categories, description, attributes."""
        parts = [self.title]
        if self.categories:
            parts.append(", ".join(self.categories))
        if self.description:
            parts.append(self.description)
        parts.extend(f"{k}: {_format_attribute(v)}" for k, v in sorted(self.attributes.items()))
        return ". ".join(p.rstrip(". ") for p in parts if p.strip(". "))

    def payload(self) -> dict[str, Any]:
        """What the vector store keeps beside the vector, for filters and display."""
        return {
            "item_id": self.item_id,
            "title": self.title,
            "categories": list(self.categories),
            **{f"attr_{k}": v for k, v in self.attributes.items()},
        }


def _format_attribute(value: AttributeValue) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


class SequenceEntry(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    event_id: Identifier
    item_id: Identifier
    event_type: EventType
    timestamp: Timestamp
    value: FiniteFloat | None = None


class UserSequence(_Event):
    """A user's recent interactions, oldest first. Topic ``user-sequences``, key ``user_id``.

    ``seen_item_ids`` is the bounded set of items the user interacted with, used to
    exclude them from rankings; it is longer than ``entries``.
    """

    event_id: Identifier
    user_id: Identifier
    entries: list[SequenceEntry]
    seen_item_ids: list[Identifier] = Field(default_factory=list)
    last_event_id: Identifier
    last_event_timestamp: Timestamp


def encode_vector(vector: np.ndarray | list[float]) -> str:
    array = np.asarray(vector, dtype="<f4")
    if array.ndim != 1:
        raise ValueError(f"a vector must be one-dimensional, got shape {array.shape}")
    return base64.b64encode(array.tobytes()).decode("ascii")


def decode_vector(encoded: str) -> np.ndarray:
    raw = base64.b64decode(encoded, validate=True)
    if len(raw) % 4:
        raise ValueError("vector bytes are not a whole number of float32 values")
    return np.frombuffer(raw, dtype="<f4").astype(np.float32)


class _VectorEvent(_Event):
    event_id: Identifier
    vector: str = Field("", description="base64 of little-endian float32; empty if deleted")
    model_version: str

    # Decoded once, while validating, for the consumers' hot path.
    _decoded: np.ndarray | None = PrivateAttr(None)

    @model_validator(mode="after")
    def _vector_is_finite(self) -> Self:
        if self.vector:
            array = decode_vector(self.vector)
            if not np.isfinite(array).all():
                raise ValueError("vector has NaN or infinite values")
            self._decoded = array
        return self

    def array(self) -> np.ndarray:
        return self._decoded if self._decoded is not None else decode_vector(self.vector)


class UserVector(_VectorEvent):
    """Topic ``user-vectors``, key ``user_id``."""

    user_id: Identifier
    recent_item_ids: list[Identifier] = Field(default_factory=list)
    recent_event_types: list[EventType] = Field(
        default_factory=list,
        description="event type of each recent item; lets ranking re-encode the user "
        "through Embed while a new model's vectors are not written yet",
    )
    seen_item_ids: list[Identifier] = Field(default_factory=list)
    event_timestamp: Timestamp = Field(description="timestamp of the newest event it reflects")

    @model_validator(mode="after")
    def _needs_vector(self) -> UserVector:
        if not self.vector:
            raise ValueError("a user vector needs a vector")
        return self


class ItemVector(_VectorEvent):
    """Topic ``item-vectors``, key ``item_id``. ``deleted`` removes it from the index."""

    item_id: Identifier
    timestamp: Timestamp = Field(description="time of the catalogue change or training run")
    payload: dict[str, Any] = Field(default_factory=dict)
    deleted: bool = False

    @field_validator("payload")
    @classmethod
    def _finite_numbers(cls, payload: dict[str, Any]) -> dict[str, Any]:
        # JSON has no NaN/Infinity: to_bytes would turn them into null
        for key, value in payload.items():
            if isinstance(value, float) and not math.isfinite(value):
                raise ValueError(f"payload[{key!r}] is {value}: use a finite number")
        return payload

    @model_validator(mode="after")
    def _live_needs_vector(self) -> ItemVector:
        if not self.deleted and not self.vector:
            raise ValueError("a live item vector needs a vector")
        return self


PopularityWindow = Literal["hour", "day", "week"]
POPULARITY_WINDOWS: tuple[PopularityWindow, ...] = ("hour", "day", "week")


class ItemPopularity(_Event):
    """One feature partition's time-decayed interaction count of an item.

    Topic ``item-popularity`` (compacted), key ``<partition>/<item_id>``, written to
    partition ``partition``: the feature worker that owns that partition of
    ``interactions`` publishes it and recovers it from there. An item's popularity is
    the log-sum of its records over all partitions (see :mod:`recsys.popularity`).
    """

    item_id: Identifier
    partition: int = Field(ge=0)
    log2_scores: dict[PopularityWindow, FiniteFloat] = Field(
        description="per window, log2 of the sum of weight * 2 ** (timestamp / half-life)"
    )
    events: int = Field(ge=1, description="interactions counted")
    latest_timestamp: Timestamp = Field(description="the newest interaction counted")
    through_offset: int = Field(
        ge=0, description="the highest offset of this partition of interactions counted"
    )

    @field_validator("log2_scores")
    @classmethod
    def _every_window(cls, scores: dict[str, float]) -> dict[str, float]:
        missing = [w for w in POPULARITY_WINDOWS if w not in scores]
        if missing:
            raise ValueError(f"missing windows {missing}")
        return scores


class ModelUpdate(_Event):
    """Topic ``model-updates``, key the model name: serve this version now.

    The last announcement in the topic wins, not the highest version: a rollback is a
    later announcement of an older version (whose item vectors are published again first).
    """

    event_id: Identifier
    model_name: Identifier
    version: Identifier
    artifact_path: str = Field(min_length=1, description="folder of the version's artifact")
    item_count: int = Field(ge=0, description="item vectors published for this version")
    vector_size: int = Field(ge=1)
    metrics: dict[str, FiniteFloat] = Field(default_factory=dict)
    created_at: Timestamp
    announced_at: Timestamp | None = Field(None, description="when this announcement was made")
    reason: str | None = Field(
        None, max_length=200, description="why: trained (passed the gate), promote, rollback"
    )


class TrainRequest(_Event):
    """Topic ``trainer-commands``: asks the trainer for a training run now (``recsys train``).

    Requests that arrive while a run is in progress are merged into one pending run.
    """

    event_id: Identifier
    requested_at: Timestamp
    reason: str = Field("", max_length=1_000, description="free text for the trainer's log")


class DeadLetter(_Event):
    """Topic ``dead-letter``, key the original key: a message no consumer could use."""

    event_id: Identifier = Field(description="<source topic>:<partition>:<offset>")
    reason: str
    source_topic: str
    partition: int
    offset: int
    service: str
    original_value_b64: str = Field(description="the original value, its first 256 KiB at most")
    original_size: int = Field(0, ge=0, description="bytes of the original value")
    failed_at: Timestamp


E = TypeVar("E", bound=BaseModel)


class InvalidEvent(ValueError):
    """Raised by :func:`parse_event`; its message is the dead-letter reason."""


def _path_part(part: str | int) -> str:
    text = str(part)
    return text if text.isprintable() else repr(text)[1:-1]


def parse_event(model: type[E], raw: bytes | None) -> E:
    """Validate raw message bytes into ``model``; any problem raises :class:`InvalidEvent`."""
    if raw is None:
        raise InvalidEvent("empty message (tombstone or null value)")
    if len(raw) > MAX_EVENT_BYTES:
        raise InvalidEvent(f"message of {len(raw)} bytes exceeds {MAX_EVENT_BYTES}")
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        problems = "; ".join(
            # repr-escape the path: a key may hold a newline, and a reason is one line
            f"{'.'.join(_path_part(p) for p in err['loc']) or '$'}: {err['msg']}"
            for err in exc.errors(include_url=False)[:5]
        )
        raise InvalidEvent(f"invalid {model.__name__}: {problems}") from None
    except (UnicodeDecodeError, ValueError) as exc:
        raise InvalidEvent(f"undecodable {model.__name__}: {exc}") from None
