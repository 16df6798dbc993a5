"""docker-compose.yml and docker-compose.gpu.yml validate against the Compose spec schema."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import jsonschema  # type: ignore[import-untyped]
import pytest

from tests.deploy.manifests import COMPOSE_FILES, load_yaml

SCHEMA = Path(__file__).parent / "schemas" / "compose-spec.json"
SCHEMA_SHA256 = "d549057ebc2925f39f62799eab0db7b9e2c18b35b6c00595199116da3ed10e64"


def _validator() -> Any:
    data = SCHEMA.read_bytes()
    assert hashlib.sha256(data).hexdigest() == SCHEMA_SHA256, "vendored schema changed"
    schema = json.loads(data)
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


@pytest.mark.parametrize("path", COMPOSE_FILES, ids=lambda p: p.name)
def test_compose_file_matches_the_spec(path: Path) -> None:
    errors = sorted(_validator().iter_errors(load_yaml(path)), key=lambda e: list(e.path))
    assert not errors, "\n".join(
        f"{path.name}: {'/'.join(map(str, e.path))}: {e.message}" for e in errors
    )


def test_schema_catches_mistakes() -> None:
    """A misspelt service key must fail, or the test above proves nothing."""
    bad = {"services": {"x": {"image": "x", "comand": ["python"]}}}
    assert list(_validator().iter_errors(bad))
