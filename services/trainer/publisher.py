"""Announces a version: its item vectors first, then the model update.

Every ``ModelUpdate`` on ``model-updates`` means "serve this version now" and the last one
in the topic wins, so announcing an older version is how a rollback happens. The item
vectors go first so that the indexer can fill the version's collection before (or while)
it learns that the version is wanted; it flips the alias only once the collection holds
every item the announcement counts.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from confluent_kafka import KafkaError, Message, Producer

from recsys.artifacts import Manifest
from recsys.events import ItemVector, ModelUpdate, encode_vector
from recsys.kafka import produce
from recsys.topics import Topics


class Announceable(Protocol):
    """A freshly trained version (``TrainedVersion``) or one read back (``LoadedVersion``)."""

    @property
    def manifest(self) -> Manifest: ...

    @property
    def path(self) -> Path: ...

    @property
    def item_ids(self) -> list[str]: ...

    @property
    def item_vectors(self) -> np.ndarray: ...

    @property
    def item_payloads(self) -> list[dict[str, Any]]: ...


def announce(
    producer: Producer, topics: Topics, version: Announceable, reason: str = "trained"
) -> ModelUpdate:
    """Publish every item vector of ``version``, then its ModelUpdate; wait for both.

    Raises RuntimeError if anything was not delivered: the caller must not record the
    version as promoted then.
    """
    manifest = version.manifest
    now = time.time()
    failures: list[str] = []

    def delivered(error: KafkaError | None, _message: Message) -> None:
        if error is not None:
            failures.append(str(error))

    for item_id, vector, payload in zip(
        version.item_ids, version.item_vectors, version.item_payloads, strict=True
    ):
        event = ItemVector(
            event_id=f"{item_id}:{manifest.version}",  # same content each time: idempotent
            item_id=item_id,
            model_version=manifest.version,
            timestamp=now,
            vector=encode_vector(vector),
            payload=payload,
        )
        produce(producer, topics.item_vectors, item_id, event.to_bytes(), delivered)
    if producer.flush(60) > 0 or failures:
        raise RuntimeError(f"item vectors were not all delivered within 60 s: {failures[:3]}")
    update = ModelUpdate(
        # one id per announcement: announcing a version again is a new event
        event_id=f"{manifest.model_name}:{manifest.version}:{uuid.uuid4().hex[:12]}",
        model_name=manifest.model_name,
        version=manifest.version,
        artifact_path=str(version.path),
        item_count=len(version.item_ids),
        vector_size=manifest.vector_size,
        metrics=manifest.metrics,
        created_at=manifest.created_at,
        announced_at=time.time(),
        reason=reason,
    )
    produce(producer, topics.model_updates, manifest.model_name, update.to_bytes(), delivered)
    if producer.flush(30) > 0 or failures:
        raise RuntimeError(f"the model update was not delivered within 30 s: {failures[:3]}")
    return update
