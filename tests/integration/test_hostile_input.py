"""10,000 malformed interactions of assorted kinds (bad JSON, wrong types, missing fields,
huge payloads, wrong encodings) all land in dead-letter, one letter each, and every valid
event around them is processed. Runs the real feature worker process against the broker.
"""

from __future__ import annotations

import base64
import json
import os
import random
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import KafkaError, Message

from recsys.events import (
    DeadLetter,
    InteractionEvent,
    InvalidEvent,
    UserSequence,
    parse_event,
)
from recsys.kafka import make_producer, produce
from recsys.settings import KafkaSettings
from recsys.topics import Topics
from tests.conftest import kafka_env
from tests.support.services import FeatureWorker
from tests.support.topics import TopicReader

pytestmark = pytest.mark.integration

MALFORMED_COUNT = 10_000
VALID_PER_USER = 50
USERS = 20
# Above the 1,000,000 bytes parse_event accepts; Tansu takes them from a producer whose
# message.max.bytes is raised. Only a handful, to keep the volume reasonable.
HUGE_SIZES = (1_000_001, 1_200_000, 1_500_000, 2_000_000)
# Under the limit, but their letters (base64) are larger than a default 1 MB request.
LARGE_SIZES = (300_000, 800_000)

# A letter keeps the whole original value up to this size at least.
SMALL_BYTES = 64 * 1024
STALL_S = 30

Payload = bytes | None  # None: a tombstone (null value)
Fields = dict[str, Any]


def _event(rng: random.Random, i: int) -> Fields:
    return {
        "event_id": f"bad-{i}",
        "user_id": f"u{rng.randrange(USERS):02d}",
        "item_id": f"item-{rng.randrange(500)}",
        "event_type": rng.choice(["view", "click", "purchase"]),
        "timestamp": 1_700_000_000 + rng.randrange(10**6),
    }


def _dumps(fields: Fields) -> bytes:
    return json.dumps(fields).encode()


def _truncated(rng: random.Random, i: int) -> Payload:
    raw = _dumps(_event(rng, i))
    return raw[: rng.randrange(1, len(raw) - 1)]


def _invalid_json(rng: random.Random, i: int) -> Payload:
    return rng.choice(
        [
            b"{not json",
            b'{"event_id": }',
            b"{'event_id': 'single quotes'}",
            b'{"event_id": "a", "user_id": "u01",}',
            b'{"event_id" "a"}',
            b"}{",
            b'{"a": 1} {"b": 2}',
            b"[" * 5_000 + b"]" * 5_000,  # nesting deeper than any parser's limit
            bytes(rng.randrange(32, 127) for _ in range(rng.randrange(1, 200))),
        ]
    )


def _not_an_object(rng: random.Random, i: int) -> Payload:
    return rng.choice(
        [b"[1, 2, 3]", b'"a string"', b"42", b"null", b"true", b"[" + _dumps(_event(rng, i)) + b"]"]
    )


def _wrong_type(rng: random.Random, i: int) -> Payload:
    fields = _event(rng, i)
    name, value = rng.choice(
        [
            ("user_id", 123),
            ("user_id", None),
            ("item_id", ["i1", "i2"]),
            ("event_id", {"nested": True}),
            ("event_type", 5),
            ("timestamp", True),
            ("value", "4.5"),
            ("value", False),
        ]
    )
    fields[name] = value
    return _dumps(fields)


def _missing_field(rng: random.Random, i: int) -> Payload:
    fields = _event(rng, i)
    del fields[rng.choice(["event_id", "user_id", "item_id", "event_type", "timestamp"])]
    return _dumps(fields)


def _unknown_event_type(rng: random.Random, i: int) -> Payload:
    fields = _event(rng, i)
    fields["event_type"] = rng.choice(["teleport", "VIEW", "", "clicked", "rating!"])
    return _dumps(fields)


def _bad_timestamp(rng: random.Random, i: int) -> Payload:
    raw = _dumps({**_event(rng, i), "timestamp": 0})
    bad = rng.choice(
        [
            *(b"NaN", b"Infinity", b"-Infinity", b"-1", b"-0.5", b'"now"', b'"1700000000"'),
            *(b"1e400", b"5000000000", b"null", b"1" + b"0" * 5_000),
        ]
    )
    return raw.replace(b'"timestamp": 0', b'"timestamp": ' + bad)


def _bad_identifier(rng: random.Random, i: int) -> Payload:
    fields = _event(rng, i)
    fields[rng.choice(["event_id", "user_id", "item_id"])] = rng.choice(["", "   ", "x" * 257])
    return _dumps(fields)


def _bad_value(rng: random.Random, i: int) -> Payload:
    raw = _dumps({**_event(rng, i), "value": 0})
    return raw.replace(b'"value": 0', b'"value": ' + rng.choice([b"NaN", b"Infinity", b"1e999"]))


def _invalid_utf8(rng: random.Random, i: int) -> Payload:
    raw = _dumps({**_event(rng, i), "item_id": "ITEM"})
    bad = rng.choice(
        [b"\xff\xfe", b"\xc0\xaf", b"\xed\xa0\x80", b"caf\xe9", b"\x80", b"ab\xf4\x90"]
    )
    return raw.replace(b"ITEM", bad)


def _other_encoding(rng: random.Random, i: int) -> Payload:
    text = json.dumps({**_event(rng, i), "item_id": "café-crème"}, ensure_ascii=False)
    return text.encode(rng.choice(["utf-16", "utf-16-le", "utf-16-be", "utf-32", "latin-1"]))


def _empty(rng: random.Random, i: int) -> Payload:
    return rng.choice([b"", None, b"   ", b"\x00", b"\n"])


def _binary_noise(rng: random.Random, i: int) -> Payload:
    return rng.randbytes(rng.randrange(1, 300))


KINDS: dict[str, Callable[[random.Random, int], Payload]] = {
    "truncated json": _truncated,
    "invalid json": _invalid_json,
    "not an object": _not_an_object,
    "wrong type": _wrong_type,
    "missing field": _missing_field,
    "unknown event_type": _unknown_event_type,
    "bad timestamp": _bad_timestamp,
    "bad identifier": _bad_identifier,
    "bad value": _bad_value,
    "invalid utf-8": _invalid_utf8,
    "other encoding": _other_encoding,
    "empty": _empty,
    "binary noise": _binary_noise,
}


def _sized(size: int, valid_json: bool) -> bytes:
    """A payload of exactly ``size`` bytes: garbage, or a valid event with a huge field."""
    if not valid_json:
        return b"{" + b"x" * (size - 1)
    head = _dumps({**_event(random.Random(size), size), "padding": ""})[:-2]
    return head + b"p" * (size - len(head) - 2) + b'"}'


@dataclass
class Sent:
    """A message as produced, with where the broker put it."""

    kind: str  # "valid" or one of KINDS, "huge", "large"
    key: bytes | None
    value: Payload
    position: tuple[int, int] | None = None  # (partition, offset) once delivered
    error: KafkaError | None = None


@dataclass
class Plan:
    messages: list[Sent] = field(default_factory=list)
    valid: dict[str, list[str]] = field(default_factory=dict)  # user -> event ids, in order


def build_plan(seed: int = 11) -> Plan:
    rng = random.Random(seed)
    bad: list[Sent] = []
    for size in LARGE_SIZES + HUGE_SIZES:
        kind = "huge" if size > 1_000_000 else "large"
        # A huge one may even be a well-formed event: its size alone makes it invalid.
        bad.append(Sent(kind, b"u00", _sized(size, valid_json=kind == "huge" and size % 2 == 0)))
    names = list(KINDS)
    while len(bad) < MALFORMED_COUNT:
        name = names[len(bad) % len(names)]
        key = rng.choice([f"u{rng.randrange(USERS):02d}".encode(), None, rng.randbytes(8)])
        bad.append(Sent(name, key, KINDS[name](rng, len(bad))))
    rng.shuffle(bad)

    plan = Plan()
    valid: list[Sent] = []
    for n in range(VALID_PER_USER):
        for u in range(USERS):
            user = f"u{u:02d}"
            event = InteractionEvent(
                event_id=f"{user}-ok-{n}",
                user_id=user,
                item_id=f"item-{rng.randrange(500)}",
                event_type="click",
                timestamp=1_700_000_000 + n * 10 + u,
            )
            valid.append(Sent("valid", user.encode(), event.to_bytes()))
            plan.valid.setdefault(user, []).append(event.event_id)
    # Spread the valid events evenly through the malformed ones, in their own order.
    every = len(bad) // len(valid)
    for i, sent in enumerate(bad):
        if i % every == 0 and i // every < len(valid):
            plan.messages.append(valid[i // every])
        plan.messages.append(sent)
    plan.messages.extend(valid[len(bad) // every + (len(bad) % every > 0) :])
    return plan


@pytest.fixture
def feature_worker(kafka: KafkaSettings, tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    env = {
        **os.environ,
        **kafka_env(kafka),
        "RECSYS_FEATURE_DATA_DIR": str(tmp_path / "faust"),
        "RECSYS_FEATURE_MAX_SEQUENCE_LENGTH": "500",
    }
    worker = FeatureWorker(env, tmp_path / "feature.log", metrics_port=0)
    yield worker.process
    worker.stop()


def _log_tail(tmp_path: Path, lines: int = 5) -> str:
    """The worker's errors (the dead-letter warnings drown them) and its last lines."""
    text = (tmp_path / "feature.log").read_text(errors="replace").splitlines()
    errors = [line for line in text if '"level": "error"' in line or '"critical"' in line]
    return "\n".join(line[:1_500] for line in [*errors[-lines:], "...", *text[-lines:]])


def test_ten_thousand_malformed_messages_dead_lettered_and_valid_ones_processed(
    kafka: KafkaSettings,
    topics: Topics,
    tmp_path: Path,
    feature_worker: subprocess.Popen[bytes],
) -> None:
    plan = build_plan()
    bad = [m for m in plan.messages if m.kind != "valid"]
    assert len(bad) == MALFORMED_COUNT
    assert sum(len(ids) for ids in plan.valid.values()) == VALID_PER_USER * USERS
    # The test's own classification: every "malformed" payload really is one.
    for sent in bad:
        with pytest.raises(InvalidEvent):
            parse_event(InteractionEvent, sent.value)

    producer = make_producer(kafka, **{"message.max.bytes": 5_000_000})
    for sent in plan.messages:

        def delivered(error: KafkaError | None, message: Message, sent: Sent = sent) -> None:
            sent.error = error
            if error is None:
                sent.position = (message.partition() or 0, message.offset() or 0)

        produce(producer, topics.interactions, sent.key, sent.value, on_delivery=delivered)
    assert producer.flush(60) == 0
    refused = [m for m in plan.messages if m.error is not None]
    # Tansu accepts records up to a few MB once the producer allows them; if a broker
    # refused the huge ones, they never reached the worker and are not counted.
    assert all(m.kind == "huge" for m in refused), [(m.kind, m.error) for m in refused[:5]]
    assert not refused, f"the broker refused {len(refused)} huge messages: {refused[0].error}"
    expected = {m.position: m for m in bad if m.position is not None}
    assert len(expected) == MALFORMED_COUNT

    reader = TopicReader(kafka, [topics.user_sequences, topics.dead_letter])
    letters: dict[tuple[int, int], DeadLetter] = {}
    letter_count = 0
    latest: dict[str, tuple[int, UserSequence]] = {}
    read = 0

    def absorb() -> None:
        nonlocal read, letter_count
        for message in reader.messages[read:]:
            if message.topic() == topics.dead_letter:
                letter = DeadLetter.model_validate_json(message.value() or b"")
                letters[(letter.partition, letter.offset)] = letter
                letter_count += 1
            else:
                sequence = UserSequence.model_validate_json(message.value() or b"")
                offset = message.offset() or 0
                if sequence.user_id not in latest or offset > latest[sequence.user_id][0]:
                    latest[sequence.user_id] = (offset, sequence)
        read = len(reader.messages)

    def unprocessed() -> list[str]:
        return [
            user
            for user, ids in plan.valid.items()
            if user not in latest or [e.event_id for e in latest[user][1].entries] != ids
        ]

    try:
        deadline = time.monotonic() + 100
        progress_at, seen = time.monotonic(), 0
        while len(letters) < len(expected) or unprocessed():
            now = time.monotonic()
            if len(reader.messages) > seen:
                progress_at, seen = now, len(reader.messages)
            # Nothing new for STALL_S (start-up included) means the worker stopped.
            if now > deadline or now - progress_at > STALL_S or feature_worker.poll() is not None:
                missing = sorted(expected.keys() - letters.keys())
                kinds = sorted({expected[p].kind for p in missing})
                sizes = sorted(len(expected[p].value or b"") for p in missing)
                pytest.fail(
                    f"{len(missing)} malformed messages not dead-lettered (kinds {kinds},"
                    f" largest values {sizes[-8:]} bytes); users not fully processed:"
                    f" {unprocessed()}; worker exit code {feature_worker.poll()},"
                    f" {now - progress_at:.0f} s since anything new was read\n"
                    f"--- worker log ---\n{_log_tail(tmp_path)}"
                )
            reader.poll(0.5)
            absorb()
    finally:
        reader.close()

    assert feature_worker.poll() is None, "the worker must survive hostile input"
    assert letter_count == len(letters) == MALFORMED_COUNT, "one letter per malformed message"
    assert letters.keys() == expected.keys()
    for position, letter in letters.items():
        sent = expected[position]
        assert letter.reason.strip()
        assert letter.source_topic == topics.interactions
        assert letter.service == "feature"
        assert letter.event_id == f"{topics.interactions}:{position[0]}:{position[1]}"
        original, payload = base64.b64decode(letter.original_value_b64), sent.value or b""
        if len(payload) <= SMALL_BYTES:
            assert original == payload
        else:  # a letter may keep only the head of a huge value, but must keep one
            assert original and payload.startswith(original)
    reasons = {m.kind: letters[p].reason for p, m in expected.items()}
    assert "exceeds" in reasons["huge"]
    assert "Invalid JSON" in reasons["truncated json"]
    for user, ids in plan.valid.items():
        assert [e.event_id for e in latest[user][1].entries] == ids, user
