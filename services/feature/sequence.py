"""A user's feature state and how one interaction changes it.

Pure functions over plain JSON-able dicts (the faust table's values), so the rules are
tested without a broker: duplicates by event_id change nothing, late events are placed
by timestamp, and the state stays bounded.
"""

from __future__ import annotations

import bisect
from typing import Any, TypedDict

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
    timestamps = [e["timestamp"] for e in entries]
    # bisect_right keeps arrival order among equal timestamps.
    position = bisect.bisect_right(timestamps, event.timestamp)
    entry = SequenceEntry(
        event_id=event.event_id,
        item_id=event.item_id,
        event_type=event.event_type,
        timestamp=event.timestamp,
        value=event.value,
    ).model_dump(exclude_none=True)
    entries.insert(position, entry)
    del entries[: max(0, len(entries) - max_length)]

    seen = [item for item in current["seen"] if item != event.item_id]
    seen.append(event.item_id)
    del seen[: max(0, len(seen) - max_seen)]

    event_ids = [*current["event_ids"], event.event_id][-dedupe_window:]
    return {"entries": entries, "seen": seen, "event_ids": event_ids}, True


def to_user_sequence(user_id: str, state: UserState, last: InteractionEvent) -> UserSequence:
    return UserSequence(
        event_id=f"{user_id}:{last.event_id}",
        user_id=user_id,
        entries=[SequenceEntry.model_validate(e) for e in state["entries"]],
        seen_item_ids=state["seen"],
        last_event_id=last.event_id,
        # The newest event reflected, not the latest arrival: a late event must not make
        # the sequence look older than the one it replaces.
        last_event_timestamp=max(
            [last.timestamp, *(entry["timestamp"] for entry in state["entries"])]
        ),
    )
