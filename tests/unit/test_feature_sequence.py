"""The feature service's per-user state rules: ordering, deduplication and bounds."""

from __future__ import annotations

import copy
import itertools
import tracemalloc

import orjson
import pytest

from recsys.events import InteractionEvent, UserSequence
from services.feature.sequence import (
    DIGEST_CHARS,
    UserState,
    apply_interaction,
    decode_state,
    digest_in,
    empty_state,
    encode_state,
    encode_user_sequence,
    event_digest,
    to_user_sequence,
)

BIG = 1_000


def _event(
    event_id: str,
    item_id: str,
    timestamp: float,
    *,
    user_id: str = "u1",
    event_type: str = "view",
    value: float | None = None,
) -> InteractionEvent:
    return InteractionEvent.model_validate(
        {
            "event_id": event_id,
            "user_id": user_id,
            "item_id": item_id,
            "event_type": event_type,
            "timestamp": timestamp,
            "value": value,
        }
    )


def _apply_all(
    events: list[InteractionEvent],
    *,
    max_length: int = BIG,
    max_seen: int = BIG,
    dedupe_window: int = BIG,
) -> UserState:
    state: UserState | None = None
    for event in events:
        state, _ = apply_interaction(
            state, event, max_length=max_length, max_seen=max_seen, dedupe_window=dedupe_window
        )
    assert state is not None
    return state


def _digests(*event_ids: str) -> str:
    return "".join(event_digest(i) for i in event_ids)


def test_digests_are_fixed_width_and_matched_only_whole() -> None:
    packed = _digests("a", "b", "c")
    assert len(packed) == 3 * DIGEST_CHARS
    assert all(digest_in(packed, event_digest(i)) for i in "abc")
    assert not digest_in(packed, event_digest("d"))
    # A run of characters straddling two digests is not a digest of the window.
    assert not digest_in(packed, packed[DIGEST_CHARS // 2 : DIGEST_CHARS // 2 + DIGEST_CHARS])


def test_state_written_with_full_ids_still_deduplicates() -> None:
    """States in a changelog written before digests carry ``event_ids``: read, they
    dedupe the same window."""
    old = orjson.dumps({"entries": [], "seen": ["i1"], "event_ids": ["e1", "e2"]})
    state = decode_state(old)
    assert state is not None and "event_ids" not in state
    _, changed = apply_interaction(
        state, _event("e2", "i2", 1.0), max_length=BIG, max_seen=BIG, dedupe_window=BIG
    )
    assert changed is False


def _ids(state: UserState) -> list[str]:
    return [e["event_id"] for e in state["entries"]]


def test_first_event_on_no_state() -> None:
    state, changed = apply_interaction(
        None,
        _event("e1", "i1", 10.0, event_type="rating", value=4.5),
        max_length=5,
        max_seen=5,
        dedupe_window=5,
    )
    assert changed
    assert state["entries"] == [
        {"event_id": "e1", "item_id": "i1", "event_type": "rating", "timestamp": 10.0, "value": 4.5}
    ]
    assert state["seen"] == ["i1"]
    assert state["event_digests"] == _digests("e1")


def test_value_none_is_not_stored() -> None:
    state = _apply_all([_event("e1", "i1", 10.0)])
    assert "value" not in state["entries"][0]


def test_appends_in_order() -> None:
    state = _apply_all([_event(f"e{i}", f"i{i}", float(i)) for i in range(5)])
    assert _ids(state) == ["e0", "e1", "e2", "e3", "e4"]
    assert state["seen"] == ["i0", "i1", "i2", "i3", "i4"]
    assert state["event_digests"] == _digests("e0", "e1", "e2", "e3", "e4")


def test_does_not_mutate_the_given_state() -> None:
    before = _apply_all([_event("e1", "i1", 1.0), _event("e2", "i2", 2.0)])
    snapshot = copy.deepcopy(before)
    apply_interaction(before, _event("e3", "i1", 0.5), max_length=2, max_seen=1, dedupe_window=1)
    assert before == snapshot


@pytest.mark.parametrize("position", [0, 1, 2])
def test_duplicate_event_id_changes_nothing(position: int) -> None:
    events = [_event(f"e{i}", f"i{i}", float(i)) for i in range(3)]
    state = _apply_all(events)
    # Same id, even with different content: it is a redelivery, not a new interaction.
    duplicate = _event(f"e{position}", "other", 99.0, event_type="purchase")
    new_state, changed = apply_interaction(
        state, duplicate, max_length=BIG, max_seen=BIG, dedupe_window=BIG
    )
    assert changed is False
    assert new_state == state


@pytest.mark.parametrize(
    ("timestamps", "expected"),
    [
        ([1.0, 3.0, 2.0], ["e0", "e2", "e1"]),  # late event lands in the middle
        ([5.0, 6.0, 1.0], ["e2", "e0", "e1"]),  # older than everything: goes first
        ([1.0, 2.0, 3.0, 0.5, 2.5], ["e3", "e0", "e1", "e4", "e2"]),
    ],
)
def test_late_event_is_placed_by_timestamp(timestamps: list[float], expected: list[str]) -> None:
    state = _apply_all([_event(f"e{i}", f"i{i}", ts) for i, ts in enumerate(timestamps)])
    assert _ids(state) == expected
    stored = [e["timestamp"] for e in state["entries"]]
    assert stored == sorted(stored)


def test_equal_timestamps_keep_arrival_order() -> None:
    events = [
        _event("a", "i1", 5.0),
        _event("b", "i2", 5.0),
        _event("c", "i3", 1.0),
        _event("d", "i4", 5.0),
        _event("e", "i5", 1.0),
    ]
    assert _ids(_apply_all(events)) == ["c", "e", "a", "b", "d"]


@pytest.mark.parametrize("order", list(itertools.permutations(range(4))))
def test_any_arrival_order_gives_time_order(order: tuple[int, ...]) -> None:
    events = [_event(f"e{i}", f"i{i}", float(i)) for i in order]
    assert _ids(_apply_all(events)) == ["e0", "e1", "e2", "e3"]


@pytest.mark.parametrize("max_length", [0, 1, 3, 5])
def test_entries_capped_keeping_newest(max_length: int) -> None:
    events = [_event(f"e{i}", f"i{i}", float(i)) for i in range(5)]
    state = _apply_all(events, max_length=max_length)
    assert _ids(state) == [f"e{i}" for i in range(5 - max_length, 5)]


def test_late_event_older_than_the_window_is_dropped_from_entries() -> None:
    events = [_event(f"e{i}", f"i{i}", float(10 + i)) for i in range(3)]
    events.append(_event("late", "i9", 1.0))
    state = _apply_all(events, max_length=3)
    assert _ids(state) == ["e0", "e1", "e2"]
    # It still counts as seen and as processed.
    assert "i9" in state["seen"]
    assert digest_in(state["event_digests"], event_digest("late"))


def test_seen_is_deduplicated_and_moved_to_end() -> None:
    events = [
        _event("e1", "a", 1.0),
        _event("e2", "b", 2.0),
        _event("e3", "c", 3.0),
        _event("e4", "a", 4.0),
        _event("e5", "b", 5.0),
        _event("e6", "b", 6.0),
    ]
    state = _apply_all(events)
    assert state["seen"] == ["c", "a", "b"]
    assert len(state["entries"]) == 6  # entries keep every interaction


@pytest.mark.parametrize("max_seen", [0, 1, 2, 4])
def test_seen_capped_keeping_most_recent(max_seen: int) -> None:
    items = ["a", "b", "c", "a", "d", "e"]  # distinct by recency: b, c, a, d, e
    state = _apply_all(
        [_event(f"e{n}", item, float(n)) for n, item in enumerate(items)], max_seen=max_seen
    )
    by_recency = ["b", "c", "a", "d", "e"]
    assert state["seen"] == by_recency[len(by_recency) - max_seen :]


@pytest.mark.parametrize("window", [1, 2, 3])
def test_dedupe_window_is_bounded(window: int) -> None:
    events = [_event(f"e{i}", f"i{i}", float(i)) for i in range(6)]
    state = _apply_all(events, dedupe_window=window)
    assert state["event_digests"] == _digests(*[f"e{i}" for i in range(6 - window, 6)])
    # Ids inside the window are still recognised ...
    _, changed = apply_interaction(
        state, events[-1], max_length=BIG, max_seen=BIG, dedupe_window=window
    )
    assert changed is False
    # ... ids that fell out of it are not (the window is the documented bound).
    _, changed = apply_interaction(
        state, events[0], max_length=BIG, max_seen=BIG, dedupe_window=window
    )
    assert changed is True


def test_state_stays_bounded_over_many_events() -> None:
    state: UserState = empty_state()
    for n in range(300):
        state, changed = apply_interaction(
            state,
            _event(f"e{n}", f"i{n % 37}", float(n % 50)),
            max_length=10,
            max_seen=20,
            dedupe_window=15,
        )
        assert changed
        assert len(state["entries"]) <= 10
        assert len(state["seen"]) <= 20
        assert len(set(state["seen"])) == len(state["seen"])
        assert len(state["event_digests"]) <= 15 * DIGEST_CHARS
        stored = [e["timestamp"] for e in state["entries"]]
        assert stored == sorted(stored)


def test_to_user_sequence_validates() -> None:
    events = [
        _event("e1", "i1", 1.0),
        _event("e2", "i2", 2.0, event_type="rating", value=4.0),
        _event("e3", "i1", 3.0, event_type="click"),
    ]
    state = _apply_all(events)
    sequence = to_user_sequence("u1", state, events[-1])

    again = UserSequence.model_validate_json(sequence.to_bytes())
    assert again == sequence
    assert sequence.user_id == "u1"
    assert sequence.event_id == "u1:e3"
    assert sequence.last_event_id == "e3"
    assert sequence.last_event_timestamp == 3.0
    assert [e.event_id for e in sequence.entries] == ["e1", "e2", "e3"]
    assert [e.item_id for e in sequence.entries] == ["i1", "i2", "i1"]
    assert sequence.entries[1].value == 4.0
    assert sequence.entries[0].value is None
    assert sequence.seen_item_ids == ["i2", "i1"]


def test_to_user_sequence_after_a_late_event_keeps_time_order() -> None:
    events = [
        _event("e1", "i1", 1.0),
        _event("e2", "i2", 3.0),
        _event("e3", "i3", 2.0),  # late
    ]
    sequence = to_user_sequence("u1", _apply_all(events), events[-1])
    assert UserSequence.model_validate_json(sequence.to_bytes()) == sequence
    assert sequence.last_event_id == "e3"
    assert [e.event_id for e in sequence.entries] == ["e1", "e3", "e2"]


def test_late_event_sequence_is_not_older_than_the_previous_one() -> None:
    events = [_event("e1", "i1", 1.0), _event("e2", "i2", 3.0)]
    state = _apply_all(events)
    before = to_user_sequence("u1", state, events[-1])
    late = _event("e3", "i3", 2.0)
    state, _ = apply_interaction(state, late, max_length=BIG, max_seen=BIG, dedupe_window=BIG)
    after = to_user_sequence("u1", state, late)
    # The new state reflects strictly more events, so consumers must not see it as stale.
    assert after.last_event_timestamp >= before.last_event_timestamp


def test_to_user_sequence_of_one_event() -> None:
    event = _event("only", "i7", 123.5, event_type="purchase", value=9.99)
    state = _apply_all([event])
    sequence = to_user_sequence("alice", state, event)
    assert UserSequence.model_validate(sequence.model_dump()) == sequence
    assert sequence.last_event_id == "only"
    assert sequence.last_event_timestamp == 123.5
    assert sequence.entries[0].event_type == "purchase"


def test_fast_encoding_matches_the_validated_sequence() -> None:
    state = None
    events = [
        InteractionEvent(
            event_id=f"e{i}",
            user_id="u",
            item_id=f"i{i % 3}",
            event_type="rating",
            timestamp=10.0 - i,
            value=float(i),
        )
        for i in range(5)
    ]
    for event in events:
        state, _ = apply_interaction(state, event, max_length=4, max_seen=10, dedupe_window=10)
    assert state is not None
    fast = UserSequence.model_validate_json(encode_user_sequence("u", state, events[-1]))
    assert fast == to_user_sequence("u", state, events[-1])
    assert decode_state(encode_state(state)) == state


def test_encoded_state_is_allocated_at_its_size() -> None:
    # The table keeps one encoded state per user: orjson's own bytes would hold ~4x their
    # length for as long as the user's next event takes.
    state = _apply_all([_event(f"event-{n:05d}", f"item-{n}", float(n)) for n in range(500)])
    tracemalloc.start()
    try:
        encoded = encode_state(state)
        allocated, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(encoded) > 20_000
    assert allocated < len(encoded) + 1_024
    assert decode_state(encoded) == state
