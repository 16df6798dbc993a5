"""Garbage-collector pauses are measured, and start-up objects are kept out of them."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest
from prometheus_client import REGISTRY

from recsys.lifecycle import freeze_startup_heap
from recsys.observability import track_gc_pauses


@pytest.fixture
def restore_gc() -> Iterator[None]:
    callbacks = list(gc.callbacks)
    yield
    gc.unfreeze()
    gc.callbacks[:] = callbacks


def full_collections() -> float:
    value = REGISTRY.get_sample_value("recsys_gc_pause_seconds_count", {"generation": "2"})
    return value or 0.0


def test_full_collections_are_observed_once_each(restore_gc: None) -> None:
    track_gc_pauses()
    track_gc_pauses()  # idempotent: one observation per collection, not two
    before = full_collections()
    gc.collect()
    gc.collect()
    assert full_collections() == before + 2


def test_frozen_start_up_objects_are_not_walked_again(restore_gc: None) -> None:
    survivor = [object() for _ in range(1000)]
    freeze_startup_heap()
    assert gc.get_freeze_count() >= len(survivor)
    assert not any(obj is survivor for obj in gc.get_objects(generation=2))
