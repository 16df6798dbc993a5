"""Train one model version from interactions and the catalogue, evaluate it, store it.

Two model kinds share this path (``ModelSettings.kind``): the contrastive model of
DESIGN.md, and the foundation model with no learned weights (items are their text
embeddings; a user is the recency- and event-type-weighted mean of their recent items).
Both export the same two ONNX graphs: the user tower (item vectors + event types -> user
vector) and the text item tower (text vector -> item vector, for items that arrive after
training). Evaluation runs through the *exported* user tower, so the metrics in the
manifest describe exactly the file that inference will serve.

A version is committed as a ``candidate``: the gate (``gate.py``) decides whether it is
served. The contrastive model's weights are saved too (``model.safetensors``) and, given
``warm_from``, the next version starts from them (``warm_start.py``).
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from recsys.artifacts import ArtifactStore, LoadedVersion, Manifest, Status
from recsys.evaluation import ScoreFn, Split, Stage, evaluate, flatten_metrics, leave_one_out
from recsys.events import EVENT_TYPE_IDS, InteractionEvent, ItemEvent
from recsys.model.contrastive import ContrastiveRecommender
from recsys.model.onnx_runtime import (
    OnnxUserEncoder,
    TextItemEncoder,
    export_item_encoder,
    export_user_encoder,
)
from recsys.model.text_encoder import EmbeddingCache, TextEncoder
from recsys.model.training import InteractionData, train
from recsys.model.user_encoder import RecencyWeightedMean, type_weight_vector
from services.trainer.model_settings import ModelSettings
from services.trainer.warm_start import WarmStart, apply_warm_start, model_weights

log = logging.getLogger(__name__)

_TITLE_YEAR = re.compile(r"\((\d{4})\)\s*$")
EVAL_BATCH_USERS = 256


@dataclass(frozen=True)
class TrainedVersion:
    """The committed version, with the item data already in memory for publishing."""

    manifest: Manifest
    path: Path
    item_ids: list[str]
    item_vectors: np.ndarray
    item_payloads: list[dict[str, Any]]
    text_vectors: np.ndarray | None = None  # catalogue order; lets the gate skip re-encoding
    warm_start: WarmStart | None = None

    @property
    def version(self) -> str:
        return self.manifest.version


def item_payload(item: ItemEvent) -> dict[str, Any]:
    """The item's payload plus ``year`` when the title ends in "(1995)" and none is given."""
    payload = item.payload()
    match = _TITLE_YEAR.search(item.title)
    if match and "year" not in payload:
        payload["year"] = int(match.group(1))
    return payload


def prepare_interactions(
    interactions: Sequence[InteractionEvent], items: Mapping[str, ItemEvent]
) -> list[InteractionEvent]:
    """Dedupe by event_id (first wins), stable-sort by time, drop unknown or deleted items."""
    seen: set[str] = set()
    unique = []
    for event in interactions:
        if event.event_id not in seen:
            seen.add(event.event_id)
            unique.append(event)
    unique.sort(key=lambda e: e.timestamp)  # list.sort is stable
    kept = [e for e in unique if e.item_id in items]
    log.info(
        "interactions prepared",
        extra={
            "received": len(interactions),
            "duplicates": len(interactions) - len(unique),
            "unknown_items": len(unique) - len(kept),
            "kept": len(kept),
        },
    )
    return kept


@dataclass(frozen=True)
class EvalData:
    """The leave-one-out split of prepared interactions, and what a scorer needs of them.

    ``item_codes[p]`` and ``event_types[p]`` are the item index and event type id of the
    prepared interaction at position ``p``.
    """

    split: Split
    item_codes: np.ndarray
    event_types: np.ndarray

    @classmethod
    def build(cls, events: Sequence[InteractionEvent], item_ids: Sequence[str]) -> EvalData:
        split = leave_one_out([(e.user_id, e.item_id, e.timestamp) for e in events], item_ids)
        event_types = np.array([EVENT_TYPE_IDS[e.event_type] for e in events], dtype=np.int64)
        codes = np.empty(len(events), dtype=np.int64)
        if len(events):
            codes[np.concatenate(split.positions)] = np.concatenate(split.sequences)
        return cls(split, codes, event_types)


class OnnxScorer:
    """Scores users against the catalogue with an exported user tower (evaluation only).

    A user's history before a stage's target comes from the split, so the model never
    sees the target or anything after it. ``unranked`` marks catalogue items the model
    has no vector for (their rows of ``item_vectors`` are ignored): they score -inf and
    are left out of histories.
    """

    def __init__(
        self,
        data: EvalData,
        item_vectors: np.ndarray,
        encoder: OnnxUserEncoder,
        unranked: np.ndarray | None = None,
    ) -> None:
        self.data = data
        self.item_vectors = item_vectors
        self.encoder = encoder
        self.unranked = unranked if unranked is not None and unranked.any() else None

    def score_fn(self, stage: Stage) -> ScoreFn:
        codes, types = self.data.item_codes, self.data.event_types

        def score(users: np.ndarray) -> np.ndarray:
            sequences = []
            for user in users:
                history = self.data.split.history_positions(int(user), stage)
                if self.unranked is not None:
                    history = history[~self.unranked[codes[history]]]
                history = history[-self.encoder.max_len :]
                sequences.append((self.item_vectors[codes[history]], types[history]))
            scores: np.ndarray = self.encoder.encode_sequences(sequences) @ self.item_vectors.T
            if self.unranked is not None:
                scores[:, self.unranked] = -np.inf
            return scores

        return score


@dataclass(frozen=True)
class _Fitted:
    item_vectors: np.ndarray  # [n_items, dim], unit rows, catalogue order
    user_tower: Any  # nn.Module: (item_vectors, event_types) -> user_vector
    text_tower: Any  # nn.Module: text_vectors -> item_vectors
    max_len: int
    dim: int
    training: dict[str, Any]  # how training went, for the manifest
    weights: dict[str, np.ndarray] | None = None  # for the next version's warm start
    warm_start: WarmStart | None = None


def _warm_init(
    source: LoadedVersion | None, item_ids: Sequence[str]
) -> tuple[Callable[[ContrastiveRecommender], None] | None, list[WarmStart]]:
    """An init hook copying ``source``'s weights, and a list that receives its report."""
    weights = source.weights() if source is not None else None
    if source is None or weights is None:
        if source is not None:
            log.info("warm start skipped: no saved weights", extra={"source": source.version})
        return None, []
    reports: list[WarmStart] = []

    def init(model: ContrastiveRecommender) -> None:
        reports.append(apply_warm_start(model, weights, source.item_ids, item_ids, source.version))

    return init, reports


def _fit(
    settings: ModelSettings,
    events: Sequence[InteractionEvent],
    item_ids: Sequence[str],
    text_vectors: np.ndarray,
    warm_from: LoadedVersion | None = None,
) -> _Fitted:
    if settings.kind == "recency_mean":
        normalised = text_vectors / np.maximum(
            np.linalg.norm(text_vectors, axis=1, keepdims=True), 1e-12
        )
        return _Fitted(
            item_vectors=normalised.astype(np.float32),
            user_tower=RecencyWeightedMean(
                settings.half_life, type_weight_vector(settings.type_weights)
            ),
            text_tower=TextItemEncoder(),
            max_len=settings.max_seq_len,
            dim=text_vectors.shape[1],
            training={},
        )
    config = settings.contrastive
    if not config.use_text:
        raise ValueError("a served model needs use_text: new items are encoded from text")
    init, warm = _warm_init(warm_from, item_ids)
    result = train(
        config,
        InteractionData.from_events(events, item_ids),
        text_vectors,
        progress=False,
        init=init,
    )
    result.model.cpu().eval()  # exported from the CPU, whatever it trained on
    return _Fitted(
        item_vectors=result.item_vectors,
        user_tower=result.user_tower,
        text_tower=TextItemEncoder(result.model.items.projection),
        max_len=config.max_len,
        dim=config.dim,
        training={
            "best_epoch": result.best_epoch,
            "best_valid_masked_ndcg@10": result.best_valid,
            "train_seconds": round(result.train_seconds, 1),
            "stopped_early": result.stopped_early,
            "valid_masked_ndcg@10_per_epoch": result.curve(),
            "warm_start": warm[0].as_dict() if warm else None,
        },
        weights=model_weights(result.model),
        warm_start=warm[0] if warm else None,
    )


def train_version(
    interactions: Sequence[InteractionEvent],
    items: Mapping[str, ItemEvent],
    artifacts: ArtifactStore,
    settings: ModelSettings,
    cache: EmbeddingCache | None = None,
    *,
    encoder: TextEncoder | None = None,
    warm_from: LoadedVersion | None = None,
    status: Status = "candidate",
) -> TrainedVersion:
    """Build, evaluate and commit a new version; returns it (the store picks the number).

    ``items`` maps item id -> latest catalogue event; deleted items are left out, and the
    catalogue order of the mapping is the row order of the stored item vectors. Pass
    ``encoder`` to reuse an already loaded text encoder, and ``warm_from`` (a verified
    version, normally the serving one) to start the contrastive model from its weights.
    """
    started = time.perf_counter()
    catalogue = [item for item_id, item in items.items() if item.op == "upsert"]
    for item_id, item in items.items():
        if item.item_id != item_id:
            raise ValueError(f"items[{item_id!r}] holds item {item.item_id!r}")
    if not catalogue:
        raise ValueError("the catalogue has no live items")
    live = {item.item_id: item for item in catalogue}
    events = prepare_interactions(interactions, live)
    item_ids = [item.item_id for item in catalogue]

    # Item tower: text -> vector, through the cache when there is one.
    step = time.perf_counter()
    if encoder is None:
        encoder = TextEncoder(
            settings.encoder_name,
            batch_size=settings.text_batch_size,
            max_length=settings.max_text_length,
        )
    texts = [item.text() for item in catalogue]
    text_vectors = cache.encode(encoder, texts) if cache is not None else encoder.encode(texts)
    log.info(
        "items encoded",
        extra={"items": len(texts), "seconds": round(time.perf_counter() - step, 3)},
    )

    data = EvalData.build(events, item_ids)
    split = data.split

    fitted = _fit(settings, events, item_ids, text_vectors, warm_from)
    item_vectors = fitted.item_vectors

    with artifacts.create_version() as draft:
        # Both towers exported; evaluation then runs through the exported user tower.
        export_user_encoder(fitted.user_tower, draft.user_encoder_path, fitted.max_len, fitted.dim)
        export_item_encoder(fitted.text_tower, draft.item_encoder_path, text_vectors.shape[1])
        if fitted.weights is not None:
            draft.write_weights(fitted.weights, {"model": settings.kind})
        user_encoder = OnnxUserEncoder(draft.user_encoder_path, prefer_cuda=True)
        scorer = OnnxScorer(data, item_vectors, user_encoder)
        metrics: dict[str, float] = {}
        step = time.perf_counter()
        stages: tuple[Stage, ...] = ("valid", "test")
        for stage in stages:
            results = evaluate(scorer.score_fn(stage), split, stage, batch_size=EVAL_BATCH_USERS)
            metrics.update(flatten_metrics(stage, results))
        log.info(
            "model evaluated",
            extra={
                "seconds": round(time.perf_counter() - step, 3),
                "test_masked_ndcg@10": metrics.get("test_masked_ndcg@10"),
                "test_masked_recall@10": metrics.get("test_masked_recall@10"),
            },
        )

        train_positions = split.train_positions()
        counts = np.bincount(data.item_codes[train_positions], minlength=len(item_ids))
        popular = [i for i in np.lexsort((np.arange(len(item_ids)), -counts)) if counts[i] > 0]
        draft.write_popularity([item_ids[i] for i in popular], [int(counts[i]) for i in popular])

        payloads = [item_payload(item) for item in catalogue]
        draft.write_items(item_ids, item_vectors, payloads)
        timestamps = [e.timestamp for e in events]
        manifest = draft.commit(
            {
                "status": status,
                "encoder_name": encoder.name,
                "vector_size": fitted.dim,
                "max_seq_len": fitted.max_len,
                "item_count": len(item_ids),
                "metrics": metrics,
                "hyperparameters": {
                    "model": settings.kind,
                    **settings.model_dump(mode="json"),
                    **fitted.training,
                },
                "data_range": {
                    "first_timestamp": min(timestamps) if timestamps else None,
                    "last_timestamp": max(timestamps) if timestamps else None,
                    "interactions": len(events),
                    "users": split.n_users,
                    "items": len(np.unique(data.item_codes)),
                },
            }
        )
    log.info(
        "version trained",
        extra={
            "model": manifest.model_name,
            "version": manifest.version,
            "items": manifest.item_count,
            "status": manifest.status,
            "warm_start": fitted.warm_start.as_dict() if fitted.warm_start else None,
            "seconds": round(time.perf_counter() - started, 3),
        },
    )
    return TrainedVersion(
        manifest=manifest,
        path=artifacts.path(manifest.version),
        item_ids=item_ids,
        item_vectors=item_vectors,
        item_payloads=payloads,
        text_vectors=text_vectors,
        warm_start=fitted.warm_start,
    )
