"""Kafka vector topics -> vector store, in batches, at least once.

Offsets of the vector topics are committed only after the store holds the batch, and
writes are idempotent (upserts by id), so a crash replays at most one batch. Model
announcements are re-read from the beginning at every start (one small partition), so
a version whose collection was still filling when the process stopped is still promoted.
A version's collection becomes the ``items`` alias target only once it holds every item
the announcement counts: readers never see a half-built catalogue.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field

from confluent_kafka import Consumer, Message, Producer
from prometheus_client import Counter, Gauge, Histogram

from recsys.artifacts import version_number
from recsys.events import InvalidEvent, ItemVector, ModelUpdate, UserVector, parse_event
from recsys.kafka import (
    DeadLetterSink,
    make_consumer,
    make_producer,
    make_replay_consumer,
    usable,
)
from recsys.topics import Topics
from recsys.vectorstore import VectorRecord, VectorStore
from recsys.vectorstore.user_payload import user_payload
from services.indexer.settings import IndexerSettings

log = logging.getLogger(__name__)

WRITES = Counter("recsys_indexer_writes_total", "Records written", ["kind"])
BATCH_SECONDS = Histogram("recsys_indexer_batch_seconds", "Time to write one batch")
SERVING = Gauge("recsys_indexer_serving_version", "Version behind the items alias")
FRESHNESS = Histogram(
    "recsys_indexer_freshness_seconds",
    "Event time of the newest interaction a user vector reflects to the vector being indexed",
    buckets=(0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0),
)

ITEM_PREFIX = "items_"
KEYWORD_FIELDS = ("categories",)


def version_order(version: str) -> int:
    """Sort key of a version name; names that are not versions sort first."""
    try:
        return version_number(version)
    except ValueError:
        return -1


def items_collection(version: str) -> str:
    return f"{ITEM_PREFIX}{version}"


@dataclass
class _Batch:
    # version -> item id -> (event, message); the message is kept to dead-letter it.
    items: dict[str, dict[str, tuple[ItemVector, Message]]] = field(default_factory=dict)
    users: dict[str, tuple[UserVector, Message]] = field(default_factory=dict)


class IndexWriter:
    def __init__(
        self, store: VectorStore, settings: IndexerSettings, producer: Producer | None = None
    ) -> None:
        self._store = store
        self._settings = settings
        self._topics = Topics.from_settings(settings.kafka)
        self._producer = producer or make_producer(settings.kafka)
        self._dead_letters = DeadLetterSink(self._producer, self._topics, "indexer")
        self._vectors: Consumer = make_consumer(settings.kafka, settings.group_id)
        self._vectors.subscribe([self._topics.item_vectors, self._topics.user_vectors])
        # Announcements: read whole at every start, never committed.
        self._updates: Consumer = make_replay_consumer(
            settings.kafka, self._topics.model_updates, settings.group_id
        )
        self._announced: dict[str, ModelUpdate] = {}
        # The last announcement in the log is the version to serve: a rollback is a
        # later announcement of an older version, so order, not version number, decides.
        self._wanted: ModelUpdate | None = None
        self.serving_version: str | None = self._current_serving()
        self._previous_serving: str | None = None

    def _current_serving(self) -> str | None:
        alias = self._settings.items_alias
        if not self._store.collection_exists(alias):
            return None
        return self._store.resolve(alias).removeprefix(ITEM_PREFIX)

    def run(self, stop: threading.Event) -> None:
        log.info("indexer started", extra={"serving": self.serving_version})
        while not stop.is_set():
            self.run_once()

    def run_once(self) -> int:
        wait_s = max(self._settings.max_wait_ms / 1000, 0.001)
        messages = usable(self._updates.consume(100, 0.001))
        vector_messages = usable(self._vectors.consume(self._settings.batch_size, wait_s))
        messages.extend(vector_messages)
        if not messages:
            self._promote_complete_versions()
            return 0
        with BATCH_SECONDS.time():
            self._write(self._parse(messages))
            self._promote_complete_versions()
        if vector_messages:
            self._vectors.commit(asynchronous=False)
        self._producer.poll(0)
        return len(messages)

    def _parse(self, messages: list[Message]) -> _Batch:
        batch = _Batch()
        for message in messages:
            topic = message.topic()
            try:
                if topic == self._topics.model_updates:
                    self._announce(parse_event(ModelUpdate, message.value()))
                elif topic == self._topics.item_vectors:
                    item = parse_event(ItemVector, message.value())
                    batch.items.setdefault(item.model_version, {})[item.item_id] = (item, message)
                elif topic == self._topics.user_vectors:
                    user = parse_event(UserVector, message.value())
                    known = batch.users.get(user.user_id)
                    if known is None or known[0].event_timestamp <= user.event_timestamp:
                        batch.users[user.user_id] = (user, message)
            except InvalidEvent as exc:
                self._dead_letters.send_message(message, str(exc))
        return batch

    def _announce(self, update: ModelUpdate) -> None:
        # Collections are created when item vectors arrive, not here: announcements are
        # replayed at every start and must not resurrect dropped versions.
        self._announced[update.version] = update
        self._wanted = update

    def _write(self, batch: _Batch) -> None:
        for version, items in batch.items.items():
            collection = items_collection(version)
            live = [(i, m) for i, m in items.values() if not i.deleted]
            deleted = [i.item_id for i, _ in items.values() if i.deleted]
            if live:
                announced = self._announced.get(version)
                dim = announced.vector_size if announced else live[0][0].array().shape[0]
                self._store.create_collection(collection, dim, KEYWORD_FIELDS)
                records = [(VectorRecord(i.item_id, i.array(), i.payload), m) for i, m in live]
                WRITES.labels("item").inc(self._upsert(collection, records))
            if deleted and self._store.collection_exists(collection):
                self._store.delete(collection, deleted)
                WRITES.labels("item_deleted").inc(len(deleted))
        if batch.users:
            name = self._settings.users_collection
            users = list(batch.users.values())
            self._prepare_users_collection(users)
            records = [(self._user_record(u), m) for u, m in users]
            WRITES.labels("user").inc(self._upsert(name, records))
            now = time.time()
            for user, _ in users:
                # replays and re-encodes of old events are not freshness; skip beyond a day
                if 0 <= now - user.event_timestamp < 86_400:
                    FRESHNESS.observe(now - user.event_timestamp)

    def _prepare_users_collection(self, users: list[tuple[UserVector, Message]]) -> None:
        """Create ``users``, or recreate it when a newer model changed the vector size."""
        name = self._settings.users_collection
        newest = max(users, key=lambda pair: version_order(pair[0].model_version))[0]
        size = newest.array().shape[0]
        if self._store.collection_exists(name):
            current = self._store.dimension(name)
            announced = self._announced.get(newest.model_version)
            if current == size or announced is None or announced.vector_size != size:
                return
            log.warning(
                "user vector size changed with the model; recreating users",
                extra={"from": current, "to": size, "version": newest.model_version},
            )
            self._store.drop_collection(name)
        self._store.create_collection(name, size)

    def _upsert(self, collection: str, records: list[tuple[VectorRecord, Message]]) -> int:
        """Write a batch; if the store refuses it, write one by one and dead-letter the
        records it refuses (wrong size, reserved payload key), so one bad vector never
        blocks the topic."""
        try:
            self._store.upsert(collection, [record for record, _ in records])
            return len(records)
        except ValueError:
            written = 0
            for record, message in records:
                try:
                    self._store.upsert(collection, [record])
                    written += 1
                except ValueError as exc:
                    self._dead_letters.send_message(message, f"refused by the store: {exc}")
            return written

    @staticmethod
    def _user_record(user: UserVector) -> VectorRecord:
        return VectorRecord(
            user.user_id,
            user.array(),
            user_payload(
                user.user_id,
                user.model_version,
                user.event_timestamp,
                user.seen_item_ids,
                user.recent_item_ids,
                user.recent_event_types,
            ),
        )

    def _promote_complete_versions(self) -> None:
        """Flip the alias to the last announced version once its collection is complete."""
        update = self._wanted
        if update is None or update.version == self.serving_version:
            return
        collection = items_collection(update.version)
        if not self._store.collection_exists(collection):
            return
        if self._store.count(collection) < update.item_count:
            return
        self._store.optimize(collection)
        self._store.set_alias(self._settings.items_alias, collection)
        self._previous_serving, self.serving_version = self.serving_version, update.version
        SERVING.set(version_order(update.version))
        log.info(
            "items alias switched",
            extra={
                "version": update.version,
                "previous": self._previous_serving,
                "items": update.item_count,
            },
        )
        self._drop_old_versions()

    def _drop_old_versions(self) -> None:
        """Keep the serving collection, the one it replaced (for a quick rollback) and any
        newer one still filling; drop the rest beyond ``keep_versions``."""
        keep = [self.serving_version, self._previous_serving][: self._settings.keep_versions]
        filling = self._wanted.version if self._wanted is not None else None
        protected = {items_collection(v) for v in (*keep, filling) if v}
        for collection in self._store.list_collections():
            if collection.startswith(ITEM_PREFIX) and collection not in protected:
                version = collection.removeprefix(ITEM_PREFIX)
                if self._announced.get(version) is None and version_order(version) > version_order(
                    self.serving_version or ""
                ):
                    continue  # vectors of a version not announced yet: still arriving
                self._store.drop_collection(collection)
                log.info("dropped old item collection", extra={"collection": collection})

    def close(self) -> None:
        self._vectors.close()
        self._updates.close()
        self._producer.flush(10)
