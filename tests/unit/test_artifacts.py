"""The versioned artifact store: atomic commits, numeric versions, checksums, no pickle."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from recsys.artifacts import (
    ITEM_VECTORS_FILE,
    REQUIRED_FILES,
    ArtifactIntegrityError,
    ArtifactStore,
    Manifest,
    VersionDraft,
    VersionNotFoundError,
    version_number,
)

IDS = ["a", "b", "c"]


def fields(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "encoder_name": "all-MiniLM-L6-v2",
        "max_seq_len": 50,
        "metrics": {"test_masked_ndcg@10": 0.1},
        "hyperparameters": {"half_life": 10.0},
        "data_range": {"first_timestamp": 1.0, "last_timestamp": 2.0, "interactions": 5},
    }
    return base | overrides


def fill(draft: VersionDraft, seed: int = 0) -> np.ndarray:
    vectors = np.random.default_rng(seed).normal(size=(3, 4)).astype(np.float32)
    draft.user_encoder_path.write_bytes(b"not really onnx, the store does not parse it")
    draft.item_encoder_path.write_bytes(b"not really onnx either")
    draft.write_items(IDS, vectors, [{"item_id": i, "title": i.upper()} for i in IDS])
    draft.write_popularity(["b", "a"], [7, 3])
    return vectors


def commit(store: ArtifactStore, seed: int = 0, **overrides: Any) -> Manifest:
    with store.create_version() as draft:
        fill(draft, seed)
        return draft.commit(fields(**overrides))


def test_commit_is_atomic_and_loadable(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path, "recsys")
    assert store.latest() is None and store.list_versions() == []
    with store.create_version() as draft:
        vectors = fill(draft)
        assert store.list_versions() == []  # nothing visible while writing
        assert draft.path.parent == store.model_dir and draft.path.name.startswith(".")
        manifest = draft.commit(fields())
    assert manifest.version == "v1" and manifest.item_count == 3 and manifest.vector_size == 4
    assert sorted(manifest.files) == sorted(REQUIRED_FILES)
    assert sorted(p.name for p in store.model_dir.iterdir()) == ["v1"]  # draft renamed away
    loaded = store.load("v1")
    np.testing.assert_array_equal(loaded.item_vectors, vectors)
    assert loaded.item_ids == IDS and loaded.item_payloads[1] == {"item_id": "b", "title": "B"}
    assert loaded.popularity.item_ids == ["b", "a"] and loaded.popularity.counts == [7, 3]
    assert loaded.onnx_path == tmp_path / "recsys" / "v1" / "user_encoder.onnx"
    on_disk = json.loads((loaded.path / "manifest.json").read_text())
    assert Manifest.model_validate(on_disk) == manifest == store.latest()


def test_failed_write_leaves_nothing_behind(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path, "recsys")
    with pytest.raises(RuntimeError, match="boom"), store.create_version() as draft:
        fill(draft)
        raise RuntimeError("boom")
    assert list(store.model_dir.iterdir()) == []
    with store.create_version() as draft:
        draft.write_popularity([], [])
        with pytest.raises(ValueError, match="missing"):
            draft.commit(fields())
    assert store.list_versions() == []


def test_versions_are_numbered_numerically(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path, "recsys")
    for seed in range(11):
        commit(store, seed)
    versions = [m.version for m in store.list_versions()]
    assert versions == [f"v{i}" for i in range(1, 12)]  # v10 after v9, not after v1
    assert store.next_version() == "v12"
    latest = store.latest()
    assert latest is not None and latest.version == "v11"
    assert version_number("v10") == 10
    with pytest.raises(ValueError):
        version_number("v01")


def test_version_number_is_taken_at_commit_time(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path, "recsys")
    first, second = store.create_version(), store.create_version()
    fill(first)
    fill(second, seed=1)
    assert second.commit(fields()).version == "v1"
    assert first.commit(fields()).version == "v2"


def test_status_filters_latest(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path, "recsys")
    commit(store)
    commit(store, status="candidate")
    promoted, anything = store.latest(), store.latest(status=None)
    assert promoted is not None and promoted.version == "v1"
    assert anything is not None and anything.version == "v2"
    store.set_status("v2", "promoted")
    assert store.load().version == "v2"  # status lives outside the checksummed files
    store.set_status("v2", "rejected")
    assert store.load().version == "v1"


def test_checksum_mismatch_is_refused_naming_the_file(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path, "recsys")
    commit(store)
    path = store.path("v1") / ITEM_VECTORS_FILE
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ArtifactIntegrityError, match=r"item_vectors\.npy"):
        store.load("v1")
    path.unlink()
    with pytest.raises(ArtifactIntegrityError, match=r"item_vectors\.npy is missing"):
        store.load("v1")
    with pytest.raises(VersionNotFoundError):
        store.load("v2")


def test_only_npy_and_json_no_pickle(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path, "recsys")
    commit(store)
    folder = store.path("v1")
    assert {p.suffix for p in folder.iterdir()} == {".json", ".npy", ".onnx"}
    vectors = np.load(folder / ITEM_VECTORS_FILE, allow_pickle=False)
    assert vectors.dtype == np.float32 and vectors.shape == (3, 4)
    for file in folder.iterdir():
        assert not file.read_bytes().startswith(b"\x80")  # pickle protocol marker
    with store.create_version() as draft:
        with pytest.raises(ValueError):
            draft.write_items(["x"], np.array([[object()]], dtype=object), [{}])
        with pytest.raises(ValueError, match="NaN"):
            draft.write_items(["x"], np.array([[np.nan]]), [{}])


def test_manifest_must_agree_with_files(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path, "recsys")
    with store.create_version() as draft:
        fill(draft)
        with pytest.raises(ValueError, match="item_count"):
            draft.commit(fields(item_count=99))
        with pytest.raises(ValueError, match="set by the store"):
            draft.commit(fields(version="v7"))
        with pytest.raises(ValueError, match="not unique"):
            draft.write_items(["a", "a"], np.zeros((2, 4)), [{}, {}])
    assert store.list_versions() == []


def test_stale_drafts_are_removed(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path, "recsys")
    store.create_version()  # a trainer that crashed mid-write
    commit(store)
    assert store.remove_stale_drafts(older_than_s=-1) == 1
    assert [p.name for p in store.model_dir.iterdir()] == ["v1"]
