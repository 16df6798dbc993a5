"""A user's feature state and how one interaction changes it.

Pure functions over plain JSON-able dicts (the faust table's values), so the rules are
tested without a broker: duplicates by event_id change nothing, late events are placed
by timestamp, and the state stays bounded. This is the hot path of the feature worker,
so it works on plain lists and serialises with orjson; :func:`to_user_sequence` is the
validated reference the fast encoder is tested against.
"""

from __future__ import annotations

import base64
import bisect
import hashlib
from typing import Any, NotRequired, TypedDict

import orjson

from recsys.events import InteractionEvent, SequenceEntry, UserSequence


class UserState(TypedDict):
    entries: list[dict[str, Any]]  # SequenceEntry dicts, oldest first
    seen: list[str]  # distinct item ids, oldest first
    event_digests: str  # digests of recent event ids, oldest first, for deduplication
    # Set by the worker on each write: the last offset of the user's partition applied,
    # and the offsets applied as new events in that batch. A message redelivered after a
    # crash is recognised by offset, and still counted in item popularity if its batch's
    # popularity records were lost (see app.py).
    offset: NotRequired[int]
    new_offsets: NotRequired[list[int]]


# The dedupe window is the largest part of a user's state: a UUID event id costs ~35 bytes
# of JSON, its 72-bit digest 12 characters, with a false match once in ~10^19 lookups.
DIGEST_CHARS = 12


def event_digest(event_id: str) -> str:
    """A fixed-width digest of an event id (9 bytes of BLAKE2b, base64url)."""
    return base64.urlsafe_b64encode(
        hashlib.blake2b(event_id.encode(), digest_size=9).digest()
    ).decode()


def digest_in(digests: str, digest: str) -> bool:
    """Whether ``digest`` is one of the fixed-width digests packed in ``digests``."""
    at = digests.find(digest)
    while at != -1:
        if at % DIGEST_CHARS == 0:  # not a match straddling two digests
            return True
        at = digests.find(digest, at + 1)
    return False


def empty_state() -> UserState:
    return {"entries": [], "seen": [], "event_digests": ""}


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
    digest = event_digest(event.event_id)
    if digest_in(current["event_digests"], digest):
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

    kept = (
        current["event_digests"][-(dedupe_window - 1) * DIGEST_CHARS :] if dedupe_window > 1 else ""
    )
    return {"entries": entries, "seen": seen, "event_digests": kept + digest}, True


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
    state: dict[str, Any] = orjson.loads(raw)
    if "event_ids" in state:  # written before digests: the same window, as full ids
        state["event_digests"] = "".join(event_digest(i) for i in state.pop("event_ids"))
    return state  # type: ignore[return-value]
