"""The committed JSON Schema files are current and describe the pydantic models."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from recsys.events import InteractionEvent, ItemEvent, ItemVector
from recsys.schemas import MODELS, SCHEMA_DIR, export_schemas, file_name, render, stale_schemas

HAS_JSONSCHEMA = importlib.util.find_spec("jsonschema") is not None


def committed(model: type[BaseModel]) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((SCHEMA_DIR / file_name(model)).read_text("utf-8"))
    return loaded


@pytest.mark.parametrize("model", MODELS, ids=lambda m: m.__name__)
def test_committed_file_is_current(model: type[BaseModel]) -> None:
    path = SCHEMA_DIR / file_name(model)
    assert path.read_text(encoding="utf-8") == render(model), (
        f"{path.name} is stale: run `python -m recsys.schemas` and commit the result"
    )


def test_no_stale_files() -> None:
    assert stale_schemas() == []


def test_export_writes_every_model(tmp_path: Path) -> None:
    paths = export_schemas(tmp_path)
    assert sorted(p.name for p in paths) == sorted(file_name(m) for m in MODELS)
    assert stale_schemas(tmp_path) == []
    (tmp_path / file_name(ItemEvent)).write_text("{}\n", encoding="utf-8")
    assert stale_schemas(tmp_path) == [file_name(ItemEvent)]


@pytest.mark.parametrize("model", MODELS, ids=lambda m: m.__name__)
def test_files_are_stable_and_identified(model: type[BaseModel]) -> None:
    text = (SCHEMA_DIR / file_name(model)).read_text(encoding="utf-8")
    schema = json.loads(text)
    assert text.endswith("}\n")
    assert text == json.dumps(schema, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
    assert schema["title"] == model.__name__
    assert schema["$id"].endswith(model.__name__)
    assert schema["$schema"].startswith("https://json-schema.org/")


def _check_object(schema: dict[str, Any], model: type[BaseModel], root: dict[str, Any]) -> None:
    assert schema["type"] == "object"
    assert set(schema["properties"]) == set(model.model_fields)
    required = {name for name, info in model.model_fields.items() if info.is_required()}
    assert set(schema.get("required", [])) == required
    # Unknown fields are ignored by consumers, so the schema must not forbid them either.
    assert schema.get("additionalProperties", True) is not False
    for info in model.model_fields.values():
        nested = info.annotation
        args = getattr(nested, "__args__", ())
        for candidate in (nested, *args):
            if isinstance(candidate, type) and issubclass(candidate, BaseModel):
                _check_object(root["$defs"][candidate.__name__], candidate, root)


@pytest.mark.parametrize("model", MODELS, ids=lambda m: m.__name__)
def test_properties_and_required_match_the_model(model: type[BaseModel]) -> None:
    schema = committed(model)
    _check_object(schema, model, schema)


def test_interaction_constraints_are_exported() -> None:
    properties = committed(InteractionEvent)["properties"]
    assert properties["event_type"]["enum"] == [
        "view",
        "click",
        "add_to_cart",
        "purchase",
        "rating",
    ]
    assert properties["timestamp"]["minimum"] == 0
    assert properties["event_id"]["minLength"] == 1


def test_cross_field_rules_are_exported() -> None:
    item = committed(ItemEvent)
    assert item["if"] == {"properties": {"op": {"const": "upsert"}}}
    assert {tuple(rule["required"]) for rule in item["then"]["anyOf"]} == {
        ("title",),
        ("description",),
    }
    vector = committed(ItemVector)
    assert vector["then"]["required"] == ["vector"]


@pytest.mark.skipif(not HAS_JSONSCHEMA, reason="jsonschema is not installed")
def test_samples_validate_against_the_json_schema() -> None:
    import jsonschema  # type: ignore[import-untyped]

    interaction = {
        "event_id": "e",
        "user_id": "u",
        "item_id": "i",
        "event_type": "view",
        "timestamp": 1,
    }
    jsonschema.validate(interaction, committed(InteractionEvent))
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**interaction, "event_type": "like"}, committed(InteractionEvent))
    item = {"event_id": "e", "item_id": "i", "timestamp": 1}
    jsonschema.validate({**item, "op": "delete"}, committed(ItemEvent))
    jsonschema.validate({**item, "title": "Toy Story"}, committed(ItemEvent))
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(item, committed(ItemEvent))
