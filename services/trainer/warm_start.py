"""Warm start: begin a new contrastive model from the serving version's weights.

A version saves its weights as ``model.safetensors`` (tensors by parameter name, no code).
The next version copies every tensor whose name and shape match: the user tower and the
text projection whole, the item-ID embedding row by row for the items both catalogues
hold (matched by item id, since row order follows each version's catalogue). New items
keep their fresh initialisation. The frozen text vectors are not saved (they are
recomputed, and at a million items they would dominate the file) and neither is the
``known`` mask (it describes the new training split, not the old one).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

log = logging.getLogger(__name__)

ID_EMBEDDING = "items.ids.weight"
# Rebuilt for every version from its own catalogue and split, so never saved or copied.
NOT_SAVED = frozenset({"items.text", "items.known"})


def model_weights(model: nn.Module) -> dict[str, np.ndarray]:
    """The tensors worth keeping for a warm start, as float32/int CPU arrays."""
    return {
        name: tensor.detach().cpu().contiguous().numpy()
        for name, tensor in model.state_dict().items()
        if name not in NOT_SAVED
    }


@dataclass(frozen=True)
class WarmStart:
    """What a warm start reused; recorded in the new version's hyperparameters."""

    source_version: str
    reused: bool
    tensors_copied: int = 0
    items_reused: int = 0
    items_new: int = 0
    reason: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def apply_warm_start(
    model: nn.Module,
    weights: Mapping[str, np.ndarray],
    old_item_ids: Sequence[str],
    new_item_ids: Sequence[str],
    source_version: str,
) -> WarmStart:
    """Copy compatible tensors from ``weights`` into ``model`` in place.

    Everything but the item-ID embedding must match by name and shape (same architecture),
    otherwise nothing is copied: half a transformer from another configuration is no
    better a start than a fresh one.
    """
    state = model.state_dict()  # shares storage with the parameters
    dense = [name for name in state if name not in NOT_SAVED and name != ID_EMBEDDING]
    mismatched = [
        name
        for name in dense
        if name not in weights or tuple(weights[name].shape) != tuple(state[name].shape)
    ]
    if mismatched:
        result = WarmStart(
            source_version,
            reused=False,
            items_new=len(new_item_ids),
            reason=f"architecture differs ({len(mismatched)} tensors, e.g. {mismatched[0]})",
        )
        log.info("warm start skipped", extra=result.as_dict())
        return result
    items_reused = 0
    with torch.no_grad():
        for name in dense:
            state[name].copy_(torch.from_numpy(np.asarray(weights[name])))
        if ID_EMBEDDING in state and ID_EMBEDDING in weights:
            items_reused = _copy_id_rows(
                state[ID_EMBEDDING], weights[ID_EMBEDDING], old_item_ids, new_item_ids
            )
    result = WarmStart(
        source_version,
        reused=True,
        tensors_copied=len(dense) + (1 if items_reused else 0),
        items_reused=items_reused,
        items_new=len(new_item_ids) - items_reused,
    )
    log.info("warm start applied", extra=result.as_dict())
    return result


def _copy_id_rows(
    target: torch.Tensor,
    source: np.ndarray,
    old_item_ids: Sequence[str],
    new_item_ids: Sequence[str],
) -> int:
    if source.ndim != 2 or source.shape[1] != target.shape[1]:
        return 0
    if source.shape[0] != len(old_item_ids):
        raise ValueError(f"{source.shape[0]} ID embeddings for {len(old_item_ids)} item ids")
    old_rows = {item_id: row for row, item_id in enumerate(old_item_ids)}
    pairs = [(new, old_rows[i]) for new, i in enumerate(new_item_ids) if i in old_rows]
    if not pairs:
        return 0
    new_index, old_index = (np.array(side, dtype=np.int64) for side in zip(*pairs, strict=True))
    rows = torch.from_numpy(np.ascontiguousarray(source[old_index]))
    target[torch.from_numpy(new_index)] = rows.to(target.dtype)
    return len(pairs)
