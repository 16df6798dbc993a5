"""Settings of the ranking service, read from ``RECSYS_RANKING_*`` environment variables.

The shared groups keep their own prefixes: ``RECSYS_KAFKA_*``, ``RECSYS_STORE_*``,
``RECSYS_ARTIFACTS_*`` and ``RECSYS_OBS_*`` (see ``recsys.settings``).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from recsys.settings import (
    ArtifactSettings,
    KafkaSettings,
    ObservabilitySettings,
    StoreSettings,
)


class RankingSettings(BaseSettings):
    """Everything ``python -m services.ranking`` needs; every field has a working default."""

    model_config = SettingsConfigDict(env_prefix="RECSYS_RANKING_", extra="ignore")

    host: str = Field("0.0.0.0", description="address the gRPC server binds")
    port: int = Field(50051, ge=0, le=65535, description="gRPC port; 0 picks a free one")
    grace_seconds: float = Field(
        10.0, ge=0, description="on SIGTERM, how long in-flight calls may take to finish"
    )
    max_k: int = Field(1000, ge=1, description="largest k a request may ask for")
    max_concurrent_rpcs: int = Field(
        0, ge=0, description="calls served at once before new ones are refused; 0 = no limit"
    )
    items_alias: str = Field(
        "items", description="alias naming the serving item collection, items_<version>"
    )
    users_collection: str = Field("users", description="collection of user vectors")
    alias_refresh_seconds: float = Field(
        1.0, gt=0, description="how long a resolved serving version is trusted"
    )
    store_calls: Literal["auto", "inline", "thread"] = Field(
        "auto",
        description=(
            "where per-request store reads run: 'inline' on the event loop, 'thread' in "
            "worker threads, 'auto' inline for the embedded store and threads for a server"
        ),
    )
    popular_depth: int = Field(
        5000,
        ge=1,
        description="popular items loaded per version for the fallback (seen ones skipped)",
    )

    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    store: StoreSettings = Field(default_factory=StoreSettings)
    artifacts: ArtifactSettings = Field(default_factory=ArtifactSettings)
    obs: ObservabilitySettings = Field(default_factory=ObservabilitySettings)
