"""Which model the trainer fits, and its hyperparameters; recorded in every manifest.

``contrastive`` (default) is the model of DESIGN.md (``recsys.model.contrastive``);
``recency_mean`` is the foundation model: items are their text embeddings and a user is
the recency- and event-type-weighted mean of their items.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from recsys.events import DEFAULT_EVENT_WEIGHTS, EVENT_TYPES
from recsys.model.contrastive import ContrastiveConfig
from recsys.model.text_encoder import DEFAULT_ENCODER


class ModelSettings(BaseModel):
    """Everything that changes the trained artifact; recorded in its manifest."""

    model_config = ConfigDict(extra="forbid", frozen=True, protected_namespaces=())

    kind: Literal["contrastive", "recency_mean"] = Field(
        "contrastive", description="the model to fit"
    )
    contrastive: ContrastiveConfig = Field(
        default_factory=ContrastiveConfig, description="hyperparameters of kind=contrastive"
    )
    encoder_name: str = Field(DEFAULT_ENCODER, description="text encoder name or model folder")
    max_seq_len: int = Field(
        50, ge=1, le=4096, description="recent interactions per user (kind=recency_mean)"
    )
    half_life: float = Field(
        10.0, gt=0, allow_inf_nan=False, description="interactions until weight halves"
    )
    type_weights: dict[str, float] = Field(
        default_factory=DEFAULT_EVENT_WEIGHTS.copy, description="weight per event type (padding 0)"
    )
    text_batch_size: int = Field(64, ge=1, description="texts per text-encoder batch")
    max_text_length: int = Field(128, ge=8, description="text-encoder token limit")

    @field_validator("type_weights")
    @classmethod
    def _known_types(cls, weights: dict[str, float]) -> dict[str, float]:
        unknown = set(weights) - set(EVENT_TYPES)
        if unknown:
            raise ValueError(f"unknown event types {sorted(unknown)}; known: {EVENT_TYPES}")
        if any(not (w >= 0 and w < float("inf")) for w in weights.values()):
            raise ValueError("type weights must be finite and >= 0")
        return {name: float(weights.get(name, 0.0)) for name in EVENT_TYPES}
