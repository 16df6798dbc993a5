"""The one offline evaluation harness: leave-one-out by time, full ranking, no sampling.

Every model and baseline is scored by this module on the same split, so figures are
comparable. Protocol:

- Each user's interactions are sorted by timestamp with a *stable* sort (equal timestamps
  keep their source order). The last one is the test target, the second to last the
  validation target, the rest is training data. Users with fewer than 3 interactions
  contribute everything to training and are not evaluated.
- The model scores *every* item in the catalogue (no sampled negatives).
- The rank of the target is pessimistic: the number of other items whose score is
  ``>=`` the target's (so ties never favour the target, and a constant scorer ranks the
  target last). NaN scores count as ``-inf``.
- "masked" excludes the user's earlier items (everything before the target, except the
  target itself when it is a repeat) from the ranking and from the top-k lists;
  "unmasked" ranks the whole catalogue.

Metrics per k: ``recall@k`` (hit rate; one target per user), ``ndcg@k`` (1/log2(rank+2)),
``mrr@k`` (1/(rank+1) when rank < k, else 0), ``coverage@k`` (distinct items over all
evaluated users' top-k lists / catalogue size), plus ``users`` (how many were evaluated).
``evaluate_ranks`` keeps each user's rank too, for bootstrap intervals (``bootstrap_ci``)
and paired comparisons of two models on the same users (``paired_gain``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

log = logging.getLogger(__name__)

Stage = Literal["valid", "test"]
ScoreFn = Callable[[np.ndarray], np.ndarray]
"""Given user indices int64 [B], return scores float [B, n_items] (columns: Split.item_ids)."""

MIN_INTERACTIONS = 3


@dataclass(frozen=True)
class Split:
    """A leave-one-out split. Users and items are referred to by index.

    ``sequences[u]`` holds user u's item indices in time order and ``positions[u]`` the
    indices of the same interactions in the input sequence, so callers can recover any
    other field (event type, value) of the interactions a model sees.
    """

    user_ids: list[str]
    item_ids: list[str]
    sequences: list[np.ndarray]
    positions: list[np.ndarray]

    @property
    def n_users(self) -> int:
        return len(self.user_ids)

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    def _cut(self, user: int, stage: Stage) -> int | None:
        """Index in the user's sequence of the stage's target; None if not evaluated."""
        n = len(self.sequences[user])
        if n < MIN_INTERACTIONS:
            return None
        return n - 1 if stage == "test" else n - 2

    def users(self, stage: Stage) -> np.ndarray:
        """Indices of the users evaluated at this stage."""
        return np.array(
            [u for u in range(self.n_users) if len(self.sequences[u]) >= MIN_INTERACTIONS],
            dtype=np.int64,
        )

    def target(self, user: int, stage: Stage) -> int:
        cut = self._cut(user, stage)
        if cut is None:
            raise ValueError(f"user {self.user_ids[user]} has no {stage} target")
        return int(self.sequences[user][cut])

    def history(self, user: int, stage: Stage) -> np.ndarray:
        """Item indices the user had interacted with before the stage's target."""
        cut = self._cut(user, stage)
        return self.sequences[user] if cut is None else self.sequences[user][:cut]

    def history_positions(self, user: int, stage: Stage) -> np.ndarray:
        """Input indices of the interactions before the stage's target (time order)."""
        cut = self._cut(user, stage)
        return self.positions[user] if cut is None else self.positions[user][:cut]

    def train_positions(self) -> np.ndarray:
        """Input indices of every training interaction (neither a valid nor a test target)."""
        parts = [self.history_positions(u, "valid") for u in range(self.n_users)]
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


def leave_one_out(
    interactions: Sequence[tuple[str, str, float]],
    item_ids: Sequence[str] | None = None,
) -> Split:
    """Split ``(user_id, item_id, timestamp)`` interactions by time, per user.

    ``item_ids`` is the catalogue (every item the models rank, in column order); if
    omitted, the items seen in ``interactions`` in order of first appearance. Users are
    numbered in order of first appearance.
    """
    if item_ids is None:
        catalogue = list(dict.fromkeys(item for _, item, _ in interactions))
    else:
        catalogue = list(item_ids)
    item_index = {item: i for i, item in enumerate(catalogue)}
    if len(item_index) != len(catalogue):
        raise ValueError("item_ids are not unique")
    user_index: dict[str, int] = {}
    n = len(interactions)
    user_codes = np.empty(n, dtype=np.int64)
    item_codes = np.empty(n, dtype=np.int64)
    timestamps = np.empty(n, dtype=np.float64)
    for row, (user, item, timestamp) in enumerate(interactions):
        user_codes[row] = user_index.setdefault(user, len(user_index))
        code = item_index.get(item)
        if code is None:
            raise ValueError(f"interaction {row} names item {item!r}, not in the catalogue")
        item_codes[row] = code
        timestamps[row] = timestamp
    # np.lexsort is stable: rows with equal (user, timestamp) keep their input order
    order = np.lexsort((timestamps, user_codes))
    bounds = np.searchsorted(user_codes[order], np.arange(len(user_index) + 1))
    positions = [order[bounds[u] : bounds[u + 1]] for u in range(len(user_index))]
    return Split(
        user_ids=list(user_index),
        item_ids=catalogue,
        sequences=[item_codes[p] for p in positions],
        positions=positions,
    )


def _default_batch_size(n_items: int) -> int:
    """About 16M scores (64 MB of float32) per batch, between 1 and 1024 users."""
    return max(1, min(1024, (1 << 24) // max(n_items, 1)))


@dataclass(frozen=True)
class Evaluation:
    """Metrics per mode, and each evaluated user's target rank per mode (0 = first), in
    the order of ``Split.users(stage)``: what per-user metrics and intervals are made of."""

    metrics: dict[str, dict[str, float]]
    ranks: dict[str, np.ndarray]


def evaluate(
    score_fn: ScoreFn,
    split: Split,
    stage: Stage = "valid",
    ks: Sequence[int] = (10, 20),
    batch_size: int | None = None,
) -> dict[str, dict[str, float]]:
    """Score every evaluated user against the full catalogue; {"masked"|"unmasked": metrics}."""
    return evaluate_ranks(score_fn, split, stage, ks, batch_size).metrics


def evaluate_ranks(
    score_fn: ScoreFn,
    split: Split,
    stage: Stage = "valid",
    ks: Sequence[int] = (10, 20),
    batch_size: int | None = None,
) -> Evaluation:
    """:func:`evaluate`, keeping each user's target rank as well."""
    if stage not in ("valid", "test"):
        raise ValueError(f"stage must be 'valid' or 'test', got {stage!r}")
    ks = sorted({int(k) for k in ks})
    if not ks or ks[0] < 1:
        raise ValueError("ks must hold positive integers")
    n_items = split.n_items
    users = split.users(stage)
    batch_size = batch_size or _default_batch_size(n_items)
    modes = ("masked", "unmasked")
    ranks: dict[str, list[np.ndarray]] = {m: [] for m in modes}
    covered = {m: {k: np.zeros(n_items, dtype=bool) for k in ks} for m in modes}
    top = min(max(ks), n_items)
    for start in range(0, len(users), batch_size):
        batch = users[start : start + batch_size]
        scores = np.asarray(score_fn(batch), dtype=np.float64)
        if scores.shape != (len(batch), n_items):
            raise ValueError(f"score_fn returned {scores.shape}, expected {(len(batch), n_items)}")
        scores = np.where(np.isnan(scores), -np.inf, scores)
        rows = np.arange(len(batch))
        targets = np.array([split.target(int(u), stage) for u in batch], dtype=np.int64)
        histories = [split.history(int(u), stage) for u in batch]
        hist_rows = np.repeat(rows, [len(h) for h in histories])
        hist_cols = np.concatenate(histories) if histories else np.zeros(0, dtype=np.int64)
        seen = np.zeros((len(batch), n_items), dtype=bool)
        seen[hist_rows, hist_cols] = True
        seen[rows, targets] = False  # a repeat of an earlier item stays rankable
        target_scores = scores[rows, targets][:, None]
        for mode in modes:
            ahead = scores >= target_scores
            if mode == "masked":
                ahead &= ~seen
            ahead[rows, targets] = False
            ranks[mode].append(ahead.sum(axis=1))
            ranked = np.where(seen, -np.inf, scores) if mode == "masked" else scores
            if top:
                top_items = np.argpartition(-ranked, top - 1, axis=1)[:, :top]
                order = np.argsort(-np.take_along_axis(ranked, top_items, axis=1), axis=1)
                top_items = np.take_along_axis(top_items, order, axis=1)
                for k in ks:
                    chosen = top_items[:, :k]
                    if mode == "masked":  # rows with fewer than k rankable items
                        chosen = chosen[np.isfinite(np.take_along_axis(ranked, chosen, axis=1))]
                    covered[mode][k][chosen.ravel()] = True
    result: dict[str, dict[str, float]] = {}
    all_ranks: dict[str, np.ndarray] = {}
    for mode in modes:
        rank = np.concatenate(ranks[mode]) if ranks[mode] else np.zeros(0, dtype=np.int64)
        metrics: dict[str, float] = {"users": float(len(rank))}
        for k in ks:
            metrics[f"recall@{k}"] = _mean(recall_at(rank, k))
            metrics[f"ndcg@{k}"] = _mean(ndcg_at(rank, k))
            metrics[f"mrr@{k}"] = _mean(np.where(rank < k, 1.0 / (rank + 1.0), 0.0))
            metrics[f"coverage@{k}"] = float(covered[mode][k].sum() / max(n_items, 1))
        result[mode] = metrics
        all_ranks[mode] = rank
    log.info("evaluated", extra={"stage": stage, "users": len(users), "items": n_items})
    return Evaluation(metrics=result, ranks=all_ranks)


def recall_at(ranks: np.ndarray, k: int) -> np.ndarray:
    """Per-user Recall@k (one target each: a hit or not), float64."""
    return (np.asarray(ranks) < k).astype(np.float64)


def ndcg_at(ranks: np.ndarray, k: int) -> np.ndarray:
    """Per-user NDCG@k of one target at ``ranks`` (0 = first), float64."""
    rank = np.asarray(ranks, dtype=np.float64)
    return np.where(rank < k, 1.0 / np.log2(rank + 2.0), 0.0)


def bootstrap_ci(
    values: np.ndarray, resamples: int = 2000, level: float = 0.95, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of per-user ``values`` (users resampled
    with replacement): how far a metric could move on another draw of users."""
    values = np.asarray(values, dtype=np.float64)
    if len(values) == 0:
        return (0.0, 0.0)
    (means,) = _resampled_means([values], resamples, seed)
    return _percentile_interval(means, level)


def _percentile_interval(samples: np.ndarray, level: float) -> tuple[float, float]:
    """The central ``level`` share of bootstrap ``samples``: (low, high)."""
    tail = (1.0 - level) / 2 * 100
    low, high = np.percentile(samples, [tail, 100 - tail])
    return (float(low), float(high))


_RESAMPLE_CELLS = 1 << 22  # indices drawn at once: 32 MB, whatever the number of users


def _resampled_means(columns: list[np.ndarray], resamples: int, seed: int) -> list[np.ndarray]:
    """Mean of each equal-length column over ``resamples`` bootstrap draws of its rows (one
    draw of row indices serves every column), in chunks so memory stays bounded."""
    rng = np.random.default_rng(seed)
    n = len(columns[0])
    chunk = max(1, _RESAMPLE_CELLS // n)
    means: list[list[np.ndarray]] = [[] for _ in columns]
    for start in range(0, resamples, chunk):
        index = rng.integers(0, n, (min(chunk, resamples - start), n))
        for column, out in zip(columns, means, strict=True):
            out.append(column[index].mean(axis=1))
    return [np.concatenate(parts) for parts in means]


@dataclass(frozen=True)
class PairedGain:
    """``model`` against ``baseline`` on the same users: relative gain of the mean metric,
    its bootstrap interval, and the share of resamples in which the model leads."""

    gain: float
    ci_low: float
    ci_high: float
    share_ahead: float
    users: int

    def as_dict(self) -> dict[str, float | list[float]]:
        return {
            "gain": self.gain,
            "ci95": [self.ci_low, self.ci_high],
            "share_of_resamples_ahead": self.share_ahead,
            "users": float(self.users),
        }


def paired_gain(
    model: np.ndarray,
    baseline: np.ndarray,
    resamples: int = 2000,
    level: float = 0.95,
    seed: int = 0,
) -> PairedGain:
    """Paired bootstrap of mean(model) / mean(baseline) - 1 over the same users (one index
    draw per resample serves both, so what the users share cancels out)."""
    model = np.asarray(model, dtype=np.float64)
    baseline = np.asarray(baseline, dtype=np.float64)
    if model.shape != baseline.shape or model.ndim != 1 or len(model) == 0:
        raise ValueError("paired_gain needs two equal, non-empty 1-d arrays of per-user values")
    if baseline.mean() <= 0:
        raise ValueError("the baseline's mean is 0: a relative gain is undefined")
    model_means, base_means = _resampled_means([model, baseline], resamples, seed)
    defined = base_means > 0
    low, high = _percentile_interval(model_means[defined] / base_means[defined] - 1.0, level)
    return PairedGain(
        gain=float(model.mean() / baseline.mean() - 1.0),
        ci_low=float(low),
        ci_high=float(high),
        share_ahead=float((model_means > base_means).mean()),
        users=len(model),
    )


def _mean(values: np.ndarray) -> float:
    return float(values.mean()) if len(values) else 0.0


def flatten_metrics(stage: str, results: dict[str, dict[str, float]]) -> dict[str, float]:
    """{"masked": {"ndcg@10": x}} -> {"<stage>_masked_ndcg@10": x}, for manifests and logs."""
    return {
        f"{stage}_{mode}_{name}": value
        for mode, metrics in results.items()
        for name, value in metrics.items()
    }
