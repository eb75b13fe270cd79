"""Make, swap, drop and record substitutes; save and load a set of trained substitutes."""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Sequence
from pathlib import Path

from safetensors.torch import load_file, save_file
from torch import nn
from transformers import PreTrainedModel

from . import arch
from .compact import CompactBlock, CompactSpec
from .errors import ConfigError
from .files import atomic_path

META_KEY = "blockswap"  # attribute on the model config, saved into config.json


def make_compact(model: PreTrainedModel, spec: CompactSpec, index: int | None = None) -> CompactBlock:
    """A fresh compact block shaped for ``model``'s blocks.

    With ``spec.norm == "post"`` and the index of an original block, the final LayerNorm starts
    as a copy of that block's own.
    """
    block = CompactBlock(
        arch.hidden_size(model.config),
        spec,
        layer_norm_eps=arch.layer_norm_eps(model.config),
        return_tuple=arch.returns_tuple(model),
    )
    if block.norm is not None and arch.spec_for(model).out_norm_path is None:
        raise ConfigError(
            f"compact.norm 'post' copies the LayerNorm that ends a post-LN block; {model.config.model_type} "
            "blocks end without one (pre-LN): use compact.norm none"
        )
    original = arch.blocks(model)[index] if index is not None else None
    if block.norm is not None and original is not None and not isinstance(original, CompactBlock):
        block.norm.load_state_dict(arch.output_norm(model, index).state_dict())
    return block


def check_blocks(model: PreTrainedModel, indices: Sequence[int]) -> list[int]:
    """Validate block indices against the model; returns them sorted and de-duplicated."""
    n = arch.num_blocks(model)
    for i in indices:
        if not 0 <= i < n:
            raise ConfigError(f"block index {i} is out of range: the model has blocks 0..{n - 1}")
    if len(set(indices)) != len(indices):
        raise ConfigError(f"block indices repeat: {list(indices)}")
    return sorted(indices)


def substituted_blocks(model: PreTrainedModel) -> list[int]:
    """Indices of the blocks that are compact substitutes."""
    return [i for i, b in enumerate(arch.blocks(model)) if isinstance(b, CompactBlock)]


def dropped_in_place(model: PreTrainedModel) -> list[int]:
    """Indices of the blocks that are identities standing in for dropped blocks (removed for real on saving)."""
    return [i for i, b in enumerate(arch.blocks(model)) if isinstance(b, arch.IdentityBlock)]


def block_origins(model: PreTrainedModel) -> list[int]:
    """The original model's block each block of ``model`` stands for: its own index, unless blocks were removed
    for real (recorded as ``dropped`` in its config), when the blocks after them moved up."""
    dropped = set((getattr(model.config, META_KEY, None) or {}).get("dropped") or ())
    return [i for i in range(arch.num_blocks(model) + len(dropped)) if i not in dropped]


def record(model: PreTrainedModel) -> None:
    """Write which blocks are substituted (and how) into ``model.config`` so it survives save/load; ``dropped``
    (the original blocks removed for real) is kept as it is."""
    subs = substituted_blocks(model)
    meta = getattr(model.config, META_KEY, None) or {}
    if subs:  # every substitute of a model shares one shape
        meta["compact"] = dataclasses.asdict(arch.blocks(model)[subs[0]].spec)
    meta.update(
        substituted=subs,
        block_path=arch.block_path(model),
        hidden_size=arch.hidden_size(model.config),
        layer_norm_eps=arch.layer_norm_eps(model.config),
        base_model_type=model.config.model_type,
        return_tuple=arch.returns_tuple(model),
        block_attrs=list(arch.spec_for(model).block_attrs),
    )
    setattr(model.config, META_KEY, meta)


def swap_in(model: PreTrainedModel, index: int, block: nn.Module) -> None:
    """Replace block ``index`` of ``model`` in place (the caller owns ``model``)."""
    check_blocks(model, [index])
    arch.put_block(model, index, block)
    record(model)


def substitute(
    model: PreTrainedModel,
    blocks: Sequence[int],
    spec: CompactSpec | None = None,
    *,
    substitutes: dict[int, nn.Module] | None = None,
    dropped: Sequence[int] = (),
) -> PreTrainedModel:
    """A deep copy of ``model`` with ``blocks`` replaced by compact substitutes (and ``dropped`` by identities: a
    hybrid, whose identities ``export.save`` removes for real).

    ``substitutes`` may provide already-trained modules (deep-copied in); the others are fresh
    ``CompactBlock``s built from ``spec``. The original model is not touched.
    """
    spec = spec or CompactSpec()
    indices = check_blocks(model, [*blocks, *dropped])
    student = copy.deepcopy(model)
    for i in indices:
        if i in dropped:
            new = arch.identity_block(student)
        elif substitutes and i in substitutes:
            new = copy.deepcopy(substitutes[i])
        else:
            new = make_compact(student, spec, i)
        arch.put_block(student, i, new)
    record(student)
    return student


def drop_blocks(model: PreTrainedModel, blocks: Sequence[int]) -> PreTrainedModel:
    """A deep copy of ``model`` with ``blocks`` removed (layer dropping), recorded as ``dropped`` in its config: the
    original blocks the rest stand for (``block_origins``) survive save/load."""
    indices = check_blocks(model, list(blocks))
    student, origins = copy.deepcopy(model), block_origins(model)
    arch.remove_blocks(student, indices)
    meta = getattr(student.config, META_KEY, None) or {}
    dropped = set(meta.get("dropped") or ()) | {origins[i] for i in indices}
    setattr(student.config, META_KEY, {**meta, "dropped": sorted(dropped)})
    record(student)
    return student


def check_drop_blocks(drop: int, n: int) -> None:
    """--drop-blocks leaves at least one of the teacher's ``n`` blocks (substituted or kept) in the student."""
    if drop >= n:
        raise ConfigError(
            f"--drop-blocks {drop}: the teacher has {n} blocks and at least one must stay; give 0 to {n - 1}"
        )


def without_dropped_in_place(model: PreTrainedModel) -> PreTrainedModel:
    """``model`` itself, or, when identities stand in for dropped blocks, a deep copy with them removed for real:
    the shorter model of its class (substitutes included) that saves and exports as any other."""
    dropped = dropped_in_place(model)
    return drop_blocks(model, dropped) if dropped else model


def save_substitutes(substitutes: dict[int, CompactBlock], path: str | Path) -> None:
    """All substitutes in one safetensors file (keys ``<block>.<parameter>``), written atomically."""
    tensors = {
        f"{i}.{k}": v.detach().cpu().contiguous() for i, b in substitutes.items() for k, v in b.state_dict().items()
    }
    with atomic_path(path) as tmp:
        save_file(tensors, tmp)


def load_substitutes(path: str | Path, model: PreTrainedModel, spec: CompactSpec) -> dict[int, CompactBlock]:
    """The substitutes saved by :func:`save_substitutes`, shaped ``spec`` for ``model``'s blocks."""
    tensors = load_file(path)
    subs = {}
    for i in sorted({int(k.split(".", 1)[0]) for k in tensors}):
        block = make_compact(model, spec)
        block.load_state_dict({k.split(".", 1)[1]: v for k, v in tensors.items() if k.split(".", 1)[0] == str(i)})
        subs[i] = block
    return subs
