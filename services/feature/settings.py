"""Feature service settings (env prefix RECSYS_FEATURE_)."""

from __future__ import annotations

import math
from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from recsys.events import DEFAULT_EVENT_WEIGHTS, EVENT_TYPES
from recsys.settings import KafkaSettings, ObservabilitySettings


class FeatureSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="RECSYS_FEATURE_", extra="ignore")

    app_id: str = Field("recsys-feature", description="faust app id: consumer group, tables")
    max_sequence_length: int = Field(50, ge=1, le=1_000, description="interactions kept")
    max_seen_items: int = Field(1_000, ge=0, description="distinct items kept for exclusion")
    dedupe_window: int = Field(
        500, ge=1, description="recent event ids kept per user (as 12-character digests)"
    )
    event_weights: dict[str, float] = Field(
        default_factory=DEFAULT_EVENT_WEIGHTS.copy,
        description="event types kept and their weight in item popularity (JSON object);"
        " a type left out, or weighted 0, is ignored",
    )
    batch_size: int = Field(1_000, ge=1, description="events applied per batch")
    batch_wait_ms: int = Field(10, ge=1, description="longest wait to fill a batch")
    stall_reread_seconds: float = Field(
        5.0,
        gt=0,
        description="read a partition again when events it handed on have reached no batch"
        " for this long (faust can drop a message on its way to the agent)",
    )
    data_dir: Path = Field(Path(".data/feature"), description="faust worker data folder")
    producer_max_batch_size: int = Field(
        16_384,
        ge=1,
        description="bytes per record batch of the user-state changelog, dead letters"
        " and re-keyed events; 1 makes Tansu's recovery of the user state exact",
    )
    sequences_max_batch_size: int = Field(
        262_144, ge=1, description="bytes per record batch of user-sequences"
    )
    popularity_max_batch_size: int = Field(
        262_144,
        ge=1,
        description="bytes per record batch of item-popularity (ranking's input and the"
        " popularity table's changelog); 1 makes Tansu's recovery of the table exact",
    )

    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    obs: ObservabilitySettings = Field(default_factory=ObservabilitySettings)

    @field_validator("event_weights")
    @classmethod
    def _known_event_types(cls, weights: dict[str, float]) -> dict[str, float]:
        unknown = sorted(set(weights) - set(EVENT_TYPES))
        if unknown:
            raise ValueError(f"unknown event types {unknown}; known: {list(EVENT_TYPES)}")
        bad = sorted(t for t, w in weights.items() if not (math.isfinite(w) and w >= 0))
        if bad:
            raise ValueError(f"weights of {bad} must be finite and >= 0")
        kept = {t: float(w) for t, w in weights.items() if w > 0}
        if not kept:
            raise ValueError("keep at least one event type (a weight above 0)")
        return kept
