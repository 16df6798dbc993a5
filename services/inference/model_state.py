"""The model version this process serves: the ONNX user encoder and item vectors."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from recsys.artifacts import ArtifactStore
from recsys.events import EVENT_TYPE_IDS, UserSequence
from recsys.model.onnx_runtime import OnnxItemEncoder, OnnxUserEncoder

log = logging.getLogger(__name__)


@dataclass
class ServingModel:
    version: str
    encoder: OnnxUserEncoder
    item_encoder: OnnxItemEncoder
    item_rows: dict[str, int]
    item_matrix: np.ndarray
    # Items first seen after training, encoded here from their text.
    extra_items: dict[str, np.ndarray] = field(default_factory=dict)
    deleted_items: set[str] = field(default_factory=set)

    @classmethod
    def load(
        cls, artifacts: ArtifactStore, version: str, *, prefer_cuda: bool, intra_op_threads: int
    ) -> ServingModel:
        loaded = artifacts.load(version)
        encoder = OnnxUserEncoder(
            loaded.onnx_path, prefer_cuda=prefer_cuda, intra_op_threads=intra_op_threads
        )
        item_encoder = OnnxItemEncoder(
            loaded.item_encoder_path, prefer_cuda=prefer_cuda, intra_op_threads=intra_op_threads
        )
        ids = loaded.item_ids
        log.info(
            "model loaded",
            extra={
                "version": version,
                "items": len(ids),
                "providers": encoder.providers,
                "io_binding": encoder.io_binding,
            },
        )
        return cls(
            version=version,
            encoder=encoder,
            item_encoder=item_encoder,
            item_rows={item_id: row for row, item_id in enumerate(ids)},
            item_matrix=loaded.item_vectors,
        )

    @property
    def dim(self) -> int:
        return int(self.item_matrix.shape[1])

    def knows(self, item_id: str) -> bool:
        return item_id in self.item_rows or item_id in self.extra_items

    def item_vector(self, item_id: str) -> np.ndarray | None:
        if item_id in self.deleted_items:
            return None
        row = self.item_rows.get(item_id)
        if row is not None:
            vector: np.ndarray = self.item_matrix[row]
            return vector
        return self.extra_items.get(item_id)

    def _inputs(self, entries: Sequence[tuple[str, str]]) -> tuple[np.ndarray, list[int]] | None:
        """Vectors and event-type ids of the known items among the newest ``max_len``."""
        vectors, types = [], []
        for item_id, event_type in entries[-self.encoder.max_len :]:
            vector = self.item_vector(item_id)
            if vector is not None:
                vectors.append(vector)
                types.append(EVENT_TYPE_IDS[event_type])
        return (np.stack(vectors), types) if vectors else None

    def encode_users(self, sequences: list[UserSequence]) -> tuple[list[UserSequence], np.ndarray]:
        """User vectors for the sequences that contain at least one known item."""
        inputs = []
        encodable = []
        for sequence in sequences:
            found = self._inputs([(e.item_id, e.event_type) for e in sequence.entries])
            if found is not None:
                inputs.append(found)
                encodable.append(sequence)
        if not inputs:
            return [], np.zeros((0, self.dim), dtype=np.float32)
        return encodable, self.encoder.encode_sequences(inputs)

    def encode_interactions(
        self, entries: Sequence[tuple[str, str]]
    ) -> tuple[np.ndarray | None, int]:
        """One user vector for (item id, event type) pairs, oldest first, and how many of
        the items were known; None when none was."""
        found = self._inputs(entries)
        if found is None:
            return None, 0
        return self.encoder.encode_sequences([found])[0], len(found[1])
