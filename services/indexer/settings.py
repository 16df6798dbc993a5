"""Indexer settings (env prefix RECSYS_INDEXER_)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from recsys.settings import KafkaSettings, ObservabilitySettings, StoreSettings


class IndexerSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="RECSYS_INDEXER_", extra="ignore")

    group_id: str = Field("recsys-indexer", description="consumer group of the vector topics")
    batch_size: int = Field(1_000, ge=1, description="messages written per store batch")
    max_wait_ms: int = Field(20, ge=0, description="longest wait to fill a batch")
    items_alias: str = Field("items", description="alias ranking reads items through")
    users_collection: str = Field("users", description="collection of user vectors")
    keep_versions: int = Field(2, ge=1, description="item collections kept (serving + older)")

    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    store: StoreSettings = Field(default_factory=StoreSettings)
    obs: ObservabilitySettings = Field(default_factory=ObservabilitySettings)
