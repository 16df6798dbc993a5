"""The event contract: what parses, what is rejected, and that every rejection is readable."""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import pytest
from pydantic import ValidationError

from recsys.events import (
    MAX_EVENT_BYTES,
    InteractionEvent,
    InvalidEvent,
    ItemEvent,
    ItemVector,
    UserSequence,
    UserVector,
    decode_vector,
    encode_vector,
    parse_event,
)


def interaction(**overrides: Any) -> dict[str, Any]:
    event: dict[str, Any] = {
        "event_id": "e-1",
        "user_id": "u-1",
        "item_id": "i-1",
        "event_type": "click",
        "timestamp": 1_700_000_000.5,
    }
    event.update(overrides)
    return event


def item(**overrides: Any) -> dict[str, Any]:
    event: dict[str, Any] = {
        "event_id": "item-e-1",
        "item_id": "i-1",
        "timestamp": 1_700_000_000,
        "title": "Toy Story",
        "categories": ["Animation", "Comedy"],
        "attributes": {"year": 1995, "studio": "Pixar", "sequel": False},
    }
    event.update(overrides)
    return event


def raw(event: dict[str, Any]) -> bytes:
    return json.dumps(event).encode()


def rejection(model: type[Any], message: bytes | None) -> str:
    with pytest.raises(InvalidEvent) as caught:
        parse_event(model, message)
    reason = str(caught.value)
    assert reason and "\n" not in reason, "a dead-letter reason is one readable line"
    return reason


class TestValid:
    def test_interaction_parses(self) -> None:
        event = parse_event(InteractionEvent, raw(interaction(value=4.5)))
        assert (event.user_id, event.item_id, event.event_type) == ("u-1", "i-1", "click")
        assert event.timestamp == 1_700_000_000.5
        assert event.value == 4.5

    @pytest.mark.parametrize("event_type", ["view", "click", "add_to_cart", "purchase", "rating"])
    def test_every_event_type(self, event_type: str) -> None:
        assert parse_event(InteractionEvent, raw(interaction(event_type=event_type)))

    def test_item_parses(self) -> None:
        event = parse_event(ItemEvent, raw(item()))
        assert event.op == "upsert"
        assert event.categories == ["Animation", "Comedy"]
        assert event.attributes == {"year": 1995.0, "studio": "Pixar", "sequel": False}

    def test_unknown_fields_are_ignored(self) -> None:
        event = parse_event(InteractionEvent, raw(interaction(session="s-9", extra={"a": 1})))
        assert event.event_id == "e-1"
        assert "session" not in event.model_dump()

    def test_round_trip_through_bytes(self) -> None:
        event = InteractionEvent.model_validate(interaction(value=3.0))
        assert parse_event(InteractionEvent, event.to_bytes()) == event

    def test_to_bytes_omits_unset_optionals(self) -> None:
        assert b"value" not in InteractionEvent.model_validate(interaction()).to_bytes()

    def test_non_ascii_text_survives(self) -> None:
        event = parse_event(ItemEvent, raw(item(title="Misérables, Les")))
        assert event.title == "Misérables, Les"


class TestRejected:
    @pytest.mark.parametrize("field", ["event_id", "timestamp", "user_id", "item_id"])
    def test_missing_required_field(self, field: str) -> None:
        event = interaction()
        del event[field]
        reason = rejection(InteractionEvent, raw(event))
        assert field in reason and "required" in reason.lower()

    def test_empty_event_id(self) -> None:
        assert "event_id" in rejection(InteractionEvent, raw(interaction(event_id="")))

    @pytest.mark.parametrize(
        ("field", "value"),
        [("user_id", 42), ("item_id", ["i"]), ("timestamp", "yesterday"), ("value", "high")],
    )
    def test_wrong_type(self, field: str, value: Any) -> None:
        assert field in rejection(InteractionEvent, raw(interaction(**{field: value})))

    def test_bad_event_type(self) -> None:
        reason = rejection(InteractionEvent, raw(interaction(event_type="like")))
        assert "event_type" in reason and "purchase" in reason

    @pytest.mark.parametrize("field", ["timestamp", "value"])
    def test_nan(self, field: str) -> None:
        message = raw(interaction()).replace(b"}", f', "{field}": NaN}}'.encode())
        assert field in rejection(InteractionEvent, message)

    def test_infinite_value(self) -> None:
        assert "value" in rejection(InteractionEvent, raw(interaction(value=math.inf)))

    def test_negative_timestamp(self) -> None:
        reason = rejection(InteractionEvent, raw(interaction(timestamp=-1)))
        assert "timestamp" in reason and "greater than or equal to 0" in reason

    def test_timestamp_beyond_2100(self) -> None:
        assert "timestamp" in rejection(InteractionEvent, raw(interaction(timestamp=5e9)))

    def test_oversized_payload(self) -> None:
        message = raw(interaction(padding="x" * MAX_EVENT_BYTES))
        assert "exceeds" in rejection(InteractionEvent, message)

    def test_oversized_id(self) -> None:
        assert "user_id" in rejection(InteractionEvent, raw(interaction(user_id="u" * 257)))

    def test_invalid_utf8(self) -> None:
        message = raw(interaction(user_id="u-@")).replace(b"@", b"\xff\xfe")
        assert "JSON" in rejection(InteractionEvent, message)

    @pytest.mark.parametrize("message", [b"[1, 2]", b'"event"', b"42", b"null", b"true"])
    def test_non_object_json(self, message: bytes) -> None:
        assert "object" in rejection(InteractionEvent, message)

    def test_truncated_json(self) -> None:
        assert "JSON" in rejection(InteractionEvent, raw(interaction())[:-5])

    def test_empty_bytes(self) -> None:
        assert "JSON" in rejection(InteractionEvent, b"")

    def test_tombstone(self) -> None:
        assert "empty" in rejection(InteractionEvent, None)

    def test_reason_names_the_model(self) -> None:
        assert "ItemEvent" in rejection(ItemEvent, b"[]")


class TestItemEvent:
    def test_text_joins_title_categories_description_attributes(self) -> None:
        event = ItemEvent.model_validate(item(description="Toys come alive"))
        assert event.text() == (
            "Toy Story. Animation, Comedy. Toys come alive. sequel: False. studio: Pixar. "
            "year: 1995"
        )

    def test_text_skips_empty_parts(self) -> None:
        event = ItemEvent.model_validate(item(categories=[], attributes={}))
        assert event.text() == "Toy Story"

    def test_upsert_needs_title_or_description(self) -> None:
        reason = rejection(ItemEvent, raw(item(title="")))
        assert "needs a title or a description" in reason

    def test_whitespace_title_is_not_text(self) -> None:
        assert "title or a description" in rejection(ItemEvent, raw(item(title="   ")))

    def test_description_alone_is_enough(self) -> None:
        event = parse_event(ItemEvent, raw(item(title="", description="A cowboy doll.")))
        assert event.text().startswith("Animation, Comedy. A cowboy doll.")

    def test_delete_needs_no_text(self) -> None:
        event = parse_event(
            ItemEvent, raw({"event_id": "d", "item_id": "i-1", "timestamp": 1, "op": "delete"})
        )
        assert event.op == "delete"

    def test_empty_category_rejected(self) -> None:
        assert "categories" in rejection(ItemEvent, raw(item(categories=["Drama", ""])))

    def test_payload_prefixes_attributes(self) -> None:
        payload = ItemEvent.model_validate(item()).payload()
        assert payload["title"] == "Toy Story"
        assert payload["attr_year"] == 1995.0
        assert "year" not in payload


class TestVectors:
    def test_encode_decode_round_trip_is_exact(self) -> None:
        vector = np.random.default_rng(0).standard_normal(384).astype(np.float32)
        decoded = decode_vector(encode_vector(vector))
        assert decoded.dtype == np.float32
        np.testing.assert_array_equal(decoded, vector)

    def test_encode_accepts_a_list(self) -> None:
        np.testing.assert_array_equal(decode_vector(encode_vector([1.0, -2.5])), [1.0, -2.5])

    def test_encode_rejects_a_matrix(self) -> None:
        with pytest.raises(ValueError, match="one-dimensional"):
            encode_vector(np.zeros((2, 2)))

    def test_decode_rejects_partial_floats(self) -> None:
        with pytest.raises(ValueError, match="whole number"):
            decode_vector("AAAAAAA=")  # five bytes

    def test_user_vector_round_trip(self) -> None:
        vector = np.linspace(-1, 1, 8, dtype=np.float32)
        event = UserVector(
            event_id="uv-1",
            user_id="u-1",
            vector=encode_vector(vector),
            model_version="v3",
            event_timestamp=10.0,
            recent_item_ids=["i-1"],
        )
        parsed = parse_event(UserVector, event.to_bytes())
        np.testing.assert_array_equal(parsed.array(), vector)
        assert parsed.model_version == "v3"

    def test_nan_vector_rejected(self) -> None:
        message = json.dumps(
            {
                "event_id": "iv",
                "item_id": "i",
                "model_version": "v1",
                "timestamp": 1,
                "vector": encode_vector(np.array([1.0, np.nan], dtype=np.float32)),
            }
        ).encode()
        assert "NaN" in rejection(ItemVector, message)

    def test_live_item_vector_needs_vector(self) -> None:
        message = raw({"event_id": "iv", "item_id": "i", "model_version": "v1", "timestamp": 1})
        assert "needs a vector" in rejection(ItemVector, message)

    def test_deleted_item_vector_needs_none(self) -> None:
        message = raw(
            {
                "event_id": "iv",
                "item_id": "i",
                "model_version": "v1",
                "timestamp": 1,
                "deleted": True,
            }
        )
        assert parse_event(ItemVector, message).deleted


def test_user_sequence_entries_validate() -> None:
    entry = {"event_id": "e-2", "item_id": "i", "event_type": "view", "timestamp": 2}
    sequence: dict[str, Any] = {
        "event_id": "s",
        "user_id": "u",
        "last_event_id": "e-2",
        "last_event_timestamp": 2.0,
        "entries": [entry],
    }
    assert parse_event(UserSequence, raw(sequence)).entries[0].item_id == "i"
    entry["event_type"] = "hover"
    assert "entries.0.event_type" in rejection(UserSequence, raw(sequence))


def test_events_are_immutable() -> None:
    event = InteractionEvent.model_validate(interaction())
    with pytest.raises(ValidationError):
        event.user_id = "someone else"  # type: ignore[misc]
