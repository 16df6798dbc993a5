"""The user tower contract, and the foundation's implementation of it.

Every user-tower version exports an ONNX graph with the same interface, so the
inference service can swap versions without code changes:

- input ``item_vectors``: float32 ``[batch, length, dim]``, the item vectors of the
  user's recent interactions, left-padded (the newest interaction is at the last position);
  ``length`` is 1 to ``max_len`` (recorded in the graph's metadata), so a batch is padded
  only as far as its longest sequence;
- input ``event_types``: int64 ``[batch, length]``, ids from
  :data:`recsys.events.EVENT_TYPE_IDS`; 0 marks padding;
- output ``user_vector``: float32 ``[batch, dim]``, L2-normalised (all zeros for a row
  with no interactions).

The foundation's tower has no learned parameters: a recency- and event-type-weighted mean
of item vectors. It is a real, explainable baseline and proves the serving path end to end.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torch import nn

from recsys.events import EVENT_TYPE_IDS, EVENT_TYPES

INPUT_ITEM_VECTORS = "item_vectors"
INPUT_EVENT_TYPES = "event_types"
OUTPUT_USER_VECTOR = "user_vector"
PADDING_EVENT_TYPE = 0
_EPS = 1e-12


def type_weight_vector(weights: Mapping[str, float]) -> list[float]:
    """Turn ``{"view": 1.0, ...}`` into a list indexed by event type id (index 0 = padding)."""
    unknown = set(weights) - set(EVENT_TYPES)
    if unknown:
        raise ValueError(f"unknown event types: {sorted(unknown)}")
    vector = [0.0] * (len(EVENT_TYPES) + 1)
    for name, weight in weights.items():
        if weight < 0 or not math.isfinite(weight):
            raise ValueError(f"weight of {name!r} must be finite and >= 0, got {weight}")
        vector[EVENT_TYPE_IDS[name]] = float(weight)
    return vector


class RecencyWeightedMean(nn.Module):
    """User vector = L2-normalised weighted mean of the recent item vectors.

    The weight of a position is ``type_weights[event_type] * 0.5 ** (age / half_life)``
    where ``age`` counts valid positions back from the newest (0 for the newest), so
    padding never ages the real interactions. Padding (type 0) always weighs 0, whatever
    ``type_weights[0]`` says, and unknown type ids are treated as padding.
    """

    def __init__(self, half_life: float, type_weights: Sequence[float]) -> None:
        super().__init__()
        if not (half_life > 0 and math.isfinite(half_life)):
            raise ValueError(f"half_life must be a positive number, got {half_life}")
        if len(type_weights) < 2:
            raise ValueError("type_weights needs the padding entry and at least one event type")
        if any(w < 0 or not math.isfinite(w) for w in type_weights):
            raise ValueError("type weights must be finite and >= 0")
        self.half_life = float(half_life)
        weights = torch.tensor([float(w) for w in type_weights], dtype=torch.float32)
        weights[PADDING_EVENT_TYPE] = 0.0
        self.type_weights: torch.Tensor
        self.register_buffer("type_weights", weights)

    def forward(self, item_vectors: torch.Tensor, event_types: torch.Tensor) -> torch.Tensor:
        n_types = self.type_weights.shape[0]
        known = (event_types > PADDING_EVENT_TYPE) & (event_types < n_types)
        safe_types = torch.where(known, event_types, torch.zeros_like(event_types))
        valid = known.to(item_vectors.dtype)
        # age of a position = number of valid positions after it (newest valid -> 0)
        age = valid.sum(dim=1, keepdim=True) - torch.cumsum(valid, dim=1)
        decay = torch.exp(age * (-math.log(2.0) / self.half_life))
        weights = self.type_weights[safe_types] * decay * valid
        total = weights.sum(dim=1, keepdim=True)
        mean = (item_vectors * weights.unsqueeze(-1)).sum(dim=1) / total.clamp(min=_EPS)
        norm = torch.linalg.vector_norm(mean, dim=1, keepdim=True)
        user_vector: torch.Tensor = mean / norm.clamp(min=_EPS)
        return user_vector
