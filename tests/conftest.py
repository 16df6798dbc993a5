"""Fixtures shared by the integration and end-to-end tests: a real broker, fresh topics."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest

from recsys.devstack.broker import LocalBroker
from recsys.settings import KafkaSettings
from recsys.topics import Topics, create_topics

# Tests load the text encoder from its installed package; never reach for a hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalBroker]:
    """One Tansu broker on a free port for the whole session."""
    log_path = tmp_path_factory.mktemp("broker") / "tansu.log"
    with LocalBroker(log_path=log_path) as running:
        yield running


@pytest.fixture
def kafka(broker: LocalBroker) -> KafkaSettings:
    """Settings for this test alone: its own topic prefix, so tests never see each other."""
    settings = KafkaSettings(
        bootstrap_servers=broker.bootstrap_servers,
        topic_prefix=f"t{uuid.uuid4().hex[:10]}.",
        partitions=2,
        session_timeout_ms=6_000,
        heartbeat_interval_ms=1_000,
    )
    create_topics(settings)
    return settings


@pytest.fixture
def topics(kafka: KafkaSettings) -> Topics:
    return Topics.from_settings(kafka)


def kafka_env(settings: KafkaSettings) -> dict[str, str]:
    """Environment variables that hand ``settings`` to a service process."""
    return {
        "RECSYS_KAFKA_BOOTSTRAP_SERVERS": settings.bootstrap_servers,
        "RECSYS_KAFKA_TOPIC_PREFIX": settings.topic_prefix,
        "RECSYS_KAFKA_PARTITIONS": str(settings.partitions),
        "RECSYS_KAFKA_SESSION_TIMEOUT_MS": str(settings.session_timeout_ms),
        "RECSYS_KAFKA_HEARTBEAT_INTERVAL_MS": str(settings.heartbeat_interval_ms),
    }
