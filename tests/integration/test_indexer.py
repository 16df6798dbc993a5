"""The indexer against the real broker and the embedded vector store.

Each test publishes vector topics with a real producer, drives ``IndexWriter.run_once()``
until the store shows the expected state (polling with a deadline), and checks what
readers would see: the ``items`` alias, the versioned collections, the ``users``
collection and the dead-letter topic.
"""

from __future__ import annotations

import base64
import time
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from confluent_kafka import Producer

from recsys.events import DeadLetter, ItemVector, ModelUpdate, UserVector, encode_vector
from recsys.kafka import make_producer, produce
from recsys.settings import KafkaSettings
from recsys.topics import Topics
from recsys.vectorstore.base import Filter
from recsys.vectorstore.edge import EdgeVectorStore
from recsys.vectorstore.user_payload import read_history
from services.indexer.settings import IndexerSettings
from services.indexer.writer import IndexWriter
from tests.support.topics import TopicReader

pytestmark = pytest.mark.integration

DIM = 8
DEADLINE_S = 30.0
GENRES = ("Action", "Comedy", "Drama")


# -- messages -------------------------------------------------------------------------


def _vector(seed: str) -> np.ndarray:
    rng = np.random.default_rng(zlib.crc32(seed.encode()))
    return rng.normal(size=DIM).astype(np.float32)


def _unit(v: np.ndarray) -> np.ndarray:
    unit: np.ndarray = v / np.linalg.norm(v)
    return unit


def _item_vector(item_id: str, version: str, *, deleted: bool = False, ts: float = 1.0) -> bytes:
    return ItemVector(
        event_id=f"{version}:{item_id}:{ts}",
        item_id=item_id,
        model_version=version,
        vector="" if deleted else encode_vector(_vector(f"{version}:{item_id}")),
        timestamp=ts,
        deleted=deleted,
        payload={}
        if deleted
        else {
            "item_id": item_id,
            "title": f"Title of {item_id}",
            "categories": [GENRES[int(item_id.lstrip("i")) % len(GENRES)]],
        },
    ).to_bytes()


def _model_update(version: str, item_count: int, vector_size: int = DIM) -> bytes:
    return ModelUpdate(
        event_id=f"update-{version}",
        model_name="two-tower",
        version=version,
        artifact_path=f"/artifacts/{version}",
        item_count=item_count,
        vector_size=vector_size,
        metrics={"recall@10": 0.1},
        created_at=1_700_000_000.0,
    ).to_bytes()


def _user_vector(user_id: str, vector: np.ndarray, ts: float, seen: list[str]) -> bytes:
    return UserVector(
        event_id=f"{user_id}:{ts}",
        user_id=user_id,
        model_version="v1",
        vector=encode_vector(vector),
        recent_item_ids=seen[-2:],
        seen_item_ids=seen,
        event_timestamp=ts,
    ).to_bytes()


# -- fixtures -------------------------------------------------------------------------


class Publisher:
    def __init__(self, kafka: KafkaSettings) -> None:
        self.topics = Topics.from_settings(kafka)
        self._producer: Producer = make_producer(kafka)

    def items(self, version: str, ids: range | list[int]) -> None:
        for n in ids:
            self.send(self.topics.item_vectors, f"i{n}", _item_vector(f"i{n}", version))

    def announce(self, version: str, item_count: int) -> None:
        self.send(self.topics.model_updates, "two-tower", _model_update(version, item_count))

    def send(self, topic: str, key: str, value: bytes | None) -> None:
        produce(self._producer, topic, key, value)

    def flush(self) -> None:
        assert self._producer.flush(DEADLINE_S) == 0, "messages not delivered"


class Writers:
    """Opens IndexWriters over the test's store and closes whatever is left open."""

    def __init__(self, store: EdgeVectorStore, kafka: KafkaSettings) -> None:
        self._store = store
        self._kafka = kafka
        self._open: list[IndexWriter] = []

    def open(self, **settings: Any) -> IndexWriter:
        writer = IndexWriter(self._store, IndexerSettings(kafka=self._kafka, **settings))
        self._open.append(writer)
        return writer

    def close(self, writer: IndexWriter) -> None:
        self._open.remove(writer)
        writer.close()

    def close_all(self) -> None:
        while self._open:
            self.close(self._open[-1])


@pytest.fixture
def store(tmp_path: Path) -> Iterator[EdgeVectorStore]:
    s = EdgeVectorStore(tmp_path / "vectors")
    yield s
    s.close()


@pytest.fixture
def publisher(kafka: KafkaSettings) -> Publisher:
    return Publisher(kafka)


@pytest.fixture
def writers(store: EdgeVectorStore, kafka: KafkaSettings) -> Iterator[Writers]:
    w = Writers(store, kafka)
    yield w
    w.close_all()


@pytest.fixture
def writer(writers: Writers) -> IndexWriter:
    return writers.open(group_id="indexer-test")


def run_until(writer: IndexWriter, condition: Callable[[], bool], what: str) -> int:
    """run_once() until the condition holds; returns the messages processed meanwhile."""
    processed = 0
    deadline = time.monotonic() + DEADLINE_S
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {DEADLINE_S:.0f}s ({processed} processed)")
        processed += writer.run_once()
    return processed


def _count(store: EdgeVectorStore, collection: str) -> int:
    return store.count(collection) if store.collection_exists(collection) else 0


# -- tests ----------------------------------------------------------------------------


def test_complete_version_is_indexed_and_served(
    writer: IndexWriter, store: EdgeVectorStore, publisher: Publisher
) -> None:
    publisher.items("v1", range(20))
    publisher.announce("v1", 20)
    publisher.flush()

    run_until(writer, lambda: store.collection_exists("items"), "items alias")

    assert store.resolve("items") == "items_v1"
    assert writer.serving_version == "v1"
    assert store.count("items") == 20
    hits = store.search("items", _vector("v1:i7"), limit=3)
    assert hits[0].id == "i7"
    assert hits[0].score == pytest.approx(1.0, abs=1e-5)
    assert hits[0].payload["title"] == "Title of i7"
    assert hits[0].payload["categories"] == [GENRES[7 % 3]]
    comedy = store.search(
        "items", _vector("v1:i7"), limit=20, query_filter=Filter(any_of={"categories": ["Comedy"]})
    )
    assert sorted(h.id for h in comedy) == sorted(f"i{n}" for n in range(20) if n % 3 == 1)
    [record] = store.retrieve("items", ["i3"])
    np.testing.assert_allclose(record.vector, _unit(_vector("v1:i3")), atol=1e-6)


def test_alias_waits_for_a_complete_collection(
    writer: IndexWriter, store: EdgeVectorStore, publisher: Publisher
) -> None:
    publisher.announce("v1", 25)
    publisher.items("v1", range(20))
    publisher.flush()

    run_until(writer, lambda: _count(store, "items_v1") == 20, "20 of 25 items written")
    for _ in range(5):
        writer.run_once()
        assert not store.collection_exists("items"), "alias flipped to a partial collection"
    assert writer.serving_version is None

    publisher.items("v1", range(20, 25))
    publisher.flush()
    run_until(writer, lambda: store.collection_exists("items"), "alias after the rest")
    assert store.resolve("items") == "items_v1"
    assert store.count("items") == 25


def test_version_still_filling_at_restart_is_promoted(
    writers: Writers, store: EdgeVectorStore, publisher: Publisher
) -> None:
    publisher.announce("v1", 6)
    publisher.items("v1", range(4))
    publisher.flush()
    first = writers.open(group_id="restart")
    run_until(first, lambda: _count(store, "items_v1") == 4, "first four items")
    writers.close(first)

    publisher.items("v1", range(4, 6))
    publisher.flush()
    second = writers.open(group_id="restart")
    # The announcement is read again from the start; the vectors only from the commit.
    run_until(second, lambda: store.collection_exists("items"), "alias after restart")
    assert store.resolve("items") == "items_v1"
    assert store.count("items") == 6


def test_user_vectors_land_in_users_and_newest_wins_in_a_batch(
    writers: Writers, store: EdgeVectorStore, publisher: Publisher
) -> None:
    newer, older, other = _vector("u1-new"), _vector("u1-old"), _vector("u2")
    t = publisher.topics.user_vectors
    # Same key, same partition: the newer vector arrives first, a stale one after it.
    publisher.send(t, "u1", _user_vector("u1", newer, 20.0, ["i1", "i2", "i3"]))
    publisher.send(t, "u1", _user_vector("u1", older, 10.0, ["i1"]))
    publisher.send(t, "u2", _user_vector("u2", other, 5.0, ["i9"]))
    publisher.flush()
    # A long enough wait that one run_once() takes all three in one batch.
    writer = writers.open(group_id="users-test", max_wait_ms=1_000)

    batches: list[int] = []
    deadline = time.monotonic() + DEADLINE_S
    while sum(batches) < 3:
        assert time.monotonic() < deadline, f"user vectors not consumed: {batches}"
        processed = writer.run_once()
        if processed:
            batches.append(processed)
    assert batches == [3], f"the vectors were not in one batch: {batches}"

    assert store.count("users") == 2
    u1, u2 = store.retrieve("users", ["u1", "u2"])
    np.testing.assert_allclose(u1.vector, _unit(newer), atol=1e-6)
    assert u1.payload["model_version"] == "v1"
    assert read_history(u1.payload).seen_item_ids == ("i1", "i2", "i3")
    assert read_history(u1.payload).recent_item_ids == ("i2", "i3")
    assert u1.payload["event_timestamp"] == 20.0
    assert u1.payload["user_id"] == "u1"
    np.testing.assert_allclose(u2.vector, _unit(other), atol=1e-6)
    assert read_history(u2.payload).seen_item_ids == ("i9",)
    assert not store.collection_exists("items")  # users never touch the items alias


def test_deleted_item_vector_removes_the_item(
    writer: IndexWriter, store: EdgeVectorStore, publisher: Publisher
) -> None:
    publisher.items("v1", range(5))
    publisher.announce("v1", 5)
    publisher.flush()
    run_until(writer, lambda: store.collection_exists("items"), "items alias")

    publisher.send(publisher.topics.item_vectors, "i2", _item_vector("i2", "v1", deleted=True))
    publisher.flush()
    run_until(writer, lambda: store.count("items") == 4, "item deleted")

    assert store.retrieve("items", ["i2"]) == []
    assert "i2" not in {h.id for h in store.search("items", _vector("v1:i2"), limit=10)}
    assert store.resolve("items") == "items_v1"  # a smaller catalogue still serves


def test_malformed_item_vector_goes_to_dead_letter(
    writer: IndexWriter, store: EdgeVectorStore, publisher: Publisher, kafka: KafkaSettings
) -> None:
    t = publisher.topics.item_vectors
    bad_json = b'{"event_id": "broken'
    no_vector = b'{"event_id": "x", "item_id": "i99", "model_version": "v1", "timestamp": 1.0}'
    publisher.send(t, "i0", _item_vector("i0", "v1"))
    publisher.send(t, "bad", bad_json)
    publisher.send(t, "i1", _item_vector("i1", "v1"))
    publisher.send(t, "i99", no_vector)
    publisher.send(t, "i2", _item_vector("i2", "v1"))
    publisher.flush()

    run_until(writer, lambda: _count(store, "items_v1") == 3, "good items indexed")
    reader = TopicReader(kafka, [publisher.topics.dead_letter])
    try:
        messages = reader.wait_until(lambda ms: len(ms) >= 2, DEADLINE_S, "two dead letters")
    finally:
        reader.close()

    letters = {m.key(): DeadLetter.model_validate_json(m.value() or b"") for m in messages}
    assert set(letters) == {b"bad", b"i99"}
    for key, original in ((b"bad", bad_json), (b"i99", no_vector)):
        letter = letters[key]
        assert letter.service == "indexer"
        assert letter.source_topic == t
        assert letter.event_id == f"{t}:{letter.partition}:{letter.offset}"
        assert base64.b64decode(letter.original_value_b64) == original
    assert "ItemVector" in letters[b"bad"].reason
    assert "vector" in letters[b"i99"].reason
    found = {r.id for r in store.retrieve("items_v1", ["i0", "i1", "i2", "i99"])}
    assert found == {"i0", "i1", "i2"}


@pytest.mark.parametrize("keep_versions", [1, 2])
def test_new_version_flips_alias_and_old_ones_are_dropped(
    writers: Writers, store: EdgeVectorStore, publisher: Publisher, keep_versions: int
) -> None:
    writer = writers.open(group_id="versions-test", keep_versions=keep_versions)
    publisher.items("v1", range(6))
    publisher.announce("v1", 6)
    publisher.flush()
    run_until(writer, lambda: store.collection_exists("items"), "v1 served")
    assert store.resolve("items") == "items_v1"

    publisher.items("v2", range(8))
    publisher.announce("v2", 8)
    publisher.flush()
    run_until(writer, lambda: store.resolve("items") == "items_v2", "v2 served")

    assert writer.serving_version == "v2"
    assert store.count("items") == 8
    assert store.search("items", _vector("v2:i5"), limit=1)[0].id == "i5"
    collections = [c for c in store.list_collections() if c.startswith("items_")]
    if keep_versions == 1:
        assert collections == ["items_v2"]
    else:
        assert collections == ["items_v1", "items_v2"]
        assert store.count("items_v1") == 6


def test_committed_offsets_are_not_read_again(
    writers: Writers, store: EdgeVectorStore, publisher: Publisher
) -> None:
    # No announcement: those are re-read at every start by design, vectors are not.
    publisher.items("v1", range(10))
    publisher.flush()
    first = writers.open(group_id="offsets-test")
    assert run_until(first, lambda: _count(store, "items_v1") == 10, "first ten") == 10
    writers.close(first)

    second = writers.open(group_id="offsets-test")
    publisher.items("v1", range(10, 13))
    publisher.flush()
    processed = run_until(second, lambda: _count(store, "items_v1") == 13, "three more")
    for _ in range(3):
        processed += second.run_once()
    assert processed == 3


def test_new_group_reads_from_the_beginning(
    writers: Writers, store: EdgeVectorStore, publisher: Publisher
) -> None:
    publisher.items("v1", range(4))
    publisher.flush()
    first = writers.open(group_id="group-a")
    run_until(first, lambda: _count(store, "items_v1") == 4, "four items")
    writers.close(first)

    store.drop_collection("items_v1")
    other = writers.open(group_id="group-b")
    assert run_until(other, lambda: _count(store, "items_v1") == 4, "replayed") == 4


def test_user_vector_without_a_vector_is_dead_lettered(
    writer: IndexWriter, store: EdgeVectorStore, publisher: Publisher, kafka: KafkaSettings
) -> None:
    empty = b'{"event_id": "e", "user_id": "u1", "model_version": "v1", "event_timestamp": 1.0}'
    publisher.send(publisher.topics.user_vectors, "u1", empty)
    publisher.send(publisher.topics.user_vectors, "u2", _user_vector("u2", _vector("u2"), 1.0, []))
    publisher.flush()

    run_until(writer, lambda: _count(store, "users") == 1, "good user indexed")
    reader = TopicReader(kafka, [publisher.topics.dead_letter])
    try:
        reader.wait_until(lambda ms: len(ms) >= 1, DEADLINE_S, "dead letter")
    finally:
        reader.close()


def test_a_later_announcement_of_an_older_version_rolls_back(
    writers: Writers, store: EdgeVectorStore, publisher: Publisher
) -> None:
    """The last announcement wins, not the highest version number (rollback)."""
    writer = writers.open(group_id="rollback-test", keep_versions=2)
    publisher.items("v1", range(6))
    publisher.announce("v1", 6)
    publisher.flush()
    run_until(writer, lambda: writer.serving_version == "v1", "v1 served")
    publisher.items("v2", range(8))
    publisher.announce("v2", 8)
    publisher.flush()
    run_until(writer, lambda: writer.serving_version == "v2", "v2 served")

    publisher.announce("v1", 6)  # v1's collection is still kept: the flip is immediate
    publisher.flush()
    run_until(writer, lambda: store.resolve("items") == "items_v1", "rolled back to v1")
    assert store.count("items") == 6

    # with v1 dropped, a rollback re-publishes its vectors before announcing it
    publisher.announce("v2", 8)
    publisher.flush()
    run_until(writer, lambda: store.resolve("items") == "items_v2", "forward to v2 again")
    store.drop_collection("items_v1")
    publisher.items("v1", range(6))
    publisher.announce("v1", 6)
    publisher.flush()
    run_until(writer, lambda: store.resolve("items") == "items_v1", "v1 rebuilt and served")

    # a restarted indexer replays every announcement and keeps serving the last one
    writers.close(writer)
    restarted = writers.open(group_id="rollback-test", keep_versions=2)
    for _ in range(5):
        restarted.run_once()
    assert restarted.serving_version == "v1" and store.resolve("items") == "items_v1"
