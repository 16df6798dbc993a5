"""Export a user tower to ONNX and run it with onnxruntime (CUDA when present, else CPU).

The exported file is self-contained (no ``.onnx.data`` side file), so the artifact store can
checksum and move it as one file. The batch axis is dynamic, and so is a user tower's
sequence axis, up to ``max_len`` (kept in the graph's metadata): a batch of short histories
is padded to its longest member, not to ``max_len``. Most users of a catalogue have a
few interactions, and a graph fixed at 50 positions spent most of its time on padding.
``dim`` is fixed in the graph; :class:`OnnxUserEncoder` reads both back from it.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from recsys.model.user_encoder import INPUT_EVENT_TYPES, INPUT_ITEM_VECTORS, OUTPUT_USER_VECTOR

log = logging.getLogger(__name__)

INPUT_TEXT_VECTORS = "text_vectors"
MAX_LEN_METADATA = "max_len"
OUTPUT_ITEM_VECTORS = "item_vectors"

CUDA_PROVIDER = "CUDAExecutionProvider"
CPU_PROVIDER = "CPUExecutionProvider"


def _export(
    module: nn.Module,
    examples: tuple[torch.Tensor, ...],
    path: Path,
    input_names: list[str],
    output_names: list[str],
    max_len: int | None = None,
) -> Path:
    """One self-contained ONNX file, checked, with a dynamic batch axis on every input and,
    given ``max_len``, a dynamic sequence axis (axis 1) of 1 to ``max_len`` positions."""
    import onnx

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    was_training = module.training
    module.eval()
    batch = torch.export.Dim("batch", min=1, max=1 << 20)
    axes: dict[int, Any] = {0: batch}
    if max_len is not None:
        axes[1] = torch.export.Dim("length", min=1, max=max_len)
    # the exporter's graph passes log every rewrite at INFO; keep the trainer's log readable.
    # Its op registry warns once per torchvision op when torchvision is absent (never used
    # here), in torch's own line format, outside the service's JSON log.
    quieter = {
        "onnxscript": logging.WARNING,
        "onnx_ir": logging.WARNING,
        "torch.onnx": logging.WARNING,
        "torch.onnx._internal.exporter._registration": logging.ERROR,
    }
    chatty = [logging.getLogger(name) for name in quieter]
    levels = [logger.level for logger in chatty]
    try:
        for logger, floor in zip(chatty, quieter.values(), strict=True):
            logger.setLevel(max(floor, logger.getEffectiveLevel()))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # exporter deprecation chatter, not actionable
            torch.onnx.export(
                module,
                examples,
                str(path),
                input_names=input_names,
                output_names=output_names,
                dynamic_shapes={name: axes for name in input_names},
                dynamo=True,
                external_data=False,
                verbose=False,
            )
    finally:
        module.train(was_training)
        for logger, level in zip(chatty, levels, strict=True):
            logger.setLevel(level)
    side_file = path.with_name(path.name + ".data")
    if side_file.exists():
        raise RuntimeError(f"exporter wrote external data {side_file}; expected one file")
    if max_len is not None:
        model = onnx.load(str(path))
        onnx.helper.set_model_props(model, {MAX_LEN_METADATA: str(max_len)})
        onnx.save(model, str(path))
    onnx.checker.check_model(str(path))
    return path


def export_user_encoder(module: nn.Module, path: Path, max_len: int, dim: int) -> Path:
    """Export ``module(item_vectors, event_types) -> user_vector`` to one ONNX file.

    Uses the dynamo exporter (the TorchScript one is deprecated) with
    ``external_data=False``; the example batch has 2 rows and ``max_len`` positions so
    neither axis is specialised to 1. The sequence axis takes 1 to ``max_len`` positions,
    and the module must accept any of them (the newest at the last position). The
    written graph is checked with ``onnx.checker``.
    """
    if max_len < 1 or dim < 1:
        raise ValueError("max_len and dim must be positive")
    examples = (
        torch.randn(2, max_len, dim, dtype=torch.float32),
        torch.ones(2, max_len, dtype=torch.int64),
    )
    names = [INPUT_ITEM_VECTORS, INPUT_EVENT_TYPES]
    _export(module, examples, path, names, [OUTPUT_USER_VECTOR], max_len=max_len)
    log.info("user encoder exported", extra={"path": str(path), "max_len": max_len, "dim": dim})
    return Path(path)


class TextItemEncoder(nn.Module):
    """The item tower for an item known only by its text: an optional learned projection
    of the frozen text vector, then L2 normalisation. Without a projection (the foundation
    model) an item's vector is its normalised text vector."""

    def __init__(self, projection: nn.Module | None = None) -> None:
        super().__init__()
        self.projection = projection if projection is not None else nn.Identity()

    def forward(self, text_vectors: torch.Tensor) -> torch.Tensor:
        return nn.functional.normalize(self.projection(text_vectors), dim=-1, eps=1e-12)


def export_item_encoder(module: nn.Module, path: Path, text_dim: int) -> Path:
    """Export ``module(text_vectors) -> item_vectors`` to one ONNX file."""
    examples = (torch.randn(2, text_dim, dtype=torch.float32),)
    _export(module, examples, path, [INPUT_TEXT_VECTORS], [OUTPUT_ITEM_VECTORS])
    log.info("item encoder exported", extra={"path": str(path), "text_dim": text_dim})
    return Path(path)


def choose_providers(prefer_cuda: bool = True) -> list[str]:
    """CUDA first when this onnxruntime build offers it, CPU always as the fallback."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    # The GPU build lists CUDA everywhere; without a driver it would only fail noisily.
    if prefer_cuda and CUDA_PROVIDER in available and nvidia_driver_present():
        return [CUDA_PROVIDER, CPU_PROVIDER]
    return [CPU_PROVIDER]


def nvidia_driver_present() -> bool:
    return Path("/proc/driver/nvidia/version").exists() or Path("/dev/nvidiactl").exists()


def session_options(intra_op_threads: int) -> Any:
    """The options every session here runs with: ``intra_op_threads``, one inter-op thread,
    and errors only in onnxruntime's own log."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = intra_op_threads
    options.inter_op_num_threads = 1
    # A GPU build on a machine without CUDA logs the failed provider load as an error
    # and falls back to CPU; we report what is really used instead.
    options.log_severity_level = 3
    return options


def _session(path: Path, prefer_cuda: bool, intra_op_threads: int) -> tuple[Any, list[str]]:
    """An onnxruntime session and the providers it really uses."""
    import onnxruntime as ort

    options = session_options(intra_op_threads)
    requested = choose_providers(prefer_cuda)
    session = ort.InferenceSession(str(path), sess_options=options, providers=requested)
    providers = list(session.get_providers())
    if requested[0] not in providers:
        log.warning(
            "onnxruntime fell back from the preferred provider",
            extra={"requested": requested, "providers": providers},
        )
    return session, providers


class SessionRunner:
    """Runs a one-output session on numpy inputs and returns the output as numpy.

    On CUDA it uses IO binding: the inputs are copied to the GPU as they are bound, the
    output is allocated in GPU memory by onnxruntime and copied back in one call. These
    are the two copies ``session.run`` would make inside the run; binding makes them
    explicit and keeps the output on the GPU until it is read. On CPU, ``session.run``
    reads numpy inputs in place, so binding would only add calls: it is off there unless
    asked for (the tests ask, to run the binding path without a GPU).
    """

    def __init__(
        self, session: Any, providers: list[str], output: str, io_binding: bool | None = None
    ) -> None:
        self._session = session
        self._output = output
        self.device = "cuda" if providers[0] == CUDA_PROVIDER else "cpu"
        self.io_binding = self.device == "cuda" if io_binding is None else io_binding

    def run(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        if not self.io_binding:
            (out,) = self._session.run([self._output], inputs)
            return np.asarray(out, dtype=np.float32)
        binding = self._session.io_binding()
        for name, array in inputs.items():
            binding.bind_cpu_input(name, array)
        # device 0: the CUDA provider's default, and the one GPU a pod is given
        binding.bind_output(self._output, self.device, 0)
        self._session.run_with_iobinding(binding)
        (out,) = binding.copy_outputs_to_cpu()
        return np.asarray(out, dtype=np.float32)


class _OnnxEncoder:
    """A session over one exported encoder, run through a :class:`SessionRunner`."""

    output: str

    def __init__(
        self,
        path: Path,
        prefer_cuda: bool = True,
        intra_op_threads: int = 1,
        io_binding: bool | None = None,
    ) -> None:
        self.path = Path(path)
        self._session, self.providers = _session(self.path, prefer_cuda, intra_op_threads)
        self._runner = SessionRunner(self._session, self.providers, self.output, io_binding)
        self._read_graph()

    def _read_graph(self) -> None:
        """Check the graph against the encoder's contract and read its shapes."""
        raise NotImplementedError

    @property
    def io_binding(self) -> bool:
        """Whether runs go through IO binding (on CUDA, unless turned off)."""
        return self._runner.io_binding


class OnnxItemEncoder(_OnnxEncoder):
    """An onnxruntime session over a :class:`TextItemEncoder` export."""

    output = OUTPUT_ITEM_VECTORS

    def _read_graph(self) -> None:
        shape = self._session.get_inputs()[0].shape
        outputs = self._session.get_outputs()
        if len(shape) != 2 or not isinstance(shape[1], int):
            raise ValueError(f"{self.path}: text_vectors needs a static [batch, text_dim]")
        self.text_dim: int = shape[1]
        self.dim: int = int(outputs[0].shape[1])

    def encode(self, text_vectors: np.ndarray) -> np.ndarray:
        """float32 [N, text_dim] -> unit float32 [N, dim]."""
        texts = np.ascontiguousarray(text_vectors, dtype=np.float32)
        if texts.ndim != 2 or texts.shape[1] != self.text_dim:
            raise ValueError(f"text_vectors must be [N, {self.text_dim}], got {texts.shape}")
        if texts.shape[0] == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        return self._runner.run({INPUT_TEXT_VECTORS: texts})


class OnnxUserEncoder(_OnnxEncoder):
    """An onnxruntime session over a user tower that follows the contract in user_encoder.

    Reads graphs whose sequence axis is dynamic (``max_len`` from the metadata) and older
    ones fixed at ``max_len`` positions.
    """

    output = OUTPUT_USER_VECTOR

    def _read_graph(self) -> None:
        inputs = {i.name: i for i in self._session.get_inputs()}
        outputs = [o.name for o in self._session.get_outputs()]
        if set(inputs) != {INPUT_ITEM_VECTORS, INPUT_EVENT_TYPES} or outputs != [
            OUTPUT_USER_VECTOR
        ]:
            raise ValueError(
                f"{self.path} does not follow the user-tower contract: inputs {sorted(inputs)}, "
                f"outputs {outputs}"
            )
        shape = inputs[INPUT_ITEM_VECTORS].shape
        if len(shape) != 3 or not isinstance(shape[2], int):
            raise ValueError(f"{self.path}: item_vectors needs [batch, length, dim], dim static")
        self.dim: int = shape[2]
        self.dynamic_length = not isinstance(shape[1], int)
        if self.dynamic_length:
            metadata = self._session.get_modelmeta().custom_metadata_map
            if MAX_LEN_METADATA not in metadata:
                raise ValueError(f"{self.path}: dynamic sequence axis but no max_len metadata")
            self.max_len: int = int(metadata[MAX_LEN_METADATA])
        else:
            self.max_len = shape[1]
        log.info(
            "user encoder session ready",
            extra={
                "path": str(self.path),
                "providers": self.providers,
                "io_binding": self.io_binding,
                "max_len": self.max_len,
                "dynamic_length": self.dynamic_length,
            },
        )

    def encode(self, item_vectors: np.ndarray, event_types: np.ndarray) -> np.ndarray:
        """Run the tower: float32 [B, L, dim] and int64 [B, L] -> float32 [B, dim].

        ``L`` is ``max_len``, or with a dynamic sequence axis anything from 1 to it.
        """
        vectors = np.ascontiguousarray(item_vectors, dtype=np.float32)
        types = np.ascontiguousarray(event_types, dtype=np.int64)
        lengths = range(1, self.max_len + 1) if self.dynamic_length else (self.max_len,)
        if vectors.ndim != 3 or vectors.shape[1] not in lengths or vectors.shape[2] != self.dim:
            expected = f"1..{self.max_len}" if self.dynamic_length else str(self.max_len)
            raise ValueError(
                f"item_vectors must be [batch, {expected}, {self.dim}], got {vectors.shape}"
            )
        if types.shape != vectors.shape[:2]:
            raise ValueError(f"event_types must be {vectors.shape[:2]}, got {types.shape}")
        if vectors.shape[0] == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        return self._runner.run({INPUT_ITEM_VECTORS: vectors, INPUT_EVENT_TYPES: types})

    def encode_sequences(self, sequences: Sequence[tuple[np.ndarray, Sequence[int]]]) -> np.ndarray:
        """User vectors for (item vectors [n, dim], event type ids [n]) pairs, oldest first.

        With a dynamic sequence axis, each :func:`length_buckets` group is padded to its
        own longest member: padding at most doubles a sequence, where one long history
        would otherwise pad a whole batch to ``max_len``.
        """
        if not self.dynamic_length or not sequences:
            return self.encode(*pad_left(sequences, self.max_len, self.dim))
        out = np.empty((len(sequences), self.dim), dtype=np.float32)
        for rows, width in length_buckets([len(types) for _, types in sequences], self.max_len):
            out[rows] = self.encode(*pad_left([sequences[int(i)] for i in rows], width, self.dim))
        return out


def length_buckets(lengths: Sequence[int], max_len: int) -> list[tuple[np.ndarray, int]]:
    """Group sequences by length (capped at ``max_len``) into power-of-two buckets:
    (the rows of one bucket, the longest of them, at least 1), shortest bucket first."""
    capped = np.minimum(np.asarray(lengths, dtype=np.int64), max_len)
    buckets = np.left_shift(1, np.ceil(np.log2(np.maximum(capped, 1))).astype(np.int64))
    groups = []
    for bucket in np.unique(buckets):
        rows = np.flatnonzero(buckets == bucket)
        groups.append((rows, max(1, int(capped[rows].max()))))
    return groups


def pad_left(
    sequences: Sequence[tuple[np.ndarray, Sequence[int]]], max_len: int, dim: int
) -> tuple[np.ndarray, np.ndarray]:
    """Pack (item vectors [n, dim], event type ids [n]) pairs, oldest first, into model inputs.

    Keeps the newest ``max_len`` entries of each sequence and left-pads with zeros (event
    type 0), so the newest interaction always sits at the last position.
    """
    item_vectors = np.zeros((len(sequences), max_len, dim), dtype=np.float32)
    event_types = np.zeros((len(sequences), max_len), dtype=np.int64)
    for row, (vectors, types) in enumerate(sequences):
        vectors = np.asarray(vectors, dtype=np.float32).reshape(-1, dim)
        type_array = np.asarray(types, dtype=np.int64).reshape(-1)
        if len(type_array) != len(vectors):
            raise ValueError(
                f"sequence {row}: {len(vectors)} vectors but {len(type_array)} event types"
            )
        keep = min(len(type_array), max_len)
        if keep:
            item_vectors[row, max_len - keep :] = vectors[-keep:]
            event_types[row, max_len - keep :] = type_array[-keep:]
    return item_vectors, event_types
