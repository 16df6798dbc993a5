"""Settings shared by every service, read from environment variables.

Each service has one settings object (``services/<name>/settings.py``) that embeds the
shared groups below. Every field is documented by its ``description`` and can be set
through the environment variable named by its group's prefix plus the field name in
upper case, e.g. ``RECSYS_KAFKA_BOOTSTRAP_SERVERS``.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class KafkaSettings(BaseSettings):
    """How to reach the broker. Defaults are Kafka's own; local runs shorten the timeouts."""

    model_config = SettingsConfigDict(env_prefix="RECSYS_KAFKA_", extra="ignore")

    bootstrap_servers: str = Field("127.0.0.1:9092", description="host:port[,host:port]")
    topic_prefix: str = Field("", description="prefix for every topic name, e.g. 'shop1.'")
    partitions: int = Field(4, ge=1, description="partitions of topics this project creates")
    replication_factor: int = Field(1, ge=1, description="replication of created topics")
    session_timeout_ms: int = Field(45_000, ge=1_000, description="consumer group session")
    heartbeat_interval_ms: int = Field(3_000, ge=100, description="consumer group heartbeat")
    security_protocol: str = Field(
        "PLAINTEXT",
        pattern="^(PLAINTEXT|SSL|SASL_PLAINTEXT|SASL_SSL)$",
        description="PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL",
    )
    sasl_mechanism: str = Field("", description="PLAIN, SCRAM-SHA-256, SCRAM-SHA-512 or empty")
    sasl_username: str = Field("", description="SASL user")
    sasl_password: SecretStr = Field(SecretStr(""), description="SASL password")
    ssl_ca_location: str = Field("", description="CA bundle for SSL/SASL_SSL, if not the system's")
    fetch_max_wait_ms: int = Field(
        500, ge=1, description="how long the broker may hold a fetch with no data"
    )
    producer_linger_ms: int = Field(
        5,
        ge=0,
        description="how long every producer waits to fill a record batch: longer means"
        " fewer, larger batches and a longer hop",
    )
    connect_timeout_s: float = Field(
        30.0, gt=0, description="how long a starting service waits for the broker"
    )


class StoreSettings(BaseSettings):
    """Where vectors live: the embedded Qdrant engine (default) or a Qdrant server."""

    model_config = SettingsConfigDict(env_prefix="RECSYS_STORE_", extra="ignore")

    backend: str = Field("edge", pattern="^(edge|qdrant)$", description="edge or qdrant")
    path: Path = Field(Path(".data/vectors"), description="folder of the embedded store")
    url: str = Field("", description="Qdrant server URL, e.g. http://qdrant:6333")
    api_key: str = Field("", description="Qdrant server API key, if any")
    hnsw_ef: int = Field(128, ge=1, description="HNSW search breadth (recall vs speed)")
    flush_interval_s: float = Field(
        5.0, ge=0, description="embedded store: longest time between segment flushes"
    )


class ArtifactSettings(BaseSettings):
    """The versioned model store written by the trainer and read by the other services."""

    model_config = SettingsConfigDict(env_prefix="RECSYS_ARTIFACTS_", extra="ignore")

    root: Path = Field(Path(".data/artifacts"), description="artifact store folder")
    model_name: str = Field("recsys", description="model name; one folder per name")


class ObservabilitySettings(BaseSettings):
    """Logs and the HTTP endpoint serving /metrics, /healthz and /readyz."""

    model_config = SettingsConfigDict(env_prefix="RECSYS_OBS_", extra="ignore")

    log_level: str = Field("INFO", description="DEBUG, INFO, WARNING, ERROR")
    http_port: int = Field(0, ge=0, le=65535, description="metrics/health port, 0 = off")
