"""Settings of the ranking service, read from ``RECSYS_RANKING_*`` environment variables.

The shared groups keep their own prefixes: ``RECSYS_KAFKA_*``, ``RECSYS_STORE_*``,
``RECSYS_ARTIFACTS_*`` and ``RECSYS_OBS_*`` (see ``recsys.settings``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from recsys.lifecycle import EventLoop
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
    event_loop: EventLoop = Field(
        "uvloop", description="asyncio event loop: uvloop (faster) or the standard asyncio"
    )
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

    max_batch_users: int = Field(1000, ge=1, description="most user ids in one BatchRecommend")
    max_request_bytes: int = Field(
        1 << 20, ge=1024, description="largest request message accepted (bytes)"
    )
    diversity_pool_factor: int = Field(
        4, ge=1, le=50, description="with diversity, candidates searched per item asked for"
    )
    explain_history: int = Field(
        50, ge=1, le=1000, description="newest history items an explanation compares with"
    )
    inference_target: str = Field(
        "localhost:50052", description="host:port of the inference service's Embed API"
    )
    embed_timeout_s: float = Field(
        0.5, gt=0, description="deadline of one Embed call (capped by the caller's deadline)"
    )
    trending: bool = Field(
        True,
        description="read the feature service's item-popularity topic for trending Popular",
    )
    trending_fetch_interval_ms: int = Field(
        500,
        ge=0,
        description="while popularity records flow, fetch them at most this often (0 = as"
        " each record batch lands): trending needs no sub-second hop",
    )
    auth_tokens: Annotated[list[SecretStr], NoDecode] = Field(
        default_factory=list,
        description=(
            "bearer tokens accepted (comma-separated); empty = no authentication. "
            "Health checks never need one"
        ),
    )
    tls_cert_file: Path | None = Field(None, description="PEM certificate chain: serve TLS")
    tls_key_file: Path | None = Field(None, description="PEM private key of the certificate")
    tls_client_ca_file: Path | None = Field(
        None, description="PEM CA bundle: require client certificates signed by it (mTLS)"
    )

    @field_validator("auth_tokens", mode="before")
    @classmethod
    def _split_tokens(cls, value: object) -> object:
        if isinstance(value, str):
            return [t.strip() for t in value.split(",") if t.strip()]
        return value

    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    store: StoreSettings = Field(default_factory=StoreSettings)
    artifacts: ArtifactSettings = Field(default_factory=ArtifactSettings)
    obs: ObservabilitySettings = Field(default_factory=ObservabilitySettings)
