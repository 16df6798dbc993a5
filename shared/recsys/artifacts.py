"""The versioned artifact store: what the trainer writes and every other service reads.

Layout (one immutable folder per version; only ONNX, ``.npy`` and JSON, never pickle)::

    <root>/<model_name>/
        v1/
            manifest.json        Manifest: metrics, hyperparameters, sha256 of every file
            user_encoder.onnx    the user tower (see recsys.model.user_encoder)
            item_encoder.onnx    text vector -> item vector, for items known by text only
            item_vectors.npy     float32 [item_count, vector_size]
            item_ids.json        ["id", ...], row order of item_vectors.npy
            item_payloads.json   [{...}, ...], same order
            popularity.json      {"item_ids": [most popular first], "counts": [...]}
            model.safetensors    optional: the torch weights, for warm-starting the next version
        v2/ ...
        .draft-<uuid>/           a version being written (never read)

A version becomes visible only by one ``rename`` of its complete draft folder, so readers
never see a half-written version. The version number is taken at commit time and the
rename fails if another trainer took it first, in which case the next number is used.

Lifecycle: a version is committed as a ``candidate``, then ``promoted`` (announced on
``model-updates``: serve it) or ``rejected`` (kept, never announced by the trainer), with
the reason and the gate's figures in its manifest. The manifest is the only file that
changes after the commit, and it is not checksummed. The *serving* version is the promoted
one promoted most recently, matching the topic's rule that the last announcement wins.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import time
import uuid
from collections.abc import Mapping, Sequence
from functools import cached_property
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

log = logging.getLogger(__name__)

MANIFEST_FILE = "manifest.json"
USER_ENCODER_FILE = "user_encoder.onnx"
ITEM_ENCODER_FILE = "item_encoder.onnx"
ITEM_VECTORS_FILE = "item_vectors.npy"
ITEM_IDS_FILE = "item_ids.json"
ITEM_PAYLOADS_FILE = "item_payloads.json"
POPULARITY_FILE = "popularity.json"
WEIGHTS_FILE = "model.safetensors"  # optional; versions before warm start have none
REQUIRED_FILES = (
    USER_ENCODER_FILE,
    ITEM_ENCODER_FILE,
    ITEM_VECTORS_FILE,
    ITEM_IDS_FILE,
    ITEM_PAYLOADS_FILE,
    POPULARITY_FILE,
)
DRAFT_PREFIX = ".draft-"
_VERSION_RE = re.compile(r"^v([1-9][0-9]*)$")
_CHUNK = 1 << 20

Status = Literal["candidate", "promoted", "rejected"]


class ArtifactIntegrityError(RuntimeError):
    """A version's files do not match its manifest (corrupt, truncated or tampered with)."""


class VersionNotFoundError(LookupError):
    """No such version in the store."""


class DataRange(BaseModel):
    """What the version was trained on, for audits and for deciding when to retrain."""

    model_config = ConfigDict(extra="ignore")

    first_timestamp: float | None = None
    last_timestamp: float | None = None
    interactions: int = Field(0, ge=0)
    users: int = Field(0, ge=0)
    items: int = Field(0, ge=0, description="distinct items with at least one interaction")


class GateRecord(BaseModel):
    """The promotion gate's figures: both models on one validation split of one snapshot."""

    model_config = ConfigDict(extra="ignore")

    metric: str = "valid_masked_ndcg@10"
    candidate: float
    serving: float | None = Field(None, description="None when nothing was serving")
    serving_version: str | None = None
    tolerance: float = Field(ge=0)
    users: int = Field(0, ge=0, description="users evaluated")
    decided_at: float
    paired_gain: float | None = Field(
        None, description="candidate / serving - 1 on the metric, over the same users"
    )
    paired_ci95: list[float] | None = Field(
        None, description="95% paired bootstrap interval of paired_gain (users resampled)"
    )


class Manifest(BaseModel):
    """Describes one version; ``files`` maps every file name to its sha256 hex digest."""

    model_config = ConfigDict(extra="ignore", protected_namespaces=())

    model_name: str = Field(min_length=1)
    version: str = Field(pattern=_VERSION_RE.pattern)
    created_at: float = Field(description="seconds since the epoch, UTC")
    encoder_name: str
    vector_size: int = Field(ge=1)
    max_seq_len: int = Field(ge=1)
    item_count: int = Field(ge=0)
    metrics: dict[str, float] = Field(default_factory=dict)
    hyperparameters: dict[str, Any] = Field(default_factory=dict)
    data_range: DataRange = Field(default_factory=DataRange)
    files: dict[str, str] = Field(default_factory=dict)
    # Manifests written before the gate existed have none of the fields below; they were
    # all served, hence the defaults.
    status: Status = "promoted"
    status_reason: str = ""
    status_changed_at: float | None = None
    promoted_at: float | None = Field(None, description="when it was last announced")
    gate: GateRecord | None = None

    @property
    def number(self) -> int:
        return version_number(self.version)

    @property
    def serving_order(self) -> tuple[float, int]:
        """Later promotion sorts later; old manifests count as promoted when created."""
        return (self.promoted_at or self.created_at, self.number)


def version_number(version: str) -> int:
    """``"v12"`` -> 12; raises ValueError for anything that is not a version name."""
    match = _VERSION_RE.match(version)
    if match is None:
        raise ValueError(f"not a version name: {version!r} (expected v1, v2, ...)")
    return int(match.group(1))


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_json_atomic(path: Path, obj: Any) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(obj, fh, ensure_ascii=False, allow_nan=False)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


class ArtifactStore:
    """Versioned, checksummed model artifacts under ``<root>/<model_name>/``."""

    def __init__(self, root: Path, model_name: str) -> None:
        if not model_name or "/" in model_name or model_name.startswith("."):
            raise ValueError(f"invalid model name {model_name!r}")
        self.root = Path(root)
        self.model_name = model_name
        self.model_dir = self.root / model_name

    def _version_names(self) -> list[str]:
        if not self.model_dir.is_dir():
            return []
        names = [p.name for p in self.model_dir.iterdir() if _VERSION_RE.match(p.name)]
        return sorted(names, key=version_number)

    def next_version(self) -> str:
        names = self._version_names()
        return f"v{version_number(names[-1]) + 1 if names else 1}"

    def path(self, version: str) -> Path:
        version_number(version)
        return self.model_dir / version

    def create_version(self) -> VersionDraft:
        """Start writing a new version into a private temporary folder."""
        self.model_dir.mkdir(parents=True, exist_ok=True)
        folder = self.model_dir / f"{DRAFT_PREFIX}{uuid.uuid4().hex}"
        folder.mkdir()
        return VersionDraft(self, folder)

    def manifest(self, version: str) -> Manifest:
        path = self.path(version) / MANIFEST_FILE
        if not path.is_file():
            raise VersionNotFoundError(f"{self.model_name} has no version {version}")
        return Manifest.model_validate_json(path.read_bytes())

    def list_versions(self) -> list[Manifest]:
        """Every readable version, oldest first (numeric order: v2 before v10)."""
        manifests = []
        for name in self._version_names():
            try:
                manifests.append(self.manifest(name))
            except (VersionNotFoundError, ValidationError, OSError) as exc:
                log.warning(
                    "skipping unreadable version",
                    extra={"model": self.model_name, "version": name, "error": str(exc)},
                )
        return manifests

    def latest(self, status: Status | None = "promoted") -> Manifest | None:
        """The highest-numbered version with ``status``, or of any status if None."""
        for manifest in reversed(self.list_versions()):
            if status is None or manifest.status == status:
                return manifest
        return None

    def serving(self, manifests: Sequence[Manifest] | None = None) -> Manifest | None:
        """The version to serve: the promoted one promoted (announced) most recently.

        Not simply the newest promoted: a rollback re-announces an older version.
        """
        candidates = self.list_versions() if manifests is None else manifests
        promoted = [m for m in candidates if m.status == "promoted"]
        return max(promoted, key=lambda m: m.serving_order, default=None)

    def load(self, version: str | None = None) -> LoadedVersion:
        """Open a version (default: the serving one) after verifying every file's sha256."""
        if version is None:
            serving = self.serving()
            if serving is None:
                raise VersionNotFoundError(f"{self.model_name} has no promoted version")
            version = serving.version
        manifest = self.manifest(version)
        folder = self.path(version)
        missing = [name for name in REQUIRED_FILES if name not in manifest.files]
        if missing:
            raise ArtifactIntegrityError(f"{folder}: manifest lists no checksum for {missing}")
        for name, expected in manifest.files.items():
            file = folder / name
            if Path(name).name != name or not file.is_file():
                raise ArtifactIntegrityError(f"{folder}: file {name} is missing")
            actual = sha256_file(file)
            if actual != expected:
                raise ArtifactIntegrityError(
                    f"{folder}: checksum mismatch for {name} (manifest {expected[:12]}..., "
                    f"file {actual[:12]}...)"
                )
        return LoadedVersion(manifest, folder)

    def set_status(
        self,
        version: str,
        status: Status,
        reason: str = "",
        gate: GateRecord | None = None,
    ) -> Manifest:
        """Record a lifecycle step; only the manifest changes (it is not checksummed).

        Promoting stamps ``promoted_at``, which makes the version the serving one; ``gate``
        replaces the recorded gate figures when given, otherwise they are kept.
        """
        now = time.time()
        update: dict[str, Any] = {
            "status": status,
            "status_reason": reason,
            "status_changed_at": now,
        }
        if status == "promoted":
            update["promoted_at"] = now
        if gate is not None:
            update["gate"] = gate
        manifest = self.manifest(version).model_copy(update=update)
        _write_json_atomic(self.path(version) / MANIFEST_FILE, manifest.model_dump(mode="json"))
        log.info(
            "version status set",
            extra={
                "model": self.model_name,
                "version": version,
                "status": status,
                "reason": reason,
            },
        )
        return manifest

    def remove_stale_drafts(self, older_than_s: float = 3600.0) -> int:
        """Delete drafts left by crashed trainers; returns how many were removed."""
        if not self.model_dir.is_dir():
            return 0
        removed = 0
        cutoff = time.time() - older_than_s
        for folder in self.model_dir.iterdir():
            if folder.name.startswith(DRAFT_PREFIX) and folder.stat().st_mtime < cutoff:
                shutil.rmtree(folder, ignore_errors=True)
                removed += 1
        return removed


class VersionDraft:
    """A version being written. Nothing is visible to readers until :meth:`commit`.

    Use as a context manager: leaving the block without committing deletes the draft.
    """

    def __init__(self, store: ArtifactStore, folder: Path) -> None:
        self.store = store
        self.path = folder
        self._done = False

    @property
    def user_encoder_path(self) -> Path:
        """Where the exporter should write the ONNX user tower."""
        return self.path / USER_ENCODER_FILE

    @property
    def item_encoder_path(self) -> Path:
        return self.path / ITEM_ENCODER_FILE

    def write_items(
        self,
        item_ids: Sequence[str],
        item_vectors: np.ndarray,
        item_payloads: Sequence[Mapping[str, Any]],
    ) -> None:
        raw = np.asarray(item_vectors)
        if not (np.issubdtype(raw.dtype, np.floating) or np.issubdtype(raw.dtype, np.integer)):
            raise ValueError(f"item vectors must be numeric, got dtype {raw.dtype}")
        vectors = np.ascontiguousarray(raw, dtype=np.float32)
        if vectors.ndim != 2 or not vectors.shape[0] == len(item_ids) == len(item_payloads):
            raise ValueError(
                f"{len(item_ids)} ids, {len(item_payloads)} payloads, vectors {vectors.shape}"
            )
        if len(set(item_ids)) != len(item_ids):
            raise ValueError("item ids are not unique")
        if not np.isfinite(vectors).all():
            raise ValueError("item vectors contain NaN or infinite values")
        with open(self.path / ITEM_VECTORS_FILE, "wb") as fh:
            np.save(fh, vectors, allow_pickle=False)
        self.write_json(ITEM_IDS_FILE, [str(i) for i in item_ids])
        self.write_json(ITEM_PAYLOADS_FILE, [dict(p) for p in item_payloads])

    def write_popularity(self, item_ids: Sequence[str], counts: Sequence[int]) -> None:
        if len(item_ids) != len(counts):
            raise ValueError(f"{len(item_ids)} ids but {len(counts)} counts")
        self.write_json(
            POPULARITY_FILE, {"item_ids": list(item_ids), "counts": [int(c) for c in counts]}
        )

    def write_weights(
        self, tensors: Mapping[str, np.ndarray], metadata: Mapping[str, str] | None = None
    ) -> None:
        """The model's weights as safetensors (plain tensors and string metadata, no code)."""
        from safetensors.numpy import save_file

        arrays = {name: np.ascontiguousarray(array) for name, array in tensors.items()}
        save_file(arrays, self.path / WEIGHTS_FILE, dict(metadata or {}))

    def write_json(self, name: str, obj: Any) -> None:
        with open(self.path / name, "w", encoding="utf-8") as fh:
            json.dump(obj, fh, ensure_ascii=False, allow_nan=False)

    def commit(self, manifest_fields: Mapping[str, Any]) -> Manifest:
        """Checksum every file, write the manifest and move the draft into place.

        ``manifest_fields`` holds the Manifest fields other than model_name, version,
        files (computed here) and created_at (defaults to now); item_count and vector_size
        default to the shape of item_vectors.npy and must agree with it when given.
        """
        if self._done:
            raise RuntimeError("draft already committed or aborted")
        missing = [name for name in REQUIRED_FILES if not (self.path / name).is_file()]
        if missing:
            raise ValueError(f"cannot commit: missing {missing}")
        vectors = np.load(self.path / ITEM_VECTORS_FILE, mmap_mode="r", allow_pickle=False)
        fields = dict(manifest_fields)
        for key in ("model_name", "version", "files"):
            if key in fields:
                raise ValueError(f"{key} is set by the store, not by the caller")
        shape = {"item_count": int(vectors.shape[0]), "vector_size": int(vectors.shape[1])}
        del vectors
        for key, value in shape.items():
            if fields.setdefault(key, value) != value:
                raise ValueError(f"{key}={fields[key]} but item_vectors.npy has {value}")
        fields.setdefault("created_at", time.time())
        files = {}
        for file in sorted(self.path.iterdir()):
            if file.name == MANIFEST_FILE:
                continue
            if not file.is_file():
                raise ValueError(f"cannot commit: {file.name} is not a plain file")
            with open(file, "rb") as fh:
                os.fsync(fh.fileno())
            files[file.name] = sha256_file(file)
        while True:
            version = self.store.next_version()
            manifest = Manifest(
                model_name=self.store.model_name, version=version, files=files, **fields
            )
            _write_json_atomic(self.path / MANIFEST_FILE, manifest.model_dump(mode="json"))
            _fsync_dir(self.path)
            try:
                # rename onto an existing non-empty folder fails: a concurrent trainer won
                os.rename(self.path, self.store.path(version))
            except OSError:
                if self.store.path(version).exists():
                    continue
                raise
            break
        _fsync_dir(self.store.model_dir)
        self._done = True
        self.path = self.store.path(version)
        log.info(
            "artifact version committed",
            extra={"model": manifest.model_name, "version": version, "path": str(self.path)},
        )
        return manifest

    def abort(self) -> None:
        if not self._done:
            shutil.rmtree(self.path, ignore_errors=True)
            self._done = True

    def __enter__(self) -> VersionDraft:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.abort()


class Popularity(BaseModel):
    item_ids: list[str]
    counts: list[int]


class LoadedVersion:
    """A verified version; files are read on first access and kept."""

    def __init__(self, manifest: Manifest, path: Path) -> None:
        self.manifest = manifest
        self.path = path

    @property
    def version(self) -> str:
        return self.manifest.version

    @property
    def onnx_path(self) -> Path:
        return self.path / USER_ENCODER_FILE

    @property
    def item_encoder_path(self) -> Path:
        return self.path / ITEM_ENCODER_FILE

    @cached_property
    def item_vectors(self) -> np.ndarray:
        vectors: np.ndarray = np.load(self.path / ITEM_VECTORS_FILE, allow_pickle=False)
        return vectors

    @cached_property
    def item_ids(self) -> list[str]:
        ids = json.loads((self.path / ITEM_IDS_FILE).read_text(encoding="utf-8"))
        return [str(i) for i in ids]

    @cached_property
    def item_payloads(self) -> list[dict[str, Any]]:
        payloads: list[dict[str, Any]] = json.loads(
            (self.path / ITEM_PAYLOADS_FILE).read_text(encoding="utf-8")
        )
        return payloads

    @cached_property
    def popularity(self) -> Popularity:
        return Popularity.model_validate_json((self.path / POPULARITY_FILE).read_bytes())

    @property
    def has_weights(self) -> bool:
        return WEIGHTS_FILE in self.manifest.files

    def weights(self) -> dict[str, np.ndarray] | None:
        """The saved torch weights by parameter name, or None if the version has none."""
        if not self.has_weights:
            return None
        from safetensors.numpy import load_file

        return load_file(self.path / WEIGHTS_FILE)
