"""The user-tower contract: the ONNX export matches torch, padding is inert, CPU fallback."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from recsys.events import EVENT_TYPE_IDS
from recsys.model.onnx_runtime import (
    CPU_PROVIDER,
    CUDA_PROVIDER,
    OnnxItemEncoder,
    OnnxUserEncoder,
    SessionRunner,
    TextItemEncoder,
    _export,
    choose_providers,
    export_item_encoder,
    export_user_encoder,
    length_buckets,
    pad_left,
)
from recsys.model.user_encoder import (
    INPUT_EVENT_TYPES,
    INPUT_ITEM_VECTORS,
    OUTPUT_USER_VECTOR,
    RecencyWeightedMean,
    type_weight_vector,
)

INPUT_NAMES = [INPUT_ITEM_VECTORS, INPUT_EVENT_TYPES]
MAX_LEN = 12
DIM = 16
WEIGHTS = type_weight_vector(
    {"view": 1.0, "click": 2.0, "add_to_cart": 3.0, "purchase": 5.0, "rating": 1.0}
)


@pytest.fixture(scope="module")
def module() -> RecencyWeightedMean:
    return RecencyWeightedMean(half_life=4.0, type_weights=WEIGHTS)


@pytest.fixture(scope="module")
def onnx_path(module: RecencyWeightedMean, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_user_encoder(module, tmp_path_factory.mktemp("onnx") / "u.onnx", MAX_LEN, DIM)


@pytest.fixture(scope="module")
def session(onnx_path: Path) -> OnnxUserEncoder:
    return OnnxUserEncoder(onnx_path, prefer_cuda=False)


def random_batch(batch: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Left-padded sequences of random lengths (0 .. MAX_LEN), random event types."""
    rng = np.random.default_rng(seed)
    vectors = rng.normal(size=(batch, MAX_LEN, DIM)).astype(np.float32)
    types = rng.integers(1, len(WEIGHTS), size=(batch, MAX_LEN)).astype(np.int64)
    lengths = rng.integers(0, MAX_LEN + 1, size=batch)
    for row, length in enumerate(lengths):
        types[row, : MAX_LEN - length] = 0
        vectors[row, : MAX_LEN - length] = 0.0
    return vectors, types


def torch_encode(module: RecencyWeightedMean, vectors: np.ndarray, types: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        out: np.ndarray = module(torch.from_numpy(vectors), torch.from_numpy(types)).numpy()
    return out


def test_exported_file_is_self_contained_and_follows_the_contract(
    onnx_path: Path, session: OnnxUserEncoder
) -> None:
    assert sorted(p.name for p in onnx_path.parent.iterdir()) == ["u.onnx"]
    assert (session.max_len, session.dim) == (MAX_LEN, DIM)


@pytest.mark.parametrize("batch", [1, 7, 64])
def test_onnx_matches_torch(
    module: RecencyWeightedMean, session: OnnxUserEncoder, batch: int
) -> None:
    vectors, types = random_batch(batch, seed=batch)
    expected = torch_encode(module, vectors, types)
    got = session.encode(vectors, types)
    assert got.shape == (batch, DIM) and got.dtype == np.float32
    np.testing.assert_allclose(got, expected, atol=1e-5)
    norms = np.linalg.norm(got, axis=1)
    valid = (types != 0).any(axis=1)
    np.testing.assert_allclose(norms[valid], 1.0, atol=1e-5)


def test_weights_follow_event_type_and_recency(session: OnnxUserEncoder) -> None:
    a, b, c = np.eye(DIM, dtype=np.float32)[:3]
    # oldest -> newest: view a, purchase b, click c. half_life 4: ages 2, 1, 0
    vectors, types = pad_left(
        [(np.stack([a, b, c]), [EVENT_TYPE_IDS["view"], EVENT_TYPE_IDS["purchase"], 2])],
        MAX_LEN,
        DIM,
    )
    expected = 1.0 * 0.5 ** (2 / 4) * a + 5.0 * 0.5 ** (1 / 4) * b + 2.0 * c
    expected /= np.linalg.norm(expected)
    np.testing.assert_allclose(session.encode(vectors, types)[0], expected, atol=1e-6)


def test_padding_neither_counts_nor_ages(module: RecencyWeightedMean) -> None:
    rng = np.random.default_rng(0)
    items = rng.normal(size=(3, DIM)).astype(np.float32)
    types = [1, 4, 2]
    short = torch_encode(module, *pad_left([(items, types)], 3, DIM))
    long_vectors, long_types = pad_left([(items, types)], MAX_LEN, DIM)
    long_vectors[0, :-3] = 1e6  # garbage under padding must not leak in
    np.testing.assert_allclose(torch_encode(module, long_vectors, long_types), short, atol=1e-6)


def test_the_exported_sequence_axis_takes_any_length_up_to_max_len(
    module: RecencyWeightedMean, session: OnnxUserEncoder
) -> None:
    rng = np.random.default_rng(1)
    sequences = [
        (rng.normal(size=(n, DIM)).astype(np.float32), rng.integers(1, 5, size=n).tolist())
        for n in (1, 3, 4, MAX_LEN, 2)
    ]
    expected = torch_encode(module, *pad_left(sequences, MAX_LEN, DIM))
    assert session.dynamic_length
    np.testing.assert_allclose(session.encode_sequences(sequences), expected, atol=1e-5)
    np.testing.assert_allclose(
        session.encode(*pad_left(sequences[:3], 4, DIM)), expected[:3], atol=1e-5
    )


def test_a_graph_fixed_at_max_len_still_serves(
    module: RecencyWeightedMean, session: OnnxUserEncoder, tmp_path: Path
) -> None:
    """Versions exported before the sequence axis was dynamic keep working."""
    examples = (torch.zeros(2, MAX_LEN, DIM), torch.ones(2, MAX_LEN, dtype=torch.int64))
    path = _export(module, examples, tmp_path / "fixed.onnx", INPUT_NAMES, [OUTPUT_USER_VECTOR])
    fixed = OnnxUserEncoder(path, prefer_cuda=False)
    assert not fixed.dynamic_length and fixed.max_len == MAX_LEN
    rng = np.random.default_rng(2)
    sequences = [
        (rng.normal(size=(n, DIM)).astype(np.float32), rng.integers(1, 5, size=n).tolist())
        for n in (1, 5)
    ]
    np.testing.assert_allclose(
        fixed.encode_sequences(sequences), session.encode_sequences(sequences), atol=1e-5
    )
    with pytest.raises(ValueError, match="item_vectors"):
        fixed.encode(*pad_left(sequences, 5, DIM))


def test_all_padding_row_gives_zeros_not_nan(
    module: RecencyWeightedMean, session: OnnxUserEncoder
) -> None:
    vectors, types = random_batch(4, seed=3)
    types[1] = 0
    for out in (torch_encode(module, vectors, types), session.encode(vectors, types)):
        assert np.isfinite(out).all()
        np.testing.assert_array_equal(out[1], np.zeros(DIM, dtype=np.float32))


def test_unknown_event_type_is_treated_as_padding(module: RecencyWeightedMean) -> None:
    vectors, types = random_batch(2, seed=4)
    odd = types.copy()
    odd[:, 0] = 99
    clean = types.copy()
    clean[:, 0] = 0
    np.testing.assert_allclose(
        torch_encode(module, vectors, odd), torch_encode(module, vectors, clean), atol=1e-6
    )


def test_length_buckets_are_powers_of_two_padded_to_their_longest() -> None:
    groups = length_buckets([0, 1, 2, 3, 5, 50, 60, 4], max_len=50)
    assert [(rows.tolist(), width) for rows, width in groups] == [
        ([0, 1], 1),
        ([2], 2),
        ([3, 7], 4),
        ([4], 5),
        ([5, 6], 50),
    ]
    assert length_buckets([], max_len=50) == []


def test_pad_left_keeps_newest_entries() -> None:
    items = np.arange(5 * 2, dtype=np.float32).reshape(5, 2)
    vectors, types = pad_left([(items, [1, 2, 3, 4, 5]), (items[:1], [3])], max_len=3, dim=2)
    np.testing.assert_array_equal(types, [[3, 4, 5], [0, 0, 3]])
    np.testing.assert_array_equal(vectors[0], items[2:])
    np.testing.assert_array_equal(vectors[1], [[0, 0], [0, 0], items[0]])
    with pytest.raises(ValueError, match="event types"):
        pad_left([(items, [1, 2])], 3, 2)


def test_session_rejects_wrong_shapes(session: OnnxUserEncoder) -> None:
    with pytest.raises(ValueError, match="item_vectors"):
        session.encode(np.zeros((1, MAX_LEN + 1, DIM)), np.zeros((1, MAX_LEN + 1)))
    with pytest.raises(ValueError, match="event_types"):
        session.encode(np.zeros((2, MAX_LEN, DIM)), np.zeros((1, MAX_LEN)))
    assert session.encode(np.zeros((0, MAX_LEN, DIM)), np.zeros((0, MAX_LEN))).shape == (0, DIM)


def test_provider_falls_back_to_cpu(onnx_path: Path, session: OnnxUserEncoder) -> None:
    assert choose_providers(prefer_cuda=False) == [CPU_PROVIDER]
    assert session.providers == [CPU_PROVIDER]
    preferred = OnnxUserEncoder(onnx_path, prefer_cuda=True)
    # CUDA when this build offers it and the machine can load it, CPU always behind it;
    # on a machine without a usable GPU the session must still come up on CPU.
    assert preferred.providers[-1] == CPU_PROVIDER
    assert set(preferred.providers) <= {CUDA_PROVIDER, CPU_PROVIDER}
    vectors, types = random_batch(5, seed=5)
    np.testing.assert_allclose(
        preferred.encode(vectors, types), session.encode(vectors, types), atol=1e-5
    )


def test_io_binding_is_used_on_cuda_only_unless_asked(
    onnx_path: Path, session: OnnxUserEncoder
) -> None:
    assert not session.io_binding
    assert OnnxUserEncoder(onnx_path, prefer_cuda=False, io_binding=True).io_binding
    # the default follows the provider that really runs the graph
    on_gpu = SessionRunner(object(), [CUDA_PROVIDER, CPU_PROVIDER], OUTPUT_USER_VECTOR)
    assert on_gpu.io_binding and on_gpu.device == "cuda"
    turned_off = SessionRunner(object(), [CUDA_PROVIDER], OUTPUT_USER_VECTOR, io_binding=False)
    assert not turned_off.io_binding


@pytest.mark.parametrize("batch", [1, 5, 32])
def test_io_binding_gives_the_plain_run_s_user_vectors(
    onnx_path: Path, session: OnnxUserEncoder, batch: int
) -> None:
    bound = OnnxUserEncoder(onnx_path, prefer_cuda=False, io_binding=True)
    vectors, types = random_batch(batch, seed=batch)
    expected = session.encode(vectors, types)
    np.testing.assert_array_equal(bound.encode(vectors, types), expected)
    # a shorter sequence axis binds inputs of another shape to the same session
    short = bound.encode(vectors[:, -3:], types[:, -3:])
    np.testing.assert_array_equal(short, session.encode(vectors[:, -3:], types[:, -3:]))


def test_io_binding_gives_the_plain_run_s_item_vectors(tmp_path: Path) -> None:
    torch.manual_seed(0)
    path = export_item_encoder(TextItemEncoder(torch.nn.Linear(24, DIM)), tmp_path / "i.onnx", 24)
    texts = np.random.default_rng(0).normal(size=(7, 24)).astype(np.float32)
    plain = OnnxItemEncoder(path, prefer_cuda=False)
    bound = OnnxItemEncoder(path, prefer_cuda=False, io_binding=True)
    assert bound.io_binding and not plain.io_binding
    np.testing.assert_array_equal(bound.encode(texts), plain.encode(texts))
    assert bound.encode(np.zeros((0, 24), dtype=np.float32)).shape == (0, DIM)


def test_invalid_hyperparameters_are_refused() -> None:
    with pytest.raises(ValueError):
        RecencyWeightedMean(half_life=0.0, type_weights=WEIGHTS)
    with pytest.raises(ValueError):
        RecencyWeightedMean(half_life=1.0, type_weights=[0.0, -1.0])
    with pytest.raises(ValueError, match="unknown"):
        type_weight_vector({"like": 1.0})
