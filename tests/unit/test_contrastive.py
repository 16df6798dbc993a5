"""The contrastive recommender: towers, masking, losses, determinism, export, learning."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from recsys.evaluation import Split, evaluate, leave_one_out
from recsys.events import EVENT_TYPE_IDS
from recsys.model.cold_start import cold_start_split
from recsys.model.contrastive import (
    ContrastiveConfig,
    ContrastiveRecommender,
    ItemTower,
    UserTower,
    _serving_attention,
    augment,
    contrastive_loss,
    id_only,
    next_item_loss,
    reward_weights,
)
from recsys.model.onnx_runtime import OnnxUserEncoder, export_user_encoder, pad_left
from recsys.model.training import (
    InteractionData,
    TowerScorer,
    _batches,
    _step,
    _windows,
    popularity_scorer,
    train,
)

RATING = EVENT_TYPE_IDS["rating"]
SMALL = ContrastiveConfig(
    dim=16, max_len=8, n_layers=2, n_heads=2, dropout=0.1, batch_size=16, view_len=8
)


@pytest.fixture(autouse=True)
def _threads() -> None:
    torch.set_num_threads(1)


def _inputs(batch: int, length: int, dim: int, pad: int = 0, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    vectors = torch.nn.functional.normalize(torch.randn(batch, length, dim, generator=g), dim=-1)
    types = torch.randint(1, 6, (batch, length), generator=g)
    if pad:
        vectors[:, :pad] = 0.0
        types[:, :pad] = 0
    return vectors, types


def _synthetic(n_items: int = 24, n_users: int = 60, length: int = 14, seed: int = 0):
    """Users walk the catalogue in order (next item = previous + 1), from random starts;
    a popularity scorer cannot know where a user is, a sequential model can."""
    rng = np.random.default_rng(seed)
    rows: list[tuple[str, str, float]] = []
    for user in range(n_users):
        start = int(rng.integers(n_items))
        for step in range(length):
            rows.append((f"u{user}", f"i{(start + step) % n_items}", float(user * 100 + step)))
    item_ids = [f"i{i}" for i in range(n_items)]
    split = leave_one_out(rows, item_ids)
    data = InteractionData(
        split=split,
        event_types=np.full(len(rows), RATING, dtype=np.int64),
        values=np.full(len(rows), 4.0, dtype=np.float32),
    )
    text = rng.normal(size=(n_items, 12)).astype(np.float32)
    text /= np.linalg.norm(text, axis=1, keepdims=True)
    return data, text


def test_user_tower_shapes_norm_and_empty_rows() -> None:
    tower = UserTower(SMALL).eval()
    vectors, types = _inputs(4, SMALL.max_len, SMALL.dim, pad=3)
    types[2] = 0  # a row with no interactions
    vectors[2] = 0.0
    out = tower(vectors, types)
    assert out.shape == (4, SMALL.dim)
    norms = out.norm(dim=1)
    assert torch.allclose(norms[[0, 1, 3]], torch.ones(3), atol=1e-5)
    assert torch.all(out[2] == 0)
    assert torch.isfinite(out).all()


def test_item_tower_shapes_and_unit_norm() -> None:
    text = torch.nn.functional.normalize(torch.randn(10, 12), dim=-1)
    tower = ItemTower(SMALL, 10, text).eval()
    out = tower()
    assert out.shape == (10, SMALL.dim)
    assert torch.allclose(out.norm(dim=1), torch.ones(10), atol=1e-5)
    with pytest.raises(ValueError):
        ItemTower(SMALL, 10, None)


def test_causal_masking_future_items_do_not_change_earlier_outputs() -> None:
    tower = UserTower(SMALL).eval()
    vectors, types = _inputs(3, SMALL.max_len, SMALL.dim, pad=2)
    changed_vectors, changed_types = vectors.clone(), types.clone()
    changed_vectors[:, 5:] = torch.randn(3, SMALL.max_len - 5, SMALL.dim)
    changed_types[:, 5:] = 1
    with torch.no_grad():
        before = tower.encode_all(vectors, types)
        after = tower.encode_all(changed_vectors, changed_types)
    assert torch.allclose(before[:, :5], after[:, :5], atol=1e-6)
    assert not torch.allclose(before[:, 5:], after[:, 5:], atol=1e-3)


def test_left_padding_does_not_change_the_user_vector() -> None:
    tower = UserTower(SMALL).eval()
    vectors, types = _inputs(2, 5, SMALL.dim)
    padded_vectors = torch.cat([torch.zeros(2, 3, SMALL.dim), vectors], dim=1)
    padded_types = torch.cat([torch.zeros(2, 3, dtype=torch.int64), types], dim=1)
    with torch.no_grad():
        short = tower(vectors, types)
        padded = tower(padded_vectors, padded_types)
    assert torch.allclose(short, padded, atol=1e-5)


def test_id_dropout_and_cold_items_use_text_alone() -> None:
    config = SMALL.model_copy(update={"id_dropout": 1.0, "text_dropout": 0.0})
    text = torch.nn.functional.normalize(torch.randn(6, 12), dim=-1)
    known = torch.tensor([True, True, True, True, False, False])
    tower = ItemTower(config, 6, text, known)
    with torch.no_grad():
        tower.ids.weight.normal_(std=1.0)  # type: ignore[union-attr]
        text_only = torch.nn.functional.normalize(tower.projection(text), dim=-1)
        tower.train()
        assert torch.allclose(tower(), text_only, atol=1e-6)  # every ID dropped
        tower.eval()
        served = tower()
    assert torch.allclose(served[4:], text_only[4:], atol=1e-6)  # unknown: text only
    assert not torch.allclose(served[:4], text_only[:4], atol=1e-3)  # known: text + ID
    # ID-only: no text, every item keeps its ID embedding
    plain = ItemTower(id_only(SMALL), 6, None, known).eval()
    assert torch.all(plain.known)


def test_reward_weights_order_events_and_scale_ratings() -> None:
    types = np.array([EVENT_TYPE_IDS[t] for t in ("view", "click", "add_to_cart", "purchase")])
    weights = reward_weights(SMALL, types, np.full(4, np.nan, dtype=np.float32))
    assert list(weights) == sorted(weights) and len(set(weights.tolist())) == 4
    rated = np.array([RATING, RATING, 0]), np.array([5.0, 1.0, np.nan])
    scaled = reward_weights(SMALL.model_copy(update={"scale_rating_rewards": True}), *rated)
    assert scaled[0] > scaled[1] > 0 and scaled[2] == 0
    unscaled = reward_weights(SMALL.model_copy(update={"scale_rating_rewards": False}), *rated)
    assert unscaled[0] == unscaled[1] > 0 and unscaled[2] == 0


def _one_step(config: ContrastiveConfig):
    data, text = _synthetic()
    torch.manual_seed(0)
    known = torch.from_numpy(data.train_counts() > 0)
    model = ContrastiveRecommender(
        config, data.split.n_items, torch.from_numpy(text) if config.use_text else None, known
    )
    windows = _windows(data, config)
    rng = np.random.default_rng(0)
    batch = _batches(windows, config.batch_size, rng)[0]
    log_q = torch.full((data.split.n_items,), -np.log(data.split.n_items))
    return model, _step(
        config,
        model,
        batch,
        torch.device("cpu"),
        model.pad_index,
        rng,
        log_q,
        torch.Generator().manual_seed(0),
    )


@pytest.mark.parametrize(
    "changes",
    [
        {},
        {"use_contrastive": False},
        {"use_reward_weights": False},
        {"scale_rating_rewards": True},
        {"use_text": False},
        {"use_id": False},
        {"mask_history_in_loss": True},
        {"full_softmax_max_items": 4, "uniform_negatives": 8},  # sampled softmax, log-Q
    ],
)
def test_each_loss_term_is_finite_and_switchable(changes: dict[str, object]) -> None:
    config = SMALL.model_copy(update=changes)
    model, (total, main, aux) = _one_step(config)
    assert torch.isfinite(total) and torch.isfinite(main) and torch.isfinite(aux)
    if config.use_contrastive:
        assert aux > 0
        assert torch.isclose(total, main + config.contrastive_weight * aux)
    else:
        assert aux == 0 and torch.equal(total, main)
    total.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


def test_contrastive_loss_prefers_matching_views() -> None:
    a = torch.randn(8, 16)
    assert contrastive_loss(a, a + 0.01 * torch.randn(8, 16), 0.5) < contrastive_loss(
        a, torch.randn(8, 16), 0.5
    )


def test_next_item_loss_lower_when_target_scores_highest() -> None:
    items = torch.nn.functional.normalize(torch.randn(20, 16), dim=-1)
    targets = torch.tensor([3, 7])
    good = next_item_loss(SMALL, items[targets], targets, items)
    bad = next_item_loss(SMALL, -items[targets], targets, items)
    assert good < bad


@pytest.mark.parametrize("max_full", [100, 4])
def test_label_smoothing_spreads_weight_over_unmasked_candidates_only(max_full: int) -> None:
    config = SMALL.model_copy(
        update={"full_softmax_max_items": max_full, "uniform_negatives": 64, "label_smoothing": 0.0}
    )
    smoothed = config.model_copy(update={"label_smoothing": 0.2})
    items = torch.nn.functional.normalize(torch.randn(20, 16), dim=-1)
    unseen = torch.zeros(20, dtype=torch.bool)
    unseen[15:] = True
    users = torch.randn(6, 16)
    targets = torch.tensor([0, 1, 2, 3, 4, 5])
    torch.manual_seed(0)
    plain = next_item_loss(config, users, targets, items, unseen=unseen)
    torch.manual_seed(0)
    spread = next_item_loss(smoothed, users, targets, items, unseen=unseen)
    # masked logits sit at -1e9: counted as candidates, they would add about 2e7 to the loss
    assert torch.isfinite(spread) and spread < plain + 20
    assert spread != plain
    if max_full == 100:  # full softmax: the smoothed term is the mean over the 15 items
        log_p = torch.log_softmax(
            torch.nn.functional.normalize(users, dim=-1) @ items[:15].T / config.temperature, -1
        )
        expected = -(0.8 * log_p[torch.arange(6), targets] + 0.2 * log_p.mean(dim=1)).mean()
        assert torch.allclose(spread, expected, atol=1e-5)


def test_label_smoothing_penalises_overconfidence() -> None:
    """A user vector on top of its target: the plain loss keeps pushing it closer to 0, the
    smoothed one is already above a less peaked softmax's loss."""
    items = torch.nn.functional.normalize(torch.randn(20, 16), dim=-1)
    targets = torch.tensor([3, 7])
    sharp = SMALL.model_copy(update={"temperature": 0.01, "label_smoothing": 0.0})
    smoothed = sharp.model_copy(update={"label_smoothing": 0.1})
    soft = smoothed.model_copy(update={"temperature": 0.2})
    assert next_item_loss(sharp, items[targets], targets, items) < next_item_loss(
        soft.model_copy(update={"label_smoothing": 0.0}), items[targets], targets, items
    )
    assert next_item_loss(smoothed, items[targets], targets, items) > next_item_loss(
        soft, items[targets], targets, items
    )


def test_augmentations_keep_items_and_types_together() -> None:
    rng = np.random.default_rng(0)
    items = np.arange(10)
    types = items % 5 + 1
    for _ in range(30):
        view_items, view_types = augment(items, types, SMALL, rng, mask_index=99)
        kept = view_items != 99
        assert np.array_equal(view_types[kept], view_items[kept] % 5 + 1)
        assert 1 <= len(view_items) <= 10


def test_training_is_deterministic_with_a_seed() -> None:
    data, text = _synthetic()
    config = SMALL.model_copy(update={"max_epochs": 3, "patience": 5})
    first = train(config, data, text, progress=False)
    second = train(config, data, text, progress=False)
    assert np.array_equal(first.item_vectors, second.item_vectors)
    assert [h.loss for h in first.history] == [h.loss for h in second.history]
    other = train(config.model_copy(update={"seed": 1}), data, text, progress=False)
    assert not np.array_equal(first.item_vectors, other.item_vectors)


@pytest.mark.parametrize("n_heads", [1, 2])  # one head has its own, folded arrangement
@pytest.mark.parametrize("batch", [1, 5, 32])
def test_onnx_export_matches_torch(tmp_path: Path, batch: int, n_heads: int) -> None:
    torch.manual_seed(0)
    tower = UserTower(SMALL.model_copy(update={"n_heads": n_heads})).eval()
    path = export_user_encoder(tower, tmp_path / "user.onnx", SMALL.max_len, SMALL.dim)
    encoder = OnnxUserEncoder(path, prefer_cuda=False)
    vectors, types = _inputs(batch, SMALL.max_len, SMALL.dim, seed=batch)
    for row in range(batch):  # varied left padding, including an empty row
        pad = row % (SMALL.max_len + 1)
        vectors[row, :pad] = 0.0
        types[row, :pad] = 0
    with torch.no_grad():
        expected = tower(vectors, types).numpy()
    got = encoder.encode(vectors.numpy(), types.numpy())
    assert got.shape == (batch, SMALL.dim)
    np.testing.assert_allclose(got, expected, atol=1e-4)


def test_onnx_sequences_of_any_length_match_torch_at_full_padding(tmp_path: Path) -> None:
    """The exported sequence axis is dynamic: a batch padded only to its longest member,
    or bucketed by length, gives the vectors torch gives at ``max_len`` positions."""
    torch.manual_seed(0)
    tower = UserTower(SMALL).eval()
    path = export_user_encoder(tower, tmp_path / "user.onnx", SMALL.max_len, SMALL.dim)
    encoder = OnnxUserEncoder(path, prefer_cuda=False)
    assert encoder.dynamic_length and encoder.max_len == SMALL.max_len
    rng = np.random.default_rng(7)
    lengths = [1, 2, 3, SMALL.max_len, SMALL.max_len + 4, 5, 1, 0]
    sequences = [
        (
            rng.normal(size=(n, SMALL.dim)).astype(np.float32),
            rng.integers(1, 5, size=n).tolist(),
        )
        for n in lengths
    ]
    full_vectors, full_types = pad_left(sequences, SMALL.max_len, SMALL.dim)
    with torch.no_grad():
        expected = tower(torch.from_numpy(full_vectors), torch.from_numpy(full_types)).numpy()
    np.testing.assert_allclose(encoder.encode_sequences(sequences), expected, atol=1e-4)
    short = [s for s, n in zip(sequences, lengths, strict=True) if 0 < n <= 3]
    trimmed = encoder.encode(*pad_left(short, 3, SMALL.dim))
    np.testing.assert_allclose(trimmed, expected[[0, 1, 2, 6]], atol=1e-4)
    with pytest.raises(ValueError, match="item_vectors"):
        encoder.encode(*pad_left(short, SMALL.max_len + 1, SMALL.dim))


def test_model_learns_a_sequential_pattern_better_than_popularity() -> None:
    data, text = _synthetic()
    config = SMALL.model_copy(update={"max_epochs": 40, "patience": 10, "lr": 3e-3})
    result = train(config, data, text, progress=False)
    scorer = TowerScorer(data, result.user_tower, result.item_vectors, config.max_len)
    model = evaluate(scorer.score_fn("test"), data.split, "test")["masked"]["ndcg@10"]
    popular = evaluate(popularity_scorer(data), data.split, "test")["masked"]["ndcg@10"]
    assert model > 0.5
    assert model > popular + 0.2
    assert result.best_epoch >= 1 and result.curve()


def _split(rows: list[tuple[str, str, float]], n_items: int) -> Split:
    return leave_one_out(rows, [f"i{i}" for i in range(n_items)])


def test_cold_start_split_removes_cold_items_from_training() -> None:
    data, _ = _synthetic(n_items=40, n_users=80)
    cold = cold_start_split(data.split, fraction=0.1, seed=3)
    assert len(cold.cold_items) == 4
    cold_set = set(cold.cold_items.tolist())
    for user in range(cold.split.n_users):
        assert not cold_set & set(cold.split.history(user, "valid").tolist())
        assert cold.split.sequences[user][-1] == data.split.sequences[user][-1]
    users = cold.cold_users()
    assert len(users) > 0
    assert all(cold.split.target(int(u), "test") in cold_set for u in users)
    sub = cold.cold_test_split()
    assert sub.n_users == len(users) and sub.n_items == data.split.n_items
    with pytest.raises(ValueError):
        cold_start_split(data.split, fraction=0.0)
    assert _split([("u", "i0", 0.0)], 2).n_items == 2


@pytest.mark.parametrize("max_full", [100, 4])
def test_items_without_training_interactions_are_never_negatives(max_full: int) -> None:
    config = SMALL.model_copy(update={"full_softmax_max_items": max_full, "uniform_negatives": 64})
    items = torch.nn.functional.normalize(torch.randn(20, 16), dim=-1).requires_grad_()
    unseen = torch.zeros(20, dtype=torch.bool)
    unseen[15:] = True
    users = torch.randn(6, 16)
    targets = torch.tensor([0, 1, 2, 3, 4, 5])
    loss = next_item_loss(config, users, targets, items, unseen=unseen)
    loss.backward()  # type: ignore[no-untyped-call]
    assert items.grad is not None
    assert torch.all(items.grad[15:] == 0)
    assert torch.any(items.grad[6:15] != 0)


@pytest.mark.parametrize("stride", [None, 3, 5, 8])
def test_overlapping_windows_train_every_target_once(stride: int | None) -> None:
    data, _ = _synthetic(length=30)
    config = SMALL.model_copy(update={"window_stride": stride, "use_reward_weights": False})
    least_context = config.max_len - (stride or config.max_len) + 1
    windows = iter(_windows(data, config))  # per user, newest window first
    for user in range(data.split.n_users):
        history = list(data.split.history(user, "valid"))
        targets: list[int] = []
        while len(targets) < len(history) - 1:
            window = next(windows)
            assert len(window.inputs) <= config.max_len
            trained = window.weights > 0
            targets = list(window.targets[trained]) + targets
            if len(targets) < len(history) - 1:  # not the user's first window
                first_trained = int(np.argmax(trained))
                assert first_trained + 1 >= least_context
        assert targets == history[1:]  # each target exactly once, in order
    assert next(windows, None) is None
    if stride is not None and stride < config.max_len:
        assert len(_windows(data, config)) > len(_windows(data, SMALL))


def test_weight_average_is_what_training_keeps_and_is_deterministic() -> None:
    data, text = _synthetic()
    config = SMALL.model_copy(update={"max_epochs": 3, "patience": 5, "ema_decay": 0.9})
    first = train(config, data, text, progress=False)
    second = train(config, data, text, progress=False)
    assert np.array_equal(first.item_vectors, second.item_vectors)
    raw = train(config.model_copy(update={"ema_decay": 0.0}), data, text, progress=False)
    # same steps, same data order: only the averaging differs
    assert [h.loss for h in first.history] == [h.loss for h in raw.history]
    assert not np.array_equal(first.item_vectors, raw.item_vectors)


def test_serving_path_computes_only_the_last_position_with_the_same_result() -> None:
    torch.manual_seed(0)
    tower = UserTower(SMALL).eval()
    vectors, types = _inputs(6, SMALL.max_len, SMALL.dim, pad=3)
    with torch.no_grad():
        every_position = tower.encode_all(vectors, types)
        last_only = tower.encode_all(vectors, types, last_only=True)
        user = tower(vectors, types)
    assert last_only.shape == (6, 1, SMALL.dim)
    torch.testing.assert_close(last_only[:, 0], every_position[:, -1], atol=1e-5, rtol=1e-5)
    expected = torch.nn.functional.normalize(every_position[:, -1], dim=-1)
    torch.testing.assert_close(user, expected, atol=1e-5, rtol=1e-5)


def test_weight_average_ramps_its_decay_up_so_it_follows_early_training() -> None:
    from recsys.model.training import _WeightAverage

    model = ContrastiveRecommender(id_only(SMALL), 10)
    average = _WeightAverage(model, decay=0.99)
    start = model.user.norm.weight.detach().clone()
    with torch.no_grad():
        model.user.norm.weight.add_(1.0)
    average.update()  # first update: decay 1/10, so 90% of the way to the model
    torch.testing.assert_close(average.model.user.norm.weight, start + 0.9)
    for _ in range(5000):
        average.update()
    assert average.decay == 0.99 and average.updates == 5001
    torch.testing.assert_close(average.model.user.norm.weight, model.user.norm.weight)


@pytest.mark.parametrize("n_heads", [1, 2])
@pytest.mark.parametrize("last_only", [False, True])
def test_serving_arrangement_computes_what_training_does(n_heads: int, last_only: bool) -> None:
    """Eval mode (what is exported to ONNX) arranges each block for onnxruntime; without
    dropout the training arrangement must give the same numbers: bit for bit for every
    position with several heads, and up to float rounding where projections are folded
    together (a different order of the same sums): the last position alone, and every
    position of a single head."""
    config = SMALL.model_copy(update={"n_heads": n_heads, "dropout": 0.0})
    torch.manual_seed(0)
    tower = UserTower(config)
    vectors, types = _inputs(5, config.max_len, config.dim, pad=4)
    with torch.no_grad():
        trained_way = tower.train().encode_all(vectors, types, last_only=last_only)
        served_way = tower.eval().encode_all(vectors, types, last_only=last_only)
    assert served_way.shape == trained_way.shape
    if last_only or n_heads == 1:
        torch.testing.assert_close(served_way, trained_way, rtol=1e-5, atol=1e-5)
    else:
        assert torch.equal(trained_way, served_way)


@pytest.mark.parametrize("n_heads", [1, 4])
def test_folded_layers_match_a_long_padded_history(n_heads: int) -> None:
    """The folded layers against the plain arrangement on histories of every length
    (one real item up to all of them), trained-looking weights: the last layer with one
    head or many, and with one head every position of every layer."""
    config = SMALL.model_copy(update={"n_heads": n_heads, "dim": 32, "dropout": 0.0})
    torch.manual_seed(1)
    tower = UserTower(config)
    with torch.no_grad():
        for parameter in tower.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.5)
    batch = config.max_len
    vectors = torch.randn(batch, config.max_len, config.dim)
    types = torch.ones(batch, config.max_len, dtype=torch.long)
    for row in range(batch):
        types[row, : config.max_len - 1 - row] = 0  # row r keeps its newest r + 1 items
    with torch.no_grad():
        for last_only in (True, False):
            plain = tower.train().encode_all(vectors, types, last_only=last_only)
            folded = tower.eval().encode_all(vectors, types, last_only=last_only)
            torch.testing.assert_close(folded, plain, rtol=1e-5, atol=1e-5)


def test_served_attention_never_returns_subnormal_weights() -> None:
    """The served softmax floors logits 80 below the row's top allowed one, so no weight is
    a subnormal float (x86 cores handle those in microcode: onnxruntime's softmax of masked
    logits ran 8x slower). The weights stay those of the plain masked softmax, masked keys
    included (about 1e-35 instead of 0), and a row's allowed keys still share all of it."""
    torch.manual_seed(0)
    scores = torch.randn(4, 6, 6) * 60.0  # allowed logits up to ~400 apart: some below -87
    allowed = torch.ones(6, 6, dtype=torch.bool).tril().expand(4, 6, 6).clone()
    allowed[0, :, :3] = False  # left padding, keys only
    allowed[0].fill_diagonal_(True)
    served = _serving_attention(scores, allowed)
    plain = torch.softmax(scores.masked_fill(~allowed, -1e9), dim=-1)
    subnormal = (served != 0) & (served.abs() < torch.finfo(torch.float32).tiny)
    assert not subnormal.any()
    assert bool(((plain != 0) & (plain.abs() < torch.finfo(torch.float32).tiny)).any())
    torch.testing.assert_close(served, plain, rtol=0.0, atol=1e-6)
    assert float(served.masked_select(~allowed).max()) < 1e-30
