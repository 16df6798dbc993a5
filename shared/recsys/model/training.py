"""Train the contrastive recommender on a leave-one-out split, with early stopping.

:func:`train` fits :class:`~recsys.model.contrastive.ContrastiveRecommender` on the
training part of a :class:`~recsys.evaluation.Split` (every interaction before a user's
validation target), evaluates validation NDCG@10 (masked, full ranking, through
:func:`recsys.evaluation.evaluate`) after each epoch, keeps the best weights and stops
when ``patience`` epochs bring no gain. It returns the item vectors of every item (the
item tower's output: what serving indexes and feeds to the user tower) and the torch user
tower, which :func:`recsys.model.onnx_runtime.export_user_encoder` exports as is.

:class:`TowerScorer` adapts a trained model to the evaluation harness, and
:func:`popularity_scorer` is the most-popular baseline on the same split.
"""

from __future__ import annotations

import copy
import logging
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from recsys.evaluation import ScoreFn, Split, Stage, evaluate, leave_one_out
from recsys.events import EVENT_TYPE_IDS, InteractionEvent
from recsys.model.contrastive import (
    ContrastiveConfig,
    ContrastiveRecommender,
    UserTower,
    augment,
    contrastive_loss,
    left_pad,
    next_item_loss,
    reward_weights,
)

log = logging.getLogger(__name__)

VALID_METRIC = "ndcg@10"
VALID_MODE = "masked"


@dataclass(frozen=True)
class InteractionData:
    """A split plus the event type and value of every interaction (by input position)."""

    split: Split
    event_types: np.ndarray  # int64 [n_interactions], ids from EVENT_TYPE_IDS
    values: np.ndarray  # float32 [n_interactions], NaN where an event has no value

    @classmethod
    def from_events(
        cls, events: Sequence[InteractionEvent], item_ids: Sequence[str] | None = None
    ) -> InteractionData:
        split = leave_one_out([(e.user_id, e.item_id, e.timestamp) for e in events], item_ids)
        types = np.array([EVENT_TYPE_IDS[e.event_type] for e in events], dtype=np.int64)
        values = np.array(
            [np.nan if e.value is None else e.value for e in events], dtype=np.float32
        )
        return cls(split=split, event_types=types, values=values)

    def with_split(self, split: Split) -> InteractionData:
        """The same events under another split whose positions index the same events."""
        return InteractionData(split=split, event_types=self.event_types, values=self.values)

    def history(self, user: int, stage: Stage) -> tuple[np.ndarray, np.ndarray]:
        """Item indices and event types of the user's interactions before the stage target."""
        return (
            self.split.history(user, stage),
            self.event_types[self.split.history_positions(user, stage)],
        )

    def train_counts(self) -> np.ndarray:
        """Interactions per item in the training part (before validation targets)."""
        counts = np.zeros(self.split.n_items, dtype=np.int64)
        for user in range(self.split.n_users):
            np.add.at(counts, self.split.history(user, "valid"), 1)
        return counts


@dataclass
class _Window:
    inputs: np.ndarray
    input_types: np.ndarray
    targets: np.ndarray
    weights: np.ndarray


def _windows(data: InteractionData, config: ContrastiveConfig) -> list[_Window]:
    """Training examples: each user's training sequence cut, from its end, into windows of
    ``max_len`` inputs whose targets are the next items (every interaction is a target once)."""
    windows: list[_Window] = []
    stride = min(config.window_stride or config.max_len, config.max_len)
    for user in range(data.split.n_users):
        positions = data.split.history_positions(user, "valid")
        items = data.split.history(user, "valid")
        if len(items) < 2:
            continue
        types = data.event_types[positions]
        if config.use_reward_weights:
            weights = reward_weights(config, types, data.values[positions])
        else:
            weights = np.ones(len(items), dtype=np.float32)
        end = len(items)
        while end > 1:
            start = max(0, end - 1 - config.max_len)
            # the window trains its last `stride` targets (all of them at the user's start);
            # earlier targets belong to the previous window, which gives them more context
            first_new = 0 if start == 0 else end - 1 - stride  # stride <= max_len
            target_weights = weights[start + 1 : end].copy()
            target_weights[: first_new - start] = 0.0
            windows.append(
                _Window(
                    inputs=items[start : end - 1],
                    input_types=types[start : end - 1],
                    targets=items[start + 1 : end],
                    weights=target_weights,
                )
            )
            end = first_new + 1
    return windows


@dataclass
class EpochLog:
    epoch: int
    loss: float
    next_item_loss: float
    contrastive_loss: float
    seconds: float
    valid: dict[str, float] = field(default_factory=dict)


@dataclass
class TrainResult:
    """A trained model: item vectors for every item, the user tower, and how it got there."""

    config: ContrastiveConfig
    model: ContrastiveRecommender
    item_vectors: np.ndarray  # float32 [n_items, dim], unit rows, in split.item_ids order
    history: list[EpochLog]
    best_epoch: int
    best_valid: float
    train_seconds: float
    stopped_early: bool

    @property
    def user_tower(self) -> UserTower:
        return self.model.user

    def curve(self) -> list[float]:
        """Validation masked NDCG@10 per evaluated epoch."""
        return [e.valid.get(f"{VALID_MODE}_{VALID_METRIC}", float("nan")) for e in self.history]


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class TowerScorer:
    """Scores users with a torch user tower over item vectors (the evaluation adaptor)."""

    def __init__(
        self,
        data: InteractionData,
        user_tower: nn.Module,
        item_vectors: np.ndarray,
        max_len: int,
        device: torch.device | None = None,
        chunk: int = 128,
    ) -> None:
        self.data = data
        self.chunk = chunk
        self.user_tower = user_tower
        self.item_vectors = np.ascontiguousarray(item_vectors, dtype=np.float32)
        self.max_len = max_len
        self.device = device or next(user_tower.parameters()).device
        self._items = torch.from_numpy(self.item_vectors).to(self.device)
        table = np.concatenate([self.item_vectors, np.zeros((1, self.item_vectors.shape[1]))])
        self._table = torch.from_numpy(table.astype(np.float32)).to(self.device)

    def user_vectors(self, users: np.ndarray, stage: Stage) -> torch.Tensor:
        """User vectors [len(users), dim]; users of similar history length run together."""
        pad = len(self.item_vectors)
        sequences = [self.data.history(int(u), stage) for u in users]
        lengths = np.array([min(len(s[0]), self.max_len) for s in sequences], dtype=np.int64)
        order = np.argsort(lengths, kind="stable")
        result = torch.zeros(len(users), self.item_vectors.shape[1], device=self.device)
        was_training = self.user_tower.training
        self.user_tower.eval()
        try:
            with torch.inference_mode():
                for start in range(0, len(order), self.chunk):
                    rows = order[start : start + self.chunk]
                    length = max(1, int(lengths[rows].max()))
                    items, types = left_pad([sequences[r] for r in rows], length, pad)
                    vectors = self._table[torch.from_numpy(items).to(self.device)]
                    result[torch.from_numpy(rows).to(self.device)] = self.user_tower(
                        vectors, torch.from_numpy(types).to(self.device)
                    )
        finally:
            self.user_tower.train(was_training)
        return result

    def score_fn(self, stage: Stage) -> ScoreFn:
        def score(users: np.ndarray) -> np.ndarray:
            vectors = self.user_vectors(users, stage)
            with torch.inference_mode():
                scores: np.ndarray = (vectors @ self._items.T).float().cpu().numpy()
            return scores

        return score


def popularity_scorer(data: InteractionData) -> ScoreFn:
    """Most popular first (training interactions only); ties broken by catalogue order."""
    counts = data.train_counts().astype(np.float64)
    n = len(counts)
    scores = counts - np.arange(n) / (2.0 * max(n, 1))

    def score(users: np.ndarray) -> np.ndarray:
        return np.broadcast_to(scores, (len(users), n)).copy()

    return score


def train(
    config: ContrastiveConfig,
    data: InteractionData,
    text_vectors: np.ndarray | None = None,
    *,
    device: torch.device | None = None,
    progress: bool = True,
    desc: str = "train",
    init: Callable[[ContrastiveRecommender], None] | None = None,
) -> TrainResult:
    """Fit the model with early stopping on validation masked NDCG@10; deterministic per seed.

    ``init`` may overwrite the fresh weights before the first step (warm start).
    """
    from tqdm import tqdm

    started = time.perf_counter()
    device = device or default_device()
    seed_everything(config.seed)
    rng = np.random.default_rng(config.seed)
    split = data.split
    counts = data.train_counts()
    known = torch.from_numpy(counts > 0)
    text = torch.from_numpy(np.asarray(text_vectors, dtype=np.float32)) if config.use_text else None
    model = ContrastiveRecommender(config, split.n_items, text, known)
    if init is not None:
        init(model)
    model = model.to(device)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=config.lr, weight_decay=config.weight_decay
    )
    averaged = _WeightAverage(model, config.ema_decay) if config.ema_decay > 0 else None
    windows = _windows(data, config)
    if not windows:
        raise ValueError("no user has two training interactions")
    share = counts / max(int(counts.sum()), 1)
    log_q = torch.from_numpy(np.log(np.maximum(share, 1e-12))).float().to(device)
    generator = torch.Generator().manual_seed(config.seed)
    pad = model.pad_index
    unseen = torch.from_numpy(counts == 0).to(device)

    history: list[EpochLog] = []
    best_state = copy.deepcopy(model.state_dict())
    best_valid, best_epoch, since_best = -1.0, 0, 0
    stopped_early = False
    bar = tqdm(range(1, config.max_epochs + 1), desc=desc, disable=not progress, leave=False)
    for epoch in bar:
        epoch_start = time.perf_counter()
        model.train()
        totals = np.zeros(3)
        n_batches = 0
        for batch in _batches(windows, config.batch_size, rng):
            losses = _step(config, model, batch, device, pad, rng, log_q, generator, unseen)
            optimizer.zero_grad(set_to_none=True)
            losses[0].backward()  # type: ignore[no-untyped-call]
            optimizer.step()
            if averaged is not None:
                averaged.update()
            totals += [float(x.detach()) for x in losses]
            n_batches += 1
        mean = totals / max(n_batches, 1)
        entry = EpochLog(
            epoch=epoch,
            loss=float(mean[0]),
            next_item_loss=float(mean[1]),
            contrastive_loss=float(mean[2]),
            seconds=0.0,
        )
        if epoch % config.eval_every == 0 or epoch == config.max_epochs:
            judged = model if averaged is None else averaged.model
            item_vectors = _item_vectors(judged)
            scorer = TowerScorer(data, judged.user, item_vectors, config.max_len, device)
            results = evaluate(scorer.score_fn("valid"), split, "valid", ks=(10,))
            entry.valid = {
                f"{mode}_{name}": value
                for mode, metrics in results.items()
                for name, value in metrics.items()
                if name in ("ndcg@10", "recall@10")
            }
            current = results[VALID_MODE][VALID_METRIC]
            if current > best_valid:
                best_valid, best_epoch, since_best = current, epoch, 0
                best_state = copy.deepcopy(judged.state_dict())
            else:
                since_best += config.eval_every
        entry.seconds = time.perf_counter() - epoch_start
        history.append(entry)
        bar.set_postfix(
            loss=f"{entry.loss:.3f}",
            ndcg10=f"{entry.valid.get('masked_ndcg@10', float('nan')):.4f}",
            best=f"{best_valid:.4f}@{best_epoch}",
        )
        log.info(
            "epoch",
            extra={"epoch": epoch, "loss": entry.loss, **entry.valid, "seconds": entry.seconds},
        )
        if epoch >= config.min_epochs and since_best >= config.patience:
            stopped_early = True
            break
        if (
            config.time_budget_s is not None
            and time.perf_counter() - started > config.time_budget_s
        ):
            log.warning("training stopped by its time budget", extra={"epoch": epoch})
            break
    bar.close()
    model.load_state_dict(best_state)
    model.eval()
    return TrainResult(
        config=config,
        model=model,
        item_vectors=_item_vectors(model),
        history=history,
        best_epoch=best_epoch,
        best_valid=best_valid,
        train_seconds=time.perf_counter() - started,
        stopped_early=stopped_early,
    )


class _WeightAverage:
    """An exponential moving average of a model's floating-point weights (and buffers).

    The decay ramps up as ``min(decay, (1 + n) / (10 + n))`` after ``n`` updates, as in
    TensorFlow's ExponentialMovingAverage, so the average of a small catalogue (a few
    steps per epoch) does not trail far behind its model.
    """

    def __init__(self, model: ContrastiveRecommender, decay: float) -> None:
        self.decay = decay
        self.updates = 0
        self.model = copy.deepcopy(model)
        self.model.eval()
        for parameter in self.model.parameters():
            parameter.requires_grad_(False)
        # paired once: the optimiser updates the followed tensors in place
        pairs = list(
            zip(self.model.state_dict().values(), model.state_dict().values(), strict=True)
        )
        self._floats = [pair for pair in pairs if pair[0].dtype.is_floating_point]
        self._others = [pair for pair in pairs if not pair[0].dtype.is_floating_point]

    @torch.no_grad()
    def update(self) -> None:
        """One step of the average towards the followed model's current weights."""
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        self.updates += 1
        for mine, theirs in self._floats:
            mine.lerp_(theirs, 1.0 - decay)
        for mine, theirs in self._others:
            mine.copy_(theirs)


def _batches(
    windows: list[_Window], batch_size: int, rng: np.random.Generator
) -> list[list[_Window]]:
    """Shuffled batches of windows of similar length (less padding), in random order."""
    order = rng.permutation(len(windows))
    pool = batch_size * 8
    batches: list[list[_Window]] = []
    for start in range(0, len(order), pool):
        chunk = sorted(order[start : start + pool], key=lambda i: len(windows[i].inputs))
        batches.extend(
            [windows[i] for i in chunk[b : b + batch_size]]
            for b in range(0, len(chunk), batch_size)
        )
    return [batches[i] for i in rng.permutation(len(batches))]


def _item_vectors(model: ContrastiveRecommender) -> np.ndarray:
    was_training = model.training
    model.eval()
    with torch.inference_mode():
        vectors = model.items().float().cpu().numpy()
    model.train(was_training)
    return np.ascontiguousarray(vectors)


def _step(
    config: ContrastiveConfig,
    model: ContrastiveRecommender,
    batch: list[_Window],
    device: torch.device,
    pad: int,
    rng: np.random.Generator,
    log_q: torch.Tensor,
    generator: torch.Generator,
    unseen: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Loss of one batch: (total, next-item term, contrastive term)."""
    length = max(len(w.inputs) for w in batch)
    inputs, types = left_pad([(w.inputs, w.input_types) for w in batch], length, pad)
    targets, _ = left_pad([(w.targets, w.input_types) for w in batch], length, pad)
    weights = np.zeros((len(batch), length), dtype=np.float32)
    for row, w in enumerate(batch):
        weights[row, length - len(w.weights) :] = w.weights
    inputs_t = torch.from_numpy(inputs).to(device)
    types_t = torch.from_numpy(types).to(device)
    targets_t = torch.from_numpy(targets).to(device)
    item_vectors = model.items()
    hidden = model.hidden(item_vectors, inputs_t, types_t)
    weights_t = torch.from_numpy(weights).to(device)
    valid = (targets_t != pad) & (weights_t > 0)  # weight 0: trained in another window
    seen = None
    if config.mask_history_in_loss and item_vectors.shape[0] <= config.full_softmax_max_items:
        # first position of each item in each row; item i is "seen" at t if first <= t
        first = torch.full((len(batch), pad + 1), length, dtype=torch.int64, device=device)
        steps = torch.arange(length, device=device).expand(len(batch), length)
        first = first.scatter_reduce(1, inputs_t, steps, reduce="amin")
        rows, cols = valid.nonzero(as_tuple=True)
        seen = first[rows][:, :pad] <= cols.unsqueeze(1)
    weight_t = weights_t[valid] if config.use_reward_weights else None
    main = next_item_loss(
        config,
        hidden[valid],
        targets_t[valid],
        item_vectors,
        weight_t,
        seen,
        log_q,
        generator,
        unseen,
    )
    aux = main.new_zeros(())
    if config.use_contrastive and config.contrastive_weight > 0 and len(batch) > 1:
        views = []
        for _ in range(2):
            augmented = [
                augment(
                    w.inputs[-config.view_len :],
                    w.input_types[-config.view_len :],
                    config,
                    rng,
                    mask_index=pad,
                )
                for w in batch
            ]
            view_length = max(len(a[0]) for a in augmented)
            view_items, view_types = left_pad(augmented, view_length, pad)
            views.append(
                model.user_vectors(
                    item_vectors,
                    torch.from_numpy(view_items).to(device),
                    torch.from_numpy(view_types).to(device),
                )
            )
        aux = contrastive_loss(views[0], views[1], config.contrastive_temperature)
    total = main + config.contrastive_weight * aux if config.use_contrastive else main
    return total, main, aux
