"""When the trainer starts a run: a pure function of counters and clocks."""

from __future__ import annotations

import pytest

from services.trainer.schedule import RetrainPolicy

POLICY = RetrainPolicy(
    min_interactions=100, retrain_threshold=50, quiet_seconds=10.0, interval_seconds=600.0
)
NOW = 10_000.0


def _reason(
    policy: RetrainPolicy = POLICY,
    *,
    total: int = 1_000,
    new_since_last: int = 1_000,
    last_input_at: float = NOW - 60.0,
    last_trained_at: float | None = None,
    requested: bool = False,
) -> str | None:
    return policy.reason(
        now=NOW,
        total=total,
        new_since_last=new_since_last,
        last_input_at=last_input_at,
        last_trained_at=last_trained_at,
        requested=requested,
    )


@pytest.mark.parametrize("last_trained_at", [None, NOW - 5.0, NOW - 10_000.0])
def test_no_new_data_never_trains(last_trained_at: float | None) -> None:
    assert _reason(total=1_000, new_since_last=0, last_trained_at=last_trained_at) is None


@pytest.mark.parametrize(
    ("total", "quiet_for", "expected"),
    [
        (100, 10.0, "first model"),  # both thresholds met exactly
        (5_000, 60.0, "first model"),
        (99, 60.0, None),  # quiet but too little data
        (5_000, 9.9, None),  # enough data but input still arriving
        (99, 0.0, None),
    ],
)
def test_first_model_needs_min_interactions_and_quiet(
    total: int, quiet_for: float, expected: str | None
) -> None:
    reason = _reason(
        total=total, new_since_last=total, last_input_at=NOW - quiet_for, last_trained_at=None
    )
    assert reason == expected


def test_first_model_ignores_interval() -> None:
    # No model yet: the interval has nothing to count from, so busy input still waits.
    assert _reason(total=5_000, last_input_at=NOW, last_trained_at=None) is None


@pytest.mark.parametrize(
    ("new", "quiet_for", "expected"),
    [
        (50, 10.0, "new interactions"),
        (500, 60.0, "new interactions"),
        (49, 60.0, None),  # below the retrain threshold
        (500, 1.0, None),  # above it, but input is still arriving
    ],
)
def test_retrain_threshold(new: int, quiet_for: float, expected: str | None) -> None:
    reason = _reason(
        total=10_000, new_since_last=new, last_input_at=NOW - quiet_for, last_trained_at=NOW - 60.0
    )
    assert reason == expected


@pytest.mark.parametrize(
    ("trained_ago", "expected"),
    [(600.0, "interval"), (3_600.0, "interval"), (599.0, None)],
)
def test_interval_retrains_with_few_new_interactions_even_when_busy(
    trained_ago: float, expected: str | None
) -> None:
    reason = _reason(
        total=10_000, new_since_last=1, last_input_at=NOW, last_trained_at=NOW - trained_ago
    )
    assert reason == expected


def test_interval_needs_new_data() -> None:
    assert _reason(new_since_last=0, last_trained_at=NOW - 10_000.0) is None


def test_interval_zero_disables_it() -> None:
    policy = RetrainPolicy(
        min_interactions=100, retrain_threshold=50, quiet_seconds=10.0, interval_seconds=0.0
    )
    reason = _reason(
        policy, total=10_000, new_since_last=1, last_input_at=NOW, last_trained_at=NOW - 1e6
    )
    assert reason is None


def test_interval_takes_precedence_over_threshold() -> None:
    reason = _reason(new_since_last=500, last_input_at=NOW - 60.0, last_trained_at=NOW - 700.0)
    assert reason == "interval"


@pytest.mark.parametrize(
    ("new", "total", "last_trained_at"),
    [(0, 0, None), (0, 10, NOW - 1.0), (1, 1, None), (5, 10_000, NOW)],
)
def test_requested_always_trains(new: int, total: int, last_trained_at: float | None) -> None:
    reason = _reason(
        total=total,
        new_since_last=new,
        last_input_at=NOW,
        last_trained_at=last_trained_at,
        requested=True,
    )
    assert reason == "requested"
