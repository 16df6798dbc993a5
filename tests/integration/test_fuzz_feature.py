"""A Hypothesis-generated stream of interactions, valid and malformed mixed, through the
real feature worker process on the real broker.

Each example is one large batch: valid events of a few users (any Unicode ids, out-of-order
timestamps, extra fields, keys that are wrong or missing so the worker re-keys them) among
malformed payloads (random bytes and JSON, events with a field replaced, removed, made
huge or written as NaN, invalid UTF-8, deep nesting, tombstones). The worker classifies a
message exactly as ``parse_event(InteractionEvent, value)`` does, which is the oracle here.
Every malformed message must reach dead-letter once, with a reason and its original value;
every valid one must be in its user's sequence; the worker must survive.

An example needs the worker, so there are few of them, each large, and no shrinking (a
failure prints the whole example; rerun it from the Hypothesis database).
"""

from __future__ import annotations

import base64
import json
import math
import os
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import KafkaError, Message
from hypothesis import HealthCheck, Phase, event, given, settings
from hypothesis import strategies as st

from recsys.events import (
    EVENT_TYPES,
    MAX_ID_LENGTH,
    DeadLetter,
    InteractionEvent,
    InvalidEvent,
    UserSequence,
    parse_event,
)
from recsys.kafka import MAX_LETTER_VALUE_BYTES, make_producer, produce
from recsys.settings import KafkaSettings
from recsys.topics import Topics
from tests.conftest import kafka_env
from tests.support.services import FeatureWorker
from tests.support.topics import TopicReader

pytestmark = pytest.mark.integration

# Large enough to hold every valid event of a user: the test checks all of them.
MAX_SEQUENCE = 200
DEADLINE_S = 90
STALL_S = 30

Payload = bytes | None  # None: a tombstone


@dataclass
class Sent:
    key: bytes | None
    value: Payload
    event: InteractionEvent | None  # what the worker will make of it; None: malformed
    position: tuple[int, int] | None = None  # (partition, offset) once delivered
    error: KafkaError | None = None

    def __repr__(self) -> str:  # a failing example prints the whole batch: keep it short
        value = (
            self.value
            if self.value is None or len(self.value) <= 200
            else (self.value[:200] + f"... ({len(self.value)} bytes)".encode())
        )
        kind = "valid" if self.event is not None else "malformed"
        return f"Sent({kind}, key={self.key!r}, value={value!r}, at={self.position})"


# ------------------------------------------------------------------ strategies

_id_chars = st.characters(codec="utf-8", exclude_categories=["Z", "C"])
texts = st.text(st.characters(codec="utf-8"), max_size=20)
json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), texts),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(texts, inner, max_size=3)),
    max_leaves=8,
)
FIELDS = ("event_id", "user_id", "item_id", "event_type", "timestamp", "value")


def _dumps(value: Any) -> bytes:
    return json.dumps(value, allow_nan=True, ensure_ascii=False).encode()


@st.composite
def valid_fields(draw: st.DrawFn, users: list[str], event_id: str) -> dict[str, Any]:
    """The JSON fields of a valid event, in one of the many forms that parse."""
    fields: dict[str, Any] = {
        "event_id": event_id,
        "user_id": draw(st.sampled_from(users)),
        "item_id": draw(st.text(_id_chars, min_size=1, max_size=40)),
        "event_type": draw(st.sampled_from(EVENT_TYPES)),
        "timestamp": draw(
            st.one_of(st.floats(0, 4_102_444_800), st.integers(1_600_000_000, 1_800_000_000))
        ),
    }
    if draw(st.booleans()):
        fields["value"] = draw(
            st.one_of(st.none(), st.floats(allow_nan=False, allow_infinity=False))
        )
    if draw(st.booleans()):  # unknown fields are ignored
        fields[draw(texts.filter(lambda k: k not in FIELDS))] = draw(json_values)
    if draw(st.booleans()):  # surrounding whitespace is stripped
        fields["item_id"] = f" \t{fields['item_id']}\n"
    return fields


@st.composite
def malformed(draw: st.DrawFn, users: list[str], event_id: str) -> Payload:
    kind = draw(
        st.sampled_from(
            ["bytes", "json", "replaced", "removed", "huge", "number", "utf-8", "nested", "empty"]
        )
    )
    if kind == "bytes":
        return draw(st.binary(max_size=300))
    if kind == "json":
        return _dumps(draw(json_values))
    if kind == "empty":
        return draw(st.sampled_from([None, b"", b" ", b"null", b"{}"]))
    fields = draw(valid_fields(users, event_id))
    name = draw(st.sampled_from(FIELDS[:5]))
    if kind == "replaced":
        fields[name] = draw(json_values)
    elif kind == "removed":
        del fields[name]
    elif kind == "huge":
        fields[name] = draw(st.sampled_from(["x", "é", "\U0001f600"])) * draw(
            st.sampled_from([MAX_ID_LENGTH + 1, 10_000, 300_000])
        )
    elif kind == "number":
        fields[draw(st.sampled_from(["timestamp", "value"]))] = draw(
            st.sampled_from([math.nan, math.inf, -math.inf, -1.0, 1e300])
        )
    elif kind == "nested":
        depth = draw(st.sampled_from([10, 1_000, 50_000]))
        fields[name] = "@@NESTED@@"
        return _dumps(fields).replace(b'"@@NESTED@@"', b"[" * depth + b"]" * depth)
    raw = bytearray(_dumps(fields))
    if kind == "utf-8":
        position = draw(st.integers(0, len(raw)))
        raw[position:position] = draw(st.sampled_from([b"\xff", b"\xc3(", b"\xed\xa0\x80"]))
    return bytes(raw)


@st.composite
def batches(draw: st.DrawFn) -> list[Sent]:
    """One large mixed batch; event and user ids are unique to the example."""
    prefix = f"fz{uuid.uuid4().hex[:8]}-"
    users = [
        prefix + name
        for name in draw(
            st.lists(
                st.text(_id_chars, min_size=1, max_size=30), min_size=1, max_size=8, unique=True
            )
        )
    ]
    count = draw(st.integers(80, 150))
    sent: list[Sent] = []
    used: set[tuple[str, str]] = set()
    for i in range(count):
        event_id = f"{prefix}{i}"
        if draw(st.integers(0, 2)):  # about a third valid, two thirds malformed
            value = draw(malformed(users, event_id))
        else:
            value = _dumps(draw(valid_fields(users, event_id)))
        event = _oracle(value)
        if event is not None:
            # A "malformed" one may parse after all (a field replaced by a good value);
            # it must not repeat an event id of its user, or deduplication drops one.
            if (event.user_id, event.event_id) in used:
                continue
            used.add((event.user_id, event.event_id))
        key_choice = draw(st.sampled_from(["user", "user", "user", "none", "other"]))
        if key_choice == "user" and event is not None:
            key: bytes | None = event.user_id.encode()
        elif key_choice == "other":
            key = draw(st.binary(min_size=1, max_size=16))
        elif key_choice == "user":
            key = users[0].encode()
        else:
            key = None
        sent.append(Sent(key, value, event))
    return sent


def _oracle(value: Payload) -> InteractionEvent | None:
    """What the feature worker makes of ``value``: the event, or None (dead-letter)."""
    try:
        return parse_event(InteractionEvent, value)
    except InvalidEvent:
        return None


# ------------------------------------------------------------------ the test


@pytest.fixture
def feature_worker(kafka: KafkaSettings, tmp_path: Path) -> Iterator[FeatureWorker]:
    env = {
        **os.environ,
        **kafka_env(kafka),
        "RECSYS_FEATURE_DATA_DIR": str(tmp_path / "faust"),
        "RECSYS_FEATURE_MAX_SEQUENCE_LENGTH": str(MAX_SEQUENCE),
    }
    worker = FeatureWorker(env, tmp_path / "feature.log", metrics_port=0)
    yield worker
    worker.stop()


@settings(
    max_examples=3,
    deadline=None,
    phases=[Phase.explicit, Phase.reuse, Phase.generate],  # no shrinking: too slow here
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,  # one worker serves every example
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.large_base_example,
    ],
)
@given(batch=batches())
def test_generated_mixed_batches_are_dead_lettered_or_sequenced(
    kafka: KafkaSettings, topics: Topics, feature_worker: FeatureWorker, batch: list[Sent]
) -> None:
    event(f"valid: {sum(s.event is not None for s in batch) // 20 * 20}+")
    event(
        f"re-keyed: {sum(s.event is not None and s.key != s.event.user_id.encode() for s in batch)}"
    )
    expected_valid: dict[str, list[InteractionEvent]] = {}
    for sent in batch:
        if sent.event is not None:
            expected_valid.setdefault(sent.event.user_id, []).append(sent.event)
    assert all(len(events) <= MAX_SEQUENCE for events in expected_valid.values())

    # Some payloads are over the 1 MB a producer sends by default (and parse_event takes).
    producer = make_producer(kafka, **{"message.max.bytes": 5_000_000})
    for sent in batch:

        def delivered(error: KafkaError | None, message: Message, sent: Sent = sent) -> None:
            sent.error = error
            if error is None:
                sent.position = (message.partition() or 0, message.offset() or 0)

        produce(producer, topics.interactions, sent.key, sent.value, on_delivery=delivered)
    assert producer.flush(30) == 0
    assert not [s.error for s in batch if s.error is not None]
    bad = {s.position: s for s in batch if s.event is None and s.position is not None}
    assert len(bad) == sum(s.event is None for s in batch)

    letters: dict[tuple[int, int], list[DeadLetter]] = {}
    latest: dict[str, tuple[int, UserSequence]] = {}
    reader = TopicReader(kafka, [topics.user_sequences, topics.dead_letter])
    read = 0

    def absorb() -> None:
        nonlocal read
        for message in reader.messages[read:]:
            if message.topic() == topics.dead_letter:
                letter = DeadLetter.model_validate_json(message.value() or b"")
                letters.setdefault((letter.partition, letter.offset), []).append(letter)
            else:
                sequence = UserSequence.model_validate_json(message.value() or b"")
                offset = message.offset() or 0
                if sequence.user_id not in latest or offset > latest[sequence.user_id][0]:
                    latest[sequence.user_id] = (offset, sequence)
        read = len(reader.messages)

    def unprocessed() -> list[str]:
        return [
            user
            for user, events in expected_valid.items()
            if user not in latest
            or {e.event_id for e in latest[user][1].entries} != {e.event_id for e in events}
        ]

    try:
        started = progress_at = time.monotonic()
        seen = 0
        while bad.keys() - letters.keys() or unprocessed():
            now = time.monotonic()
            if len(reader.messages) > seen:
                progress_at, seen = now, len(reader.messages)
            if (
                now - started > DEADLINE_S
                or (seen and now - progress_at > STALL_S)
                or feature_worker.process.poll() is not None
            ):
                missing = sorted(bad.keys() - letters.keys())
                pytest.fail(
                    f"{len(missing)} malformed messages not dead-lettered, e.g. "
                    f"{[(bad[p].value or b'')[:80] for p in missing[:3]]}"
                    f"; users not fully processed: {unprocessed()[:5]}; worker exit code "
                    f"{feature_worker.process.poll()}\n--- worker log ---\n"
                    f"{feature_worker.log_tail(15)}"
                )
            reader.poll(0.5)
            absorb()
    finally:
        reader.close()

    assert feature_worker.process.poll() is None, "the worker must survive the batch"
    # Malformed: exactly one letter each, nothing else dead-lettered.
    ours = {p: found for p, found in letters.items() if p in bad}
    assert all(len(found) == 1 for found in ours.values()), "one letter per message"
    valid_positions = {s.position for s in batch if s.event is not None}
    assert not valid_positions & letters.keys(), "a valid event was dead-lettered"
    for position, (letter,) in ours.items():
        sent = bad[position]
        payload = sent.value or b""
        assert letter.reason.strip(), letter
        assert letter.service == "feature" and letter.source_topic == topics.interactions
        assert letter.event_id == f"{topics.interactions}:{position[0]}:{position[1]}"
        assert base64.b64decode(letter.original_value_b64) == payload[:MAX_LETTER_VALUE_BYTES]
        assert letter.original_size == len(payload)
    # Valid: every one in its user's sequence, in time order.
    for user, events in expected_valid.items():
        entries = latest[user][1].entries
        assert {e.event_id for e in entries} == {e.event_id for e in events}, user
        assert [e.timestamp for e in entries] == sorted(e.timestamp for e in entries), user
        by_id = {e.event_id: e for e in events}
        for entry in entries:
            sent_event = by_id[entry.event_id]
            assert (entry.item_id, entry.event_type) == (sent_event.item_id, sent_event.event_type)
            assert entry.timestamp == sent_event.timestamp and entry.value == sent_event.value
