"""When to train: a pure policy over counters and clocks, so it is tested without waiting."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RetrainPolicy:
    min_interactions: int
    retrain_threshold: int
    quiet_seconds: float
    interval_seconds: float

    def reason(
        self,
        *,
        now: float,
        total: int,
        new_since_last: int,
        last_input_at: float,
        last_trained_at: float | None,
        requested: bool = False,
    ) -> str | None:
        """Why a training run should start now, or None."""
        if requested:
            return "requested"
        if new_since_last == 0:
            return None
        if (
            last_trained_at is not None
            and self.interval_seconds > 0
            and now - last_trained_at >= self.interval_seconds
        ):
            return "interval"
        quiet = now - last_input_at >= self.quiet_seconds
        if last_trained_at is None:
            return "first model" if total >= self.min_interactions and quiet else None
        if new_since_last >= self.retrain_threshold and quiet:
            return "new interactions"
        return None
