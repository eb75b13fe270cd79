"""Plan which blocks to swap and apply a plan to a model (always on a deep copy)."""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Sequence

from torch import nn
from transformers import PreTrainedModel

from . import adapters
from .compact import CompactBlock
from .config import CompactConfig, ConfigError

META_KEY = "blockswap"  # attribute on the model config, saved into config.json


def make_compact(model: PreTrainedModel, compact: CompactConfig, index: int | None = None) -> CompactBlock:
    """A fresh compact block shaped for ``model``'s blocks.

    With ``compact.norm == "post"`` and the index of an original block, the final LayerNorm starts
    as a copy of that block's own.
    """
    spec = adapters.spec_for(model.config)
    block = CompactBlock(
        adapters.hidden_size(model.config),
        compact_hidden=compact.hidden,
        layers=compact.layers,
        heads=compact.heads,
        ffn=compact.ffn_size,
        dropout=compact.dropout,
        activation=compact.activation,
        layer_norm_eps=adapters.layer_norm_eps(model.config),
        post_norm=compact.norm == "post",
        return_tuple=spec.returns_tuple,
    )
    original = adapters.blocks(model)[index] if index is not None else None
    if block.norm is not None and original is not None and not isinstance(original, CompactBlock):
        block.norm.load_state_dict(adapters.output_norm(model, index).state_dict())
    return block


def check_blocks(model: PreTrainedModel, indices: Sequence[int]) -> list[int]:
    """Validate block indices against the model; returns them sorted and de-duplicated."""
    n = adapters.num_blocks(model)
    for i in indices:
        if not 0 <= i < n:
            raise ConfigError(f"block index {i} is out of range: the model has blocks 0..{n - 1}")
    if len(set(indices)) != len(indices):
        raise ConfigError(f"block indices repeat: {list(indices)}")
    return sorted(indices)


def substituted_blocks(model: PreTrainedModel) -> list[int]:
    """Indices of the blocks that are compact substitutes."""
    return [i for i, b in enumerate(adapters.blocks(model)) if isinstance(b, CompactBlock)]


def record(model: PreTrainedModel, compact: CompactConfig | None) -> None:
    """Write which blocks are substituted (and how) into ``model.config`` so it survives save/load."""
    subs = substituted_blocks(model)
    meta = getattr(model.config, META_KEY, None) or {}
    if compact is not None:
        meta["compact"] = dataclasses.asdict(compact)
    meta.update(
        substituted=subs,
        block_path=adapters.block_path(model),
        hidden_size=adapters.hidden_size(model.config),
        layer_norm_eps=adapters.layer_norm_eps(model.config),
        base_model_type=model.config.model_type,
        return_tuple=adapters.spec_for(model.config).returns_tuple,
    )
    setattr(model.config, META_KEY, meta)


def swap_in(model: PreTrainedModel, index: int, block: nn.Module, compact: CompactConfig | None = None) -> None:
    """Replace block ``index`` of ``model`` in place (the caller owns ``model``)."""
    check_blocks(model, [index])
    adapters.blocks(model)[index] = block
    record(model, compact)


def substitute(
    model: PreTrainedModel,
    blocks: Sequence[int],
    compact: CompactConfig | None = None,
    *,
    substitutes: dict[int, nn.Module] | None = None,
) -> PreTrainedModel:
    """A deep copy of ``model`` with ``blocks`` replaced by compact substitutes.

    ``substitutes`` may provide already-trained modules (deep-copied in); the others are fresh
    ``CompactBlock``s built from ``compact``. The original model is not touched.
    """
    compact = compact or CompactConfig()
    indices = check_blocks(model, list(blocks))
    student = copy.deepcopy(model)
    for i in indices:
        new = copy.deepcopy(substitutes[i]) if substitutes and i in substitutes else make_compact(student, compact, i)
        adapters.blocks(student)[i] = new
    record(student, compact)
    return student


def drop_blocks(model: PreTrainedModel, blocks: Sequence[int]) -> PreTrainedModel:
    """A deep copy of ``model`` with ``blocks`` removed (layer dropping)."""
    indices = check_blocks(model, list(blocks))
    student = copy.deepcopy(model)
    layer_list = adapters.blocks(student)
    kept = [b for i, b in enumerate(layer_list) if i not in indices]
    parent_path, _, name = adapters.block_path(student).rpartition(".")
    setattr(student.get_submodule(parent_path), name, nn.ModuleList(kept))
    for attr in ("num_hidden_layers", "n_layers"):
        if hasattr(student.config, attr):
            setattr(student.config, attr, len(kept))
    if hasattr(student.get_submodule(parent_path), "n_layers"):  # DistilBERT's Transformer keeps a count
        student.get_submodule(parent_path).n_layers = len(kept)
    return student


def plan(order: Sequence[int], k: int) -> list[int]:
    """The first ``k`` blocks of an importance order (least important first)."""
    if not 0 <= k <= len(order):
        raise ConfigError(f"cannot substitute {k} blocks: the model has {len(order)}")
    return list(order[:k])
