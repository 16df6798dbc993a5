"""Malformed interactions go to dead-letter with a reason; every good event around them
is processed. Runs the real feature worker process against the real broker."""

from __future__ import annotations

import base64
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from recsys.events import DeadLetter, InteractionEvent, UserSequence
from recsys.kafka import MAX_LETTER_VALUE_BYTES, make_producer, produce
from recsys.settings import KafkaSettings
from recsys.topics import Topics
from tests.conftest import kafka_env
from tests.support.services import FeatureWorker
from tests.support.topics import TopicReader

pytestmark = pytest.mark.integration

MALFORMED: list[tuple[str, bytes]] = [
    ("bad json", b"{not json"),
    ("not an object", b"[1, 2, 3]"),
    (
        "missing event_id",
        b'{"user_id": "u1", "item_id": "i1", "event_type": "view", "timestamp": 10}',
    ),
    (
        "wrong type",
        b'{"event_id": "x", "user_id": "u1", "item_id": "i1", "event_type": "view",'
        b' "timestamp": "yesterday"}',
    ),
    (
        "unknown event type",
        b'{"event_id": "y", "user_id": "u1", "item_id": "i1", '
        b'"event_type": "teleport", "timestamp": 10}',
    ),
    ("invalid utf-8", b'{"event_id": "\xff\xfe", "user_id": "u1"}'),
    ("empty", b""),
    ("large garbage", b"{" + b"x" * 300_000),
]


@pytest.fixture
def feature_worker(kafka: KafkaSettings, tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    env = {**os.environ, **kafka_env(kafka), "RECSYS_FEATURE_DATA_DIR": str(tmp_path / "faust")}
    worker = FeatureWorker(env, tmp_path / "feature.log", metrics_port=0)
    yield worker.process
    worker.stop()


def test_malformed_events_are_dead_lettered_and_good_ones_processed(
    kafka: KafkaSettings, topics: Topics, feature_worker: subprocess.Popen[bytes]
) -> None:
    producer = make_producer(kafka)
    good: dict[str, list[str]] = {}
    sent_bad: list[bytes] = []
    for i in range(40):
        user = f"u{i % 4}"
        event = InteractionEvent(
            event_id=f"good-{i}",
            user_id=user,
            item_id=f"item-{i}",
            event_type="click",
            timestamp=1_000 + i,
        )
        produce(producer, topics.interactions, user, event.to_bytes())
        good.setdefault(user, []).append(event.event_id)
        if i % 5 == 0:
            _, payload = MALFORMED[(i // 5) % len(MALFORMED)]
            produce(producer, topics.interactions, user, payload)
            sent_bad.append(payload)
    assert producer.flush(30) == 0

    reader = TopicReader(kafka, [topics.user_sequences, topics.dead_letter])

    def done(_: object) -> bool:
        latest = _latest_sequences(reader, topics)
        all_good = all(
            user in latest and [e.event_id for e in latest[user].entries] == ids
            for user, ids in good.items()
        )
        return all_good and len(reader.on(topics.dead_letter)) >= len(sent_bad)

    try:
        reader.wait_until(done, 90, "all good events in sequences and all bad ones dead-lettered")
        letters = [
            DeadLetter.model_validate_json(m.value() or b"") for m in reader.on(topics.dead_letter)
        ]
    finally:
        reader.close()

    assert feature_worker.poll() is None, "the worker must survive bad input"
    assert len(letters) == len(sent_bad)
    # Originals are kept whole up to MAX_LETTER_VALUE_BYTES, and their size is recorded.
    kept = sorted((base64.b64decode(x.original_value_b64), x.original_size) for x in letters)
    assert kept == sorted((bad[:MAX_LETTER_VALUE_BYTES], len(bad)) for bad in sent_bad)
    for letter in letters:
        assert letter.source_topic == topics.interactions
        assert letter.service == "feature"
        assert letter.reason
    reasons = " ".join(x.reason for x in letters)
    assert "Invalid JSON" in reasons and "event_id" in reasons and "timestamp" in reasons


def _latest_sequences(reader: TopicReader, topics: Topics) -> dict[str, UserSequence]:
    latest: dict[str, UserSequence] = {}
    for message in reader.on(topics.user_sequences):
        sequence = UserSequence.model_validate(json.loads(message.value() or b"{}"))
        known = latest.get(sequence.user_id)
        if known is None or len(sequence.entries) >= len(known.entries):
            latest[sequence.user_id] = sequence
    return latest
