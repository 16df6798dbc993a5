"""JSON Schema files of the event models, for clients that are not written in Python.

The pydantic models in :mod:`recsys.events` are the source of truth; the committed
``<Model>.schema.json`` files beside this module are generated from them (``python -m
recsys.schemas`` or ``recsys schemas export``) and a unit test fails when they are stale.
Two cross-field rules that pydantic checks in code (an upsert needs text; a live item
vector needs a vector) are added as ``if``/``then`` clauses so other validators enforce
them too.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from recsys.events import (
    DeadLetter,
    InteractionEvent,
    ItemEvent,
    ItemPopularity,
    ItemVector,
    ModelUpdate,
    TrainRequest,
    UserSequence,
    UserVector,
)

SCHEMA_DIR = Path(__file__).resolve().parent
JSON_SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"
MODELS: tuple[type[BaseModel], ...] = (
    InteractionEvent,
    ItemEvent,
    UserSequence,
    UserVector,
    ItemVector,
    ItemPopularity,
    ModelUpdate,
    DeadLetter,
    TrainRequest,
)

_NOT_BLANK = {"type": "string", "pattern": "\\S"}
# Rules enforced by model validators, which model_json_schema() cannot see.
_CROSS_FIELD_RULES: dict[type[BaseModel], dict[str, Any]] = {
    ItemEvent: {
        "if": {"properties": {"op": {"const": "upsert"}}},
        "then": {
            "anyOf": [
                {"required": ["title"], "properties": {"title": _NOT_BLANK}},
                {"required": ["description"], "properties": {"description": _NOT_BLANK}},
            ]
        },
    },
    ItemVector: {
        "if": {"properties": {"deleted": {"const": False}}},
        "then": {"required": ["vector"], "properties": {"vector": {"minLength": 1}}},
    },
}


def file_name(model: type[BaseModel]) -> str:
    return f"{model.__name__}.schema.json"


def schema_for(model: type[BaseModel]) -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of what a valid message of ``model`` looks like."""
    schema = model.model_json_schema(mode="validation")
    schema["$schema"] = JSON_SCHEMA_DIALECT
    schema["$id"] = f"urn:recsys:schema:{model.__name__}"
    schema["title"] = model.__name__
    schema.update(_CROSS_FIELD_RULES.get(model, {}))
    return schema


def render(model: type[BaseModel]) -> str:
    """The file content: stable (sorted keys, two-space indent) so diffs stay readable."""
    return json.dumps(schema_for(model), indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def export_schemas(directory: Path | None = None) -> list[Path]:
    """Write every schema file into ``directory`` (default: this package); return paths."""
    target = directory or SCHEMA_DIR
    target.mkdir(parents=True, exist_ok=True)
    written = []
    for model in MODELS:
        path = target / file_name(model)
        path.write_text(render(model), encoding="utf-8")
        written.append(path)
    return written


def stale_schemas(directory: Path | None = None) -> list[str]:
    """Names of schema files that are missing or differ from the models."""
    target = directory or SCHEMA_DIR
    stale = []
    for model in MODELS:
        path = target / file_name(model)
        if not path.is_file() or path.read_text(encoding="utf-8") != render(model):
            stale.append(path.name)
    return stale
