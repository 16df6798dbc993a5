"""How settings become librdkafka configuration."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from recsys.kafka import _base_config
from recsys.settings import KafkaSettings


def test_plaintext_by_default() -> None:
    config = _base_config(KafkaSettings(bootstrap_servers="k:9092"))
    assert config["bootstrap.servers"] == "k:9092"
    assert config["security.protocol"] == "PLAINTEXT"
    assert not any(key.startswith("sasl.") for key in config)


def test_sasl_and_ca_are_passed_through() -> None:
    settings = KafkaSettings(
        security_protocol="SASL_SSL",
        sasl_mechanism="SCRAM-SHA-512",
        sasl_username="svc",
        sasl_password="s3cret",
        ssl_ca_location="/etc/ca.pem",
    )
    config = _base_config(settings)
    assert config["sasl.mechanism"] == "SCRAM-SHA-512"
    assert config["sasl.username"] == "svc"
    assert config["sasl.password"] == "s3cret"
    assert config["ssl.ca.location"] == "/etc/ca.pem"
    assert "s3cret" not in repr(settings), "the password must not leak into logs"


def test_unknown_security_protocol_is_rejected() -> None:
    with pytest.raises(ValidationError, match="security_protocol"):
        KafkaSettings(security_protocol="TLS")
