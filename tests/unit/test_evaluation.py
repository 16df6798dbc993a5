"""The evaluation harness, checked against metrics computed by hand on tiny cases."""

from __future__ import annotations

import math

import numpy as np
import pytest

from recsys import evaluation
from recsys.evaluation import (
    ScoreFn,
    Split,
    bootstrap_ci,
    evaluate,
    evaluate_ranks,
    flatten_metrics,
    leave_one_out,
    ndcg_at,
    paired_gain,
    recall_at,
)

CATALOGUE = ["a", "b", "c", "d", "e"]


def fixed_scores(split: Split, table: dict[str, list[float]]) -> ScoreFn:
    """A score_fn returning a fixed row per user id."""

    def score(users: np.ndarray) -> np.ndarray:
        return np.array([table[split.user_ids[int(u)]] for u in users], dtype=np.float64)

    return score


def one_user_split() -> Split:
    # u1: a, b, c, d in time order -> valid target c, test target d
    return leave_one_out(
        [("u1", "a", 1.0), ("u1", "b", 2.0), ("u1", "c", 3.0), ("u1", "d", 4.0)], CATALOGUE
    )


def test_hand_computed_ranks_masked_and_unmasked() -> None:
    split = one_user_split()
    #           a    b    c    d    e
    scores = [0.9, 0.8, 0.7, 0.5, 0.6]
    result = evaluate(fixed_scores(split, {"u1": scores}), split, "test", ks=(1, 2, 10))
    # unmasked: a, b, c, e score above d -> rank 4 (0-based)
    unmasked = result["unmasked"]
    assert unmasked["recall@2"] == 0.0 and unmasked["recall@10"] == 1.0
    assert unmasked["ndcg@10"] == pytest.approx(1 / math.log2(6))
    assert unmasked["mrr@10"] == pytest.approx(1 / 5)
    assert unmasked["coverage@1"] == pytest.approx(1 / 5)  # top-1: a
    assert unmasked["coverage@10"] == 1.0
    # masked: a, b, c were seen before d -> only e is ahead -> rank 1
    masked = result["masked"]
    assert masked["recall@1"] == 0.0 and masked["recall@2"] == 1.0
    assert masked["ndcg@2"] == pytest.approx(1 / math.log2(3))
    assert masked["mrr@10"] == pytest.approx(1 / 2)
    assert masked["coverage@1"] == pytest.approx(1 / 5)  # top-1: e
    assert masked["coverage@10"] == pytest.approx(2 / 5)  # only d and e are rankable
    assert masked["users"] == unmasked["users"] == 1.0


def test_validation_stage_uses_the_second_to_last_item() -> None:
    split = one_user_split()
    scores = [0.0, 0.0, 1.0, 0.5, 0.0]  # c (valid target) first; d is in the future
    result = evaluate(fixed_scores(split, {"u1": scores}), split, "valid", ks=(1,))
    assert result["masked"]["recall@1"] == 1.0 and result["masked"]["ndcg@1"] == 1.0
    np.testing.assert_array_equal(split.history(0, "valid"), [0, 1])
    np.testing.assert_array_equal(split.history(0, "test"), [0, 1, 2])


def test_ties_never_favour_the_target() -> None:
    split = one_user_split()
    flat = evaluate(fixed_scores(split, {"u1": [1.0] * 5}), split, "test", ks=(1, 2, 10))
    assert flat["unmasked"]["mrr@10"] == pytest.approx(1 / 5)  # last of 5
    assert flat["masked"]["recall@1"] == 0.0  # tied with e -> behind it
    assert flat["masked"]["mrr@10"] == pytest.approx(1 / 2)
    one_tie = [0.0, 0.0, 0.0, 0.5, 0.5]  # d tied with e only
    result = evaluate(fixed_scores(split, {"u1": one_tie}), split, "test", ks=(1, 2))
    assert result["unmasked"]["recall@1"] == 0.0 and result["unmasked"]["recall@2"] == 1.0
    nan = [0.0, 0.0, 0.0, float("nan"), 0.0]  # a NaN target is ranked last
    result = evaluate(fixed_scores(split, {"u1": nan}), split, "test", ks=(10,))
    assert result["unmasked"]["mrr@10"] == pytest.approx(1 / 5)


def test_metrics_average_over_users_and_skip_short_histories() -> None:
    interactions = [
        ("u1", "a", 1.0), ("u1", "b", 2.0), ("u1", "c", 3.0),  # test target c
        ("u2", "d", 1.0), ("u2", "e", 2.0), ("u2", "a", 3.0),  # test target a
        ("u3", "a", 1.0), ("u3", "b", 2.0),  # too short: training only
    ]  # fmt: skip
    split = leave_one_out(interactions, CATALOGUE)
    np.testing.assert_array_equal(split.users("test"), [0, 1])
    table = {
        "u1": [0.0, 0.0, 1.0, 0.0, 0.0],  # c ranked first -> 1
        "u2": [0.5, 0.0, 0.0, 0.9, 0.8],  # unmasked: d, e ahead -> rank 2; masked: rank 0
    }
    result = evaluate(fixed_scores(split, table), split, "test", ks=(1, 10))
    assert result["unmasked"]["recall@1"] == pytest.approx(0.5)
    assert result["unmasked"]["ndcg@10"] == pytest.approx((1.0 + 1 / math.log2(4)) / 2)
    assert result["unmasked"]["mrr@10"] == pytest.approx((1.0 + 1 / 3) / 2)
    assert result["masked"]["recall@1"] == 1.0
    assert result["masked"]["users"] == 2.0
    # training = everything but valid and test targets: u1 a, u2 d, u3 a b
    train = sorted(interactions[int(p)][1] for p in split.train_positions())
    assert train == ["a", "a", "b", "d"]


def test_batches_give_the_same_answer() -> None:
    rng = np.random.default_rng(0)
    items = [f"i{i}" for i in range(30)]
    interactions = [
        (f"u{u}", items[int(rng.integers(30))], float(t)) for u in range(20) for t in range(6)
    ]
    split = leave_one_out(interactions, items)
    table = {uid: rng.normal(size=30).tolist() for uid in split.user_ids}
    score = fixed_scores(split, table)
    whole = evaluate(score, split, "test", batch_size=1000)
    pieces = evaluate(score, split, "test", batch_size=3)
    assert whole == pieces


def test_repeat_target_is_not_masked() -> None:
    split = leave_one_out([("u", "a", 1.0), ("u", "b", 2.0), ("u", "a", 3.0)], CATALOGUE)
    scores = [1.0, 2.0, 0.0, 0.0, 0.0]  # b (seen) above the target a
    result = evaluate(fixed_scores(split, {"u": scores}), split, "test", ks=(1,))
    assert result["masked"]["recall@1"] == 1.0  # b masked, a (the target) still ranked
    assert result["unmasked"]["recall@1"] == 0.0


def test_equal_timestamps_keep_source_order() -> None:
    rows = [("u", "c", 5.0), ("v", "a", 1.0), ("u", "a", 5.0), ("u", "b", 5.0), ("u", "e", 1.0)]
    split = leave_one_out(rows, CATALOGUE)
    u = split.user_ids.index("u")
    assert [CATALOGUE[i] for i in split.sequences[u]] == ["e", "c", "a", "b"]
    assert split.target(u, "test") == CATALOGUE.index("b")
    assert split.target(u, "valid") == CATALOGUE.index("a")
    np.testing.assert_array_equal(split.positions[u], [4, 0, 2, 3])
    reversed_rows = [("u", "b", 5.0), ("u", "a", 5.0), ("u", "c", 5.0), ("u", "e", 1.0)]
    again = leave_one_out(reversed_rows, CATALOGUE)
    assert [CATALOGUE[i] for i in again.sequences[0]] == ["e", "b", "a", "c"]


def test_bad_inputs_are_refused() -> None:
    with pytest.raises(ValueError, match="not in the catalogue"):
        leave_one_out([("u", "zzz", 1.0)], CATALOGUE)
    split = one_user_split()
    with pytest.raises(ValueError, match="score_fn returned"):
        evaluate(lambda users: np.zeros((len(users), 3)), split, "test")
    with pytest.raises(ValueError, match="stage"):
        evaluate(lambda users: np.zeros((len(users), 5)), split, "train")  # type: ignore[arg-type]


def test_flatten_metrics_names() -> None:
    flat = flatten_metrics("test", {"masked": {"ndcg@10": 0.5}, "unmasked": {"ndcg@10": 0.25}})
    assert flat == {"test_masked_ndcg@10": 0.5, "test_unmasked_ndcg@10": 0.25}


def random_split_and_scores(seed: int) -> tuple[Split, ScoreFn]:
    rng = np.random.default_rng(seed)
    items = [f"i{i}" for i in range(30)]
    interactions = [
        (f"u{u}", items[int(rng.integers(30))], float(t)) for u in range(40) for t in range(6)
    ]
    split = leave_one_out(interactions, items)
    table = {uid: rng.normal(size=30).tolist() for uid in split.user_ids}
    return split, fixed_scores(split, table)


def test_per_user_ranks_rebuild_the_metrics() -> None:
    split, score = random_split_and_scores(1)
    result = evaluate_ranks(score, split, "test", ks=(1, 10))
    assert result.metrics == evaluate(score, split, "test", ks=(1, 10))
    for mode in ("masked", "unmasked"):
        ranks = result.ranks[mode]
        assert len(ranks) == len(split.users("test"))
        assert ndcg_at(ranks, 10).mean() == pytest.approx(result.metrics[mode]["ndcg@10"])
        assert recall_at(ranks, 1).mean() == pytest.approx(result.metrics[mode]["recall@1"])
    # masking can only move a target up
    assert (result.ranks["masked"] <= result.ranks["unmasked"]).all()


def test_ndcg_at_by_hand() -> None:
    expected = [1.0, 1 / math.log2(3), 1 / math.log2(11), 0.0]
    np.testing.assert_allclose(ndcg_at(np.array([0, 1, 9, 10]), 10), expected)


def test_bootstrap_interval_holds_the_mean_and_narrows_with_users() -> None:
    rng = np.random.default_rng(0)
    few, many = rng.random(50), rng.random(5000)
    low, high = bootstrap_ci(few)
    assert low < few.mean() < high
    many_low, many_high = bootstrap_ci(many)
    assert many_low < many.mean() < many_high
    assert many_high - many_low < (high - low) / 5
    assert bootstrap_ci(few, seed=3) == bootstrap_ci(few, seed=3)
    assert bootstrap_ci(np.full(10, 0.25)) == (0.25, 0.25)


def test_paired_gain_sees_a_small_lead_that_unpaired_intervals_miss() -> None:
    rng = np.random.default_rng(0)
    baseline = rng.random(2000)
    model = baseline * 1.05  # 5% ahead on every user
    paired = paired_gain(model, baseline)
    assert paired.gain == pytest.approx(0.05)
    assert paired.ci_low == pytest.approx(0.05) and paired.ci_high == pytest.approx(0.05)
    assert paired.share_ahead == 1.0
    # the unpaired intervals of the two means overlap
    assert bootstrap_ci(model)[0] < bootstrap_ci(baseline)[1]


def test_paired_gain_of_noise_straddles_zero() -> None:
    rng = np.random.default_rng(1)
    baseline, model = rng.random(1000), rng.random(1000)
    paired = paired_gain(model, baseline)
    assert paired.ci_low < 0 < paired.ci_high  # two draws of one distribution
    assert paired.ci_low < paired.gain < paired.ci_high
    assert 0 < paired.share_ahead < 1
    assert paired.as_dict()["ci95"] == [paired.ci_low, paired.ci_high]


def test_paired_gain_refuses_what_it_cannot_compare() -> None:
    with pytest.raises(ValueError, match="equal"):
        paired_gain(np.ones(3), np.ones(4))
    with pytest.raises(ValueError, match="mean is 0"):
        paired_gain(np.ones(3), np.zeros(3))


def test_intervals_do_not_depend_on_the_resampling_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(2)
    baseline, model = rng.random(300), rng.random(300)
    whole = (bootstrap_ci(model), paired_gain(model, baseline))
    monkeypatch.setattr(evaluation, "_RESAMPLE_CELLS", 300 * 7)  # 7 resamples per chunk
    assert (bootstrap_ci(model), paired_gain(model, baseline)) == whole
