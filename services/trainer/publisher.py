"""Announces a trained version: its item vectors first, then the model update."""

from __future__ import annotations

import time

from confluent_kafka import Producer

from recsys.events import ItemVector, ModelUpdate, encode_vector
from recsys.kafka import produce
from recsys.topics import Topics
from services.trainer.pipeline import TrainedVersion


def announce(producer: Producer, topics: Topics, trained: TrainedVersion) -> ModelUpdate:
    manifest = trained.manifest
    now = time.time()
    for item_id, vector, payload in zip(
        trained.item_ids, trained.item_vectors, trained.item_payloads, strict=True
    ):
        event = ItemVector(
            event_id=f"{item_id}:{manifest.version}",
            item_id=item_id,
            model_version=manifest.version,
            timestamp=now,
            vector=encode_vector(vector),
            payload=payload,
        )
        produce(producer, topics.item_vectors, item_id, event.to_bytes())
    if producer.flush(60) > 0:
        raise RuntimeError("item vectors were not all delivered within 60 s")
    update = ModelUpdate(
        event_id=f"{manifest.model_name}:{manifest.version}",
        model_name=manifest.model_name,
        version=manifest.version,
        artifact_path=str(trained.path),
        item_count=len(trained.item_ids),
        vector_size=manifest.vector_size,
        metrics=manifest.metrics,
        created_at=manifest.created_at,
    )
    produce(producer, topics.model_updates, manifest.model_name, update.to_bytes())
    if producer.flush(30) > 0:
        raise RuntimeError("the model update was not delivered within 30 s")
    return update
