"""A user's feature state and how one interaction changes it.

Pure functions over plain JSON-able dicts (the faust table's values), so the rules are
tested without a broker: duplicates by event_id change nothing, late events are placed
by timestamp, and the state stays bounded. This is the hot path of the feature worker,
so it works on plain lists and serialises with orjson; :func:`to_user_sequence` is the
validated reference the fast encoder is tested against.
"""

from __future__ import annotations

import bisect
from typing import Any, TypedDict

import orjson

from recsys.events import InteractionEvent, SequenceEntry, UserSequence


class UserState(TypedDict):
    entries: list[dict[str, Any]]  # SequenceEntry dicts, oldest first
    seen: list[str]  # distinct item ids, oldest first
    event_ids: list[str]  # recent event ids, for deduplication


def empty_state() -> UserState:
    return {"entries": [], "seen": [], "event_ids": []}


def apply_interaction(
    state: UserState | None,
    event: InteractionEvent,
    *,
    max_length: int,
    max_seen: int,
    dedupe_window: int,
) -> tuple[UserState, bool]:
    """Return the new state and whether it changed (False for a duplicate event)."""
    current = state if state is not None else empty_state()
    if event.event_id in current["event_ids"]:
        return current, False

    entries = list(current["entries"])
    entry: dict[str, Any] = {
        "event_id": event.event_id,
        "item_id": event.item_id,
        "event_type": event.event_type,
        "timestamp": event.timestamp,
    }
    if event.value is not None:
        entry["value"] = event.value
    if not entries or entries[-1]["timestamp"] <= event.timestamp:
        entries.append(entry)  # the common case: events arrive in time order
    else:
        # bisect_right keeps arrival order among equal timestamps.
        position = bisect.bisect_right([e["timestamp"] for e in entries], event.timestamp)
        entries.insert(position, entry)
    del entries[: max(0, len(entries) - max_length)]

    seen = list(current["seen"])
    if event.item_id in seen:
        seen.remove(event.item_id)
    seen.append(event.item_id)
    del seen[: max(0, len(seen) - max_seen)]

    event_ids = current["event_ids"][-(dedupe_window - 1) :] if dedupe_window > 1 else []
    return {"entries": entries, "seen": seen, "event_ids": [*event_ids, event.event_id]}, True


def _sequence_fields(user_id: str, state: UserState, last: InteractionEvent) -> dict[str, Any]:
    return {
        "event_id": f"{user_id}:{last.event_id}",
        "user_id": user_id,
        "entries": state["entries"],
        "seen_item_ids": state["seen"],
        "last_event_id": last.event_id,
        # The newest event reflected, not the latest arrival: a late event must not make
        # the sequence look older than the one it replaces.
        "last_event_timestamp": max(
            last.timestamp, state["entries"][-1]["timestamp"] if state["entries"] else 0.0
        ),
    }


def to_user_sequence(user_id: str, state: UserState, last: InteractionEvent) -> UserSequence:
    fields = _sequence_fields(user_id, state, last)
    fields["entries"] = [SequenceEntry.model_validate(e) for e in state["entries"]]
    return UserSequence.model_validate(fields)


def encode_user_sequence(user_id: str, state: UserState, last: InteractionEvent) -> bytes:
    """The ``UserSequence`` message for the state, serialised without re-validation."""
    return orjson.dumps(_sequence_fields(user_id, state, last))


def encode_state(state: UserState) -> bytes:
    # orjson never trims its output buffer: the bytes it returns hold several times their
    # length (about 4x here). A table value lives until the user's next event, so the
    # table keeps an exact-size copy; left as is, the table was ~4x its content and grew
    # ~4x as fast as the per-user state it holds.
    return bytes(memoryview(orjson.dumps(state)))


def decode_state(raw: bytes | None) -> UserState | None:
    if raw is None:
        return None
    state: UserState = orjson.loads(raw)
    return state
