"""Feature service settings (env prefix RECSYS_FEATURE_)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from recsys.settings import KafkaSettings, ObservabilitySettings


class FeatureSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="RECSYS_FEATURE_", extra="ignore")

    app_id: str = Field("recsys-feature", description="faust app id: consumer group, tables")
    max_sequence_length: int = Field(50, ge=1, le=1_000, description="interactions kept")
    max_seen_items: int = Field(1_000, ge=0, description="distinct items kept for exclusion")
    dedupe_window: int = Field(
        500, ge=1, description="recent event ids kept per user (as 12-character digests)"
    )
    batch_size: int = Field(1_000, ge=1, description="events applied per batch")
    batch_wait_ms: int = Field(10, ge=1, description="longest wait to fill a batch")
    data_dir: Path = Field(Path(".data/feature"), description="faust worker data folder")
    producer_linger_ms: int = Field(
        5, ge=0, description="linger of faust's producer (dead letters, re-keyed events)"
    )
    producer_max_batch_size: int = Field(
        16_384,
        ge=1,
        description="bytes per record batch of the worker's producers; 1 makes Tansu's"
        " changelog recovery exact",
    )

    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    obs: ObservabilitySettings = Field(default_factory=ObservabilitySettings)
