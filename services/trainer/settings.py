"""Trainer settings (env prefix RECSYS_TRAINER_)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from recsys.settings import ArtifactSettings, KafkaSettings, ObservabilitySettings
from services.trainer.model_settings import ModelSettings


class TrainerSettings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="RECSYS_TRAINER_", env_nested_delimiter="__", extra="ignore"
    )

    group_id: str = Field("recsys-trainer", description="consumer group (one trainer at a time)")
    min_interactions: int = Field(1_000, ge=1, description="interactions before a first model")
    retrain_threshold: int = Field(
        10_000, ge=1, description="new interactions that trigger a retrain"
    )
    quiet_seconds: float = Field(
        5.0, ge=0, description="input idle this long before training, so a bulk load is whole"
    )
    interval_seconds: float = Field(
        0, ge=0, description="retrain this often when anything new arrived (0 = off)"
    )
    gate_tolerance: float = Field(
        0.01,
        ge=0,
        le=1,
        allow_inf_nan=False,
        description="promote a new version unless its validation masked NDCG@10 is below the "
        "serving version's by more than this (absolute)",
    )
    warm_start: bool = Field(
        True, description="start from the serving version's weights when they fit"
    )
    fetch_interval_ms: int = Field(
        500,
        ge=0,
        description="while events flow, fetch them at most this often (0 = as each record"
        " batch lands): the trainer reads in bulk and needs no sub-second hop",
    )
    text_cache_dir: Path | None = Field(
        None, description="item-text embedding cache; default <artifacts root>/text-cache"
    )
    model: ModelSettings = Field(default_factory=ModelSettings)

    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    artifacts: ArtifactSettings = Field(default_factory=ArtifactSettings)
    obs: ObservabilitySettings = Field(default_factory=ObservabilitySettings)
