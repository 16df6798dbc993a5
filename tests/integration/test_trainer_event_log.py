"""The trainer's EventLog over real messages read back from the test broker."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from confluent_kafka import Message

from recsys.kafka import make_producer, produce
from recsys.settings import KafkaSettings
from recsys.topics import Topics
from services.trainer.data import EventLog
from tests.support.topics import TopicReader

pytestmark = pytest.mark.integration

DEADLINE_S = 30.0


def _interaction(event_id: str, user: str, item: str, ts: float) -> bytes:
    return json.dumps(
        {
            "event_id": event_id,
            "user_id": user,
            "item_id": item,
            "event_type": "view",
            "timestamp": ts,
        }
    ).encode()


def _item(event_id: str, item: str, ts: float, **fields: Any) -> bytes:
    return json.dumps({"event_id": event_id, "item_id": item, "timestamp": ts, **fields}).encode()


@pytest.fixture
def reader(kafka: KafkaSettings, topics: Topics) -> Iterator[TopicReader]:
    r = TopicReader(kafka, [topics.interactions, topics.items])
    yield r
    r.close()


def _publish_and_read(
    kafka: KafkaSettings, reader: TopicReader, records: list[tuple[str, str, bytes | None]]
) -> list[Message]:
    """Produce (topic, key, value) records, then read all of them back.

    Records that share a key share a partition, so their relative order is kept.
    """
    producer = make_producer(kafka)
    for topic, key, value in records:
        produce(producer, topic, key, value)
    assert producer.flush(DEADLINE_S) == 0
    messages = reader.wait_until(
        lambda ms: len(ms) >= len(records), DEADLINE_S, f"{len(records)} messages"
    )
    assert len(messages) == len(records)
    return messages


def _fill(topics: Topics, messages: list[Message]) -> tuple[EventLog, list[bool]]:
    log = EventLog(topics)
    return log, [log.add(m) for m in messages]


def test_duplicate_interactions_are_ignored(
    kafka: KafkaSettings, topics: Topics, reader: TopicReader
) -> None:
    t = topics.interactions
    messages = _publish_and_read(
        kafka,
        reader,
        [
            (t, "u1", _interaction("e1", "u1", "i1", 1.0)),
            (t, "u1", _interaction("e2", "u1", "i2", 2.0)),
            (t, "u1", _interaction("e1", "u1", "i1", 1.0)),  # redelivery
            (t, "u1", _interaction("e1", "u1", "i9", 9.0)),  # same id, other content
            (t, "u2", _interaction("e3", "u2", "i1", 3.0)),
        ],
    )
    log, added = _fill(topics, messages)

    assert sorted(log.interactions) == ["e1", "e2", "e3"]
    assert added.count(True) == 3
    assert log.interactions["e1"].item_id == "i1"  # the first delivery is kept
    assert log.skipped == 0
    interactions, items = log.snapshot()
    assert sorted(e.event_id for e in interactions) == ["e1", "e2", "e3"]
    assert items == {}


def test_invalid_messages_are_counted_as_skipped(
    kafka: KafkaSettings, topics: Topics, reader: TopicReader
) -> None:
    messages = _publish_and_read(
        kafka,
        reader,
        [
            (topics.interactions, "u1", _interaction("e1", "u1", "i1", 1.0)),
            (topics.interactions, "u1", b"not json"),
            (topics.interactions, "u1", None),  # tombstone
            (topics.interactions, "u1", json.dumps({"event_id": "e2"}).encode()),
            (
                topics.interactions,
                "u1",
                json.dumps(
                    {
                        "event_id": "e3",
                        "user_id": "u1",
                        "item_id": "i1",
                        "event_type": "teleport",
                        "timestamp": 1.0,
                    }
                ).encode(),
            ),
            (topics.items, "i1", _item("x1", "i1", 1.0)),  # upsert without text
            (topics.items, "i2", b"\xff\xfe"),
            (topics.items, "i3", _item("x3", "i3", 1.0, title="Fine")),
        ],
    )
    log, added = _fill(topics, messages)

    assert log.skipped == 6
    assert list(log.interactions) == ["e1"]
    assert added.count(True) == 1
    assert list(log.items) == ["i3"]


def test_newer_item_state_wins(kafka: KafkaSettings, topics: Topics, reader: TopicReader) -> None:
    t = topics.items
    messages = _publish_and_read(
        kafka,
        reader,
        [
            (t, "i1", _item("a1", "i1", 10.0, title="First title")),
            (t, "i1", _item("a2", "i1", 20.0, title="Second title")),
            (t, "i1", _item("a3", "i1", 15.0, title="Late, stale title")),  # older: ignored
            (t, "i2", _item("b1", "i2", 5.0, title="Only")),
            (t, "i3", _item("c1", "i3", 7.0, title="Before")),
            (t, "i3", _item("c2", "i3", 7.0, title="Same time, later")),  # tie: later wins
        ],
    )
    log, added = _fill(topics, messages)

    assert not any(added)  # items never count as new interactions
    assert log.items["i1"].title == "Second title"
    assert log.items["i2"].title == "Only"
    assert log.items["i3"].title == "Same time, later"
    _, items = log.snapshot()
    assert {k: v.title for k, v in items.items()} == {
        "i1": "Second title",
        "i2": "Only",
        "i3": "Same time, later",
    }


def test_deleted_items_are_excluded_from_snapshot(
    kafka: KafkaSettings, topics: Topics, reader: TopicReader
) -> None:
    t = topics.items
    messages = _publish_and_read(
        kafka,
        reader,
        [
            (t, "i1", _item("a1", "i1", 10.0, title="Kept")),
            (t, "i2", _item("b1", "i2", 10.0, title="Deleted later")),
            (t, "i2", _item("b2", "i2", 11.0, op="delete")),
            (t, "i3", _item("c1", "i3", 10.0, op="delete")),
            (t, "i3", _item("c2", "i3", 12.0, title="Re-created")),
            (t, "i4", _item("d1", "i4", 20.0, title="Stale delete ignored")),
            (t, "i4", _item("d2", "i4", 19.0, op="delete")),
        ],
    )
    log, _ = _fill(topics, messages)

    assert log.items["i2"].op == "delete"  # the log keeps the tombstone state ...
    interactions, items = log.snapshot()
    assert sorted(items) == ["i1", "i3", "i4"]  # ... the snapshot only live items
    assert items["i3"].title == "Re-created"
    assert interactions == []


def test_snapshot_is_a_copy(kafka: KafkaSettings, topics: Topics, reader: TopicReader) -> None:
    messages = _publish_and_read(
        kafka,
        reader,
        [
            (topics.interactions, "u1", _interaction("e1", "u1", "i1", 1.0)),
            (topics.items, "i1", _item("a1", "i1", 1.0, title="T")),
            (topics.interactions, "u1", _interaction("e2", "u1", "i1", 2.0)),
            (topics.items, "i2", _item("b1", "i2", 1.0, title="U")),
        ],
    )

    # Partitions interleave arbitrarily, so pick messages by content, not arrival order.
    def find(marker: bytes) -> Message:
        return next(m for m in messages if marker in (m.value() or b""))

    log = EventLog(topics)
    log.add(find(b'"e1"'))
    log.add(find(b'"a1"'))
    interactions, items = log.snapshot()

    log.add(find(b'"e2"'))
    log.add(find(b'"b1"'))

    assert [e.event_id for e in interactions] == ["e1"]
    assert list(items) == ["i1"]
    assert len(log.interactions) == 2 and len(log.items) == 2


def test_messages_of_other_topics_are_ignored(kafka: KafkaSettings, topics: Topics) -> None:
    reader = TopicReader(kafka, [topics.user_sequences])
    try:
        messages = _publish_and_read(
            kafka, reader, [(topics.user_sequences, "u1", _interaction("e1", "u1", "i1", 1.0))]
        )
    finally:
        reader.close()
    log, added = _fill(topics, messages)
    assert added == [False]
    assert log.interactions == {} and log.items == {} and log.skipped == 0
