"""The promotion gate: a new version is served only if it is not worse than the serving one.

Both versions are scored by the shared harness (``recsys.evaluation``) on the *same*
validation split, built from the interaction snapshot the candidate was trained on, through
their exported ONNX towers (the files inference would load). The figure compared is
masked NDCG@10 on the validation targets; the candidate is promoted unless it falls below
the serving version's by more than ``tolerance`` (absolute). The test targets play no part
in the decision, so the test figures in the manifest stay an unbiased report. Beside the
decision, the record keeps a paired bootstrap of the two versions on the same users (the
relative gain and its 95% interval), so an operator can tell a real change from noise.

Items the serving version was not trained on are handled as serving handles them: given
the catalogue's text vectors (and the same text encoder), they get vectors from the
version's own text tower; without them they cannot be ranked (score -inf) and are left
out of histories.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from recsys.artifacts import GateRecord, LoadedVersion
from recsys.evaluation import PairedGain, evaluate_ranks, ndcg_at, paired_gain
from recsys.events import InteractionEvent, ItemEvent
from recsys.model.onnx_runtime import OnnxItemEncoder, OnnxUserEncoder
from services.trainer.pipeline import EVAL_BATCH_USERS, EvalData, OnnxScorer, prepare_interactions

log = logging.getLogger(__name__)

METRIC = "valid_masked_ndcg@10"


@dataclass(frozen=True)
class GateDecision:
    promote: bool
    reason: str
    record: GateRecord


@dataclass(frozen=True)
class Score:
    ndcg: float
    users: int
    unknown_items: int  # catalogue items the version was not trained on
    per_user: np.ndarray = field(compare=False, repr=False)  # NDCG@10 of each user, in order


def decide(
    candidate: float,
    serving: float | None,
    serving_version: str | None,
    tolerance: float,
    users: int,
    paired: PairedGain | None = None,
) -> GateDecision:
    """Promote unless the candidate is below the serving figure by more than ``tolerance``.
    ``paired`` (the two versions on the same users) is recorded and reported, not decided on."""
    record = GateRecord(
        metric=METRIC,
        candidate=candidate,
        serving=serving,
        serving_version=serving_version,
        tolerance=tolerance,
        users=users,
        decided_at=time.time(),
        paired_gain=paired.gain if paired else None,
        paired_ci95=[paired.ci_low, paired.ci_high] if paired else None,
    )
    if serving is None:
        return GateDecision(True, "no serving version to compare with", record)
    figures = f"{METRIC} {candidate:.4f} vs {serving:.4f} of {serving_version}"
    if paired is not None:
        figures += (
            f" ({paired.gain:+.1%}, paired 95% interval {paired.ci_low:+.1%} to "
            f"{paired.ci_high:+.1%})"
        )
    if candidate < serving - tolerance:
        return GateDecision(False, f"{figures}: below by more than {tolerance:g}", record)
    return GateDecision(True, f"{figures}: within tolerance {tolerance:g}", record)


def score_version(
    version: LoadedVersion,
    data: EvalData,
    text_vectors: np.ndarray | None = None,
    text_encoder_name: str | None = None,
) -> Score:
    """Validation masked NDCG@10 of ``version`` on ``data`` (catalogue: ``data.split``)."""
    catalogue = data.split.item_ids
    rows = {item_id: row for row, item_id in enumerate(version.item_ids)}
    own = np.array([rows.get(item_id, -1) for item_id in catalogue], dtype=np.int64)
    unknown = own < 0
    vectors = np.zeros((len(catalogue), version.manifest.vector_size), dtype=np.float32)
    vectors[~unknown] = version.item_vectors[own[~unknown]]
    same_text = text_vectors is not None and text_encoder_name == version.manifest.encoder_name
    if unknown.any() and same_text and text_vectors is not None:
        # what inference does for an item the version has not seen: its text tower
        encoder = OnnxItemEncoder(version.item_encoder_path, prefer_cuda=False)
        vectors[unknown] = encoder.encode(text_vectors[unknown])
        unknown = np.zeros_like(unknown)
    user_encoder = OnnxUserEncoder(version.onnx_path, prefer_cuda=True)
    scorer = OnnxScorer(data, vectors, user_encoder, unranked=unknown)
    results = evaluate_ranks(
        scorer.score_fn("valid"), data.split, "valid", ks=(10,), batch_size=EVAL_BATCH_USERS
    )
    masked = results.metrics["masked"]
    return Score(
        masked["ndcg@10"],
        int(masked["users"]),
        int((own < 0).sum()),
        per_user=ndcg_at(results.ranks["masked"], 10),
    )


def _paired(candidate: Score, serving: Score | None) -> PairedGain | None:
    """The candidate against the serving version on the same users; None when the serving
    version scores 0 (a relative gain is undefined) or there is nothing to compare."""
    if serving is None or not len(serving.per_user) or serving.per_user.mean() <= 0:
        return None
    return paired_gain(candidate.per_user, serving.per_user)


def run_gate(
    candidate: LoadedVersion,
    serving: LoadedVersion | None,
    interactions: Sequence[InteractionEvent],
    items: Mapping[str, ItemEvent],
    tolerance: float,
    text_vectors: np.ndarray | None = None,
) -> GateDecision:
    """Score both versions on one validation split of this snapshot and decide.

    ``items`` is the snapshot's catalogue (item id -> latest event; deletes are dropped)
    and ``text_vectors``, if given, its text vectors in that order.
    """
    started = time.perf_counter()
    live = {item_id: item for item_id, item in items.items() if item.op == "upsert"}
    item_ids = list(live)
    if text_vectors is not None and len(text_vectors) != len(item_ids):
        raise ValueError(f"{len(text_vectors)} text vectors for {len(item_ids)} live items")
    data = EvalData.build(prepare_interactions(interactions, live), item_ids)
    encoder_name = candidate.manifest.encoder_name
    mine = score_version(candidate, data, text_vectors, encoder_name)
    theirs = score_version(serving, data, text_vectors, encoder_name) if serving else None
    decision = decide(
        mine.ndcg,
        theirs.ndcg if theirs else None,
        serving.version if serving else None,
        tolerance,
        mine.users,
        _paired(mine, theirs),
    )
    log.info(
        "gate evaluated",
        extra={
            "candidate": candidate.version,
            "candidate_ndcg": mine.ndcg,
            "serving": serving.version if serving else None,
            "serving_ndcg": theirs.ndcg if theirs else None,
            "serving_unknown_items": theirs.unknown_items if theirs else None,
            "tolerance": tolerance,
            "paired_gain": decision.record.paired_gain,
            "paired_ci95": decision.record.paired_ci95,
            "users": mine.users,
            "promote": decision.promote,
            "seconds": round(time.perf_counter() - started, 3),
        },
    )
    return decision
