"""Micro-batched inference: one batch of messages in, vectors out.

The process keeps three things in memory, all rebuilt by replaying compacted topics
at start (it never commits offsets): the latest sequence of each user, the item
catalogue, and the model version to serve. Several updates of one user inside a batch
are coalesced into one encode.

Each user's latest sequence is kept as the bytes of its message, parsed again only when a
new model version re-encodes everyone. Bytes are invisible to the garbage collector;
100,000 parsed sequences were millions of tracked objects, and every full collection
over them stopped the process for about 0.3 s, in the middle of the stream.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence

import numpy as np
from confluent_kafka import Message, Producer
from prometheus_client import Counter, Gauge, Histogram

from recsys.artifacts import ArtifactStore
from recsys.events import (
    InvalidEvent,
    ItemEvent,
    ItemVector,
    ModelUpdate,
    UserSequence,
    UserVector,
    encode_vector,
    parse_event,
)
from recsys.kafka import DeadLetterSink, produce
from recsys.topics import Topics
from services.inference.model_state import ServingModel
from services.inference.settings import InferenceSettings

log = logging.getLogger(__name__)
# Recent interactions sent with a user vector: explanations and re-encoding in ranking.
RECENT = 50

BATCH_SIZE = Histogram(
    "recsys_inference_batch_size",
    "Users encoded per ONNX call",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024),
)
ENCODE_SECONDS = Histogram("recsys_inference_encode_seconds", "ONNX user encoding time")
VECTORS = Counter("recsys_inference_vectors_total", "Vectors published", ["kind"])
MODEL_VERSION = Gauge("recsys_inference_model_info", "Serving model version", ["version"])

TextEncode = Callable[[Sequence[str]], np.ndarray]


class InferenceService:
    def __init__(
        self,
        settings: InferenceSettings,
        producer: Producer,
        artifacts: ArtifactStore,
        encode_texts: TextEncode,
    ) -> None:
        self._settings = settings
        self._producer = producer
        self._artifacts = artifacts
        self._encode_texts = encode_texts
        self._topics = Topics.from_settings(settings.kafka)
        self._dead_letters = DeadLetterSink(producer, self._topics, "inference")
        # user -> (last event timestamp, the message of their newest sequence)
        self.sequences: dict[str, tuple[float, bytes]] = {}
        self.catalog: dict[str, ItemEvent] = {}
        self.model: ServingModel | None = None
        # users to encode -> their sequence, when this batch parsed it already
        self._pending_users: dict[str, UserSequence | None] = {}
        self._pending_items: dict[str, None] = {}

    @property
    def partitioned_topics(self) -> list[str]:
        """Shared among replicas by the consumer group."""
        return [self._topics.items, self._topics.user_sequences]

    @property
    def announcement_topic(self) -> str:
        """Read whole by every replica."""
        return self._topics.model_updates

    def handle(self, messages: Sequence[Message]) -> None:
        """Apply one polled batch, then encode and publish what it changed."""
        newest_update: ModelUpdate | None = None
        for message in messages:
            topic = message.topic()
            try:
                if topic == self._topics.user_sequences:
                    raw = message.value() or b""
                    self._on_sequence(parse_event(UserSequence, raw), raw)
                elif topic == self._topics.items:
                    self._on_item(parse_event(ItemEvent, message.value()))
                elif topic == self._topics.model_updates:
                    newest_update = parse_event(ModelUpdate, message.value())
            except InvalidEvent as exc:
                self._dead_letters.send_message(message, str(exc))
        if newest_update is not None:
            self._load_model(newest_update)
        self._publish_items()
        self._publish_users()
        self._producer.poll(0)

    def _on_sequence(self, sequence: UserSequence, raw: bytes) -> None:
        known = self.sequences.get(sequence.user_id)
        if known is not None and known[0] > sequence.last_event_timestamp:
            return  # a redelivered older state must not replace a newer one
        self.sequences[sequence.user_id] = (sequence.last_event_timestamp, raw)
        self._pending_users[sequence.user_id] = sequence

    def _on_item(self, item: ItemEvent) -> None:
        known = self.catalog.get(item.item_id)
        if known is not None and known.timestamp > item.timestamp:
            return
        self.catalog[item.item_id] = item
        if self.model is not None and (
            item.op == "delete"
            or not self.model.knows(item.item_id)
            or item.item_id in self.model.deleted_items
        ):
            self._pending_items[item.item_id] = None

    def _load_model(self, update: ModelUpdate) -> None:
        if self.model is not None and self.model.version == update.version:
            return
        try:
            model = ServingModel.load(
                self._artifacts,
                update.version,
                prefer_cuda=self._settings.prefer_cuda,
                intra_op_threads=self._settings.intra_op_threads,
            )
        except Exception:
            log.exception("cannot load announced model", extra={"version": update.version})
            return
        if self.model is not None:
            MODEL_VERSION.remove(self.model.version)
        MODEL_VERSION.labels(model.version).set(1)
        self.model = model
        # The new version knows the items it was trained on; the rest come from text.
        self._pending_items = {
            item_id: None
            for item_id, item in self.catalog.items()
            if item.op == "delete" or not model.knows(item_id)
        }
        self._pending_users = dict.fromkeys(self.sequences)

    def _publish_items(self) -> None:
        model = self.model
        if model is None or not self._pending_items:
            return
        pending, self._pending_items = list(self._pending_items), {}
        now = time.time()
        to_encode: list[ItemEvent] = []
        for item_id in pending:
            item = self.catalog[item_id]
            if item.op == "delete":
                model.deleted_items.add(item_id)
                model.extra_items.pop(item_id, None)
                event = ItemVector(
                    event_id=f"{item_id}:{model.version}:{item.event_id}",
                    item_id=item_id,
                    model_version=model.version,
                    timestamp=now,
                    deleted=True,
                )
                produce(self._producer, self._topics.item_vectors, item_id, event.to_bytes())
                VECTORS.labels("item_deleted").inc()
            else:
                model.deleted_items.discard(item_id)
                to_encode.append(item)
        for start in range(0, len(to_encode), 64):
            chunk = to_encode[start : start + 64]
            # The served version's text tower maps the text embedding into its space.
            vectors = model.item_encoder.encode(self._encode_texts([item.text() for item in chunk]))
            for item, vector in zip(chunk, vectors, strict=True):
                model.extra_items[item.item_id] = vector
                event = ItemVector(
                    event_id=f"{item.item_id}:{model.version}:{item.event_id}",
                    item_id=item.item_id,
                    model_version=model.version,
                    timestamp=now,
                    vector=encode_vector(vector),
                    payload=item.payload(),
                )
                produce(self._producer, self._topics.item_vectors, item.item_id, event.to_bytes())
            VECTORS.labels("item").inc(len(chunk))

    def _publish_users(self) -> None:
        model = self.model
        if model is None or not self._pending_users:
            return
        pending, self._pending_users = self._pending_users, {}
        users = list(pending)
        batch_size = self._settings.max_batch_size
        for start in range(0, len(users), batch_size):
            sequences = [
                pending[user] or self._stored_sequence(user)
                for user in users[start : start + batch_size]
            ]
            started = time.perf_counter()
            encoded, vectors = model.encode_users(sequences)
            ENCODE_SECONDS.observe(time.perf_counter() - started)
            BATCH_SIZE.observe(len(encoded))
            for sequence, vector in zip(encoded, vectors, strict=True):
                event = UserVector(
                    event_id=f"{sequence.user_id}:{model.version}:{sequence.last_event_id}",
                    user_id=sequence.user_id,
                    vector=encode_vector(vector),
                    model_version=model.version,
                    recent_item_ids=[e.item_id for e in sequence.entries[-RECENT:]],
                    recent_event_types=[e.event_type for e in sequence.entries[-RECENT:]],
                    seen_item_ids=sequence.seen_item_ids,
                    event_timestamp=sequence.last_event_timestamp,
                )
                produce(
                    self._producer, self._topics.user_vectors, sequence.user_id, event.to_bytes()
                )
            VECTORS.labels("user").inc(len(encoded))

    def _stored_sequence(self, user: str) -> UserSequence:
        # Validated when it arrived; parsed again when a new model version re-encodes.
        return parse_event(UserSequence, self.sequences[user][1])
