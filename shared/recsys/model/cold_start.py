"""The cold-start split: items whose interactions are held out of training entirely.

A share of the catalogue, drawn at random with a seed, becomes "cold": every interaction
with a cold item is removed from every user's sequence, except a user's *test target*
(the last interaction), which stays. So nothing a model trains or validates on mentions a
cold item, and the test cases whose target is cold measure how well a model ranks items
it has never seen an interaction with (only their text). The catalogue (columns) is
unchanged, so a model still ranks every item, cold ones included.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from recsys.evaluation import MIN_INTERACTIONS, Split


@dataclass(frozen=True)
class ColdStartSplit:
    """``split`` is the training split; ``cold_items`` the held-out item indices."""

    split: Split
    cold_items: np.ndarray

    def cold_users(self) -> np.ndarray:
        """Users evaluated at test time whose test target is a cold item."""
        cold = np.zeros(self.split.n_items, dtype=bool)
        cold[self.cold_items] = True
        return np.array(
            [u for u in self.split.users("test") if cold[self.split.target(int(u), "test")]],
            dtype=np.int64,
        )

    def cold_test_split(self) -> Split:
        """The split restricted to the cold-target users (evaluate it at stage "test")."""
        return subset_users(self.split, self.cold_users())


def subset_users(split: Split, users: np.ndarray) -> Split:
    """The same catalogue and sequences, for the given users only (in that order)."""
    return Split(
        user_ids=[split.user_ids[int(u)] for u in users],
        item_ids=list(split.item_ids),
        sequences=[split.sequences[int(u)] for u in users],
        positions=[split.positions[int(u)] for u in users],
    )


def cold_start_split(split: Split, fraction: float = 0.1, seed: int = 0) -> ColdStartSplit:
    """Draw ``round(fraction * n_items)`` cold items and remove their interactions.

    Each user keeps the test target even when it is cold; everything else involving a
    cold item goes, so the validation target and the training part never hold one.
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"fraction must be in (0, 1), got {fraction}")
    rng = np.random.default_rng(seed)
    n_cold = max(1, round(fraction * split.n_items))
    cold_items = np.sort(rng.choice(split.n_items, size=n_cold, replace=False)).astype(np.int64)
    cold = np.zeros(split.n_items, dtype=bool)
    cold[cold_items] = True
    sequences: list[np.ndarray] = []
    positions: list[np.ndarray] = []
    for items, where in zip(split.sequences, split.positions, strict=True):
        keep = ~cold[items]
        if len(items) >= MIN_INTERACTIONS:
            keep[-1] = True  # the test target stays, cold or not
        sequences.append(items[keep])
        positions.append(where[keep])
    return ColdStartSplit(
        split=Split(
            user_ids=list(split.user_ids),
            item_ids=list(split.item_ids),
            sequences=sequences,
            positions=positions,
        ),
        cold_items=cold_items,
    )
