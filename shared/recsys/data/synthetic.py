"""A synthetic catalogue and interaction stream with the real event schema, for scale.

Items belong to genres and carry text built from genre vocabulary, so the text tower has
something to learn from; each user prefers a few genres. Deterministic for a seed.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from recsys.events import EVENT_TYPES, InteractionEvent, ItemEvent

GENRES: dict[str, tuple[str, ...]] = {
    "space": ("starship", "galaxy", "orbit", "nebula", "comet", "rocket", "planet", "alien"),
    "cooking": ("kitchen", "recipe", "baking", "pasta", "soup", "bread", "spices", "dessert"),
    "horror": ("haunted", "zombie", "ghost", "vampire", "crypt", "nightmare", "curse"),
    "sports": ("football", "tennis", "marathon", "boxing", "cycling", "hockey", "golf"),
    "romance": ("wedding", "love", "heart", "kiss", "letters", "summer", "paris"),
    "history": ("empire", "war", "kingdom", "revolution", "ancient", "castle", "dynasty"),
    "music": ("guitar", "concert", "jazz", "piano", "band", "opera", "rhythm"),
    "nature": ("forest", "ocean", "mountain", "river", "wildlife", "desert", "island"),
}
# Browsing is common, buying rare: view, click, add_to_cart, purchase.
EVENT_MIX = {"view": 0.7, "click": 0.2, "add_to_cart": 0.07, "purchase": 0.03}


@dataclass(frozen=True)
class SyntheticCatalogue:
    items: list[ItemEvent]
    genre_of: np.ndarray  # genre index per item


def catalogue(n_items: int, seed: int = 7) -> SyntheticCatalogue:
    rng = np.random.default_rng(seed)
    names = list(GENRES)
    genre_of = rng.integers(0, len(names), size=n_items)
    items = []
    for i, g in enumerate(genre_of):
        words = rng.choice(GENRES[names[g]], size=2, replace=False)
        items.append(
            ItemEvent(
                event_id=f"syn-item-{i}",
                item_id=f"item-{i}",
                timestamp=1.0,
                title=f"{words[0].title()} {words[1]} {i}",
                categories=[names[g]],
                description=f"A {names[g]} story about {words[0]} and {words[1]}.",
            )
        )
    return SyntheticCatalogue(items, genre_of)


def interactions(
    cat: SyntheticCatalogue,
    n_users: int,
    n_events: int,
    *,
    start: float,
    seed: int = 11,
    id_prefix: str = "syn",
) -> Iterator[InteractionEvent]:
    """``n_events`` events from ``n_users`` users, each mostly within a favourite genre."""
    rng = np.random.default_rng(seed)
    n_genres = len(GENRES)
    by_genre = [np.flatnonzero(cat.genre_of == g) for g in range(n_genres)]
    favourite = rng.integers(0, n_genres, size=n_users)
    users = rng.integers(0, n_users, size=n_events)
    on_genre = rng.random(n_events) < 0.8
    kinds = rng.choice(list(EVENT_MIX), size=n_events, p=list(EVENT_MIX.values()))
    for n in range(n_events):
        u = int(users[n])
        genre = int(favourite[u]) if on_genre[n] else int(rng.integers(0, n_genres))
        pool = by_genre[genre] if len(by_genre[genre]) else np.arange(len(cat.items))
        item = int(pool[rng.integers(0, len(pool))])
        event_type = str(kinds[n])
        assert event_type in EVENT_TYPES
        yield InteractionEvent(
            event_id=f"{id_prefix}-{n}",
            user_id=f"user-{u}",
            item_id=f"item-{item}",
            event_type=event_type,  # type: ignore[arg-type]
            timestamp=start + n * 1e-3,
        )
