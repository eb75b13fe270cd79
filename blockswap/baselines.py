"""Cheaper alternatives to compare against: magnitude / random unstructured pruning, layer dropping."""

from __future__ import annotations

import copy

import torch
from torch import nn
from transformers import PreTrainedModel

from . import arch

# The baselines `blockswap run` can compare against (``--baselines``), with what each one is.
BASELINES: dict[str, str] = {
    "magnitude": "global magnitude pruning of encoder Linear weights at the step's parameter cut, no retraining",
    "random": "random unstructured pruning of encoder Linear weights at the step's parameter cut, no retraining",
    "drop": "layer dropping of the same blocks with the curve's 30-step end-to-end budget per step only: less training "
    "than blockswap got (no block-wise phase), so not a fair comparison; 'distil' is the equal-budget one",
    "distil": "DistilBERT-style: the least important blocks dropped at the nearest GMACs cut, every remaining weight "
    "trained by KD for the substitution path's whole budget (block-wise + end-to-end steps x batch); each student "
    "is saved as RUN/distil_step<k>, a plain shorter model of the teacher's class",
    "thesis": "the seed thesis's procedure: the same blocks replaced by the same substitute shape, randomly "
    "initialised, the whole model trained on label cross-entropy only (no teacher) for the substitution path's "
    "whole budget",
}


def prunable(model: PreTrainedModel) -> list[torch.Tensor]:
    """The weight matrices unstructured pruning acts on: every nn.Linear weight inside the encoder blocks."""
    return [m.weight for b in arch.blocks(model) for m in b.modules() if isinstance(m, nn.Linear)]


def sparsity_for_cut(model: PreTrainedModel, params_cut: float) -> float:
    """Sparsity of the prunable weights that removes ``params_cut`` of all parameters (capped at 1)."""
    total = sum(p.numel() for p in model.parameters())
    pool = sum(w.numel() for w in prunable(model))
    return min(1.0, params_cut * total / pool) if pool else 0.0


@torch.no_grad()
def magnitude_prune(model: PreTrainedModel, sparsity: float) -> PreTrainedModel:
    """A copy with exactly ``round(sparsity * N)`` smallest-|w| prunable weights set to zero (global)."""
    return _prune(model, sparsity, lambda flat: flat.abs())


@torch.no_grad()
def random_prune(model: PreTrainedModel, sparsity: float, *, seed: int = 0) -> PreTrainedModel:
    """A copy with exactly ``round(sparsity * N)`` prunable weights, chosen uniformly (seeded), set to zero."""
    g = torch.Generator().manual_seed(seed)
    return _prune(model, sparsity, lambda flat: torch.rand(flat.shape, generator=g))


def _prune(model: PreTrainedModel, sparsity: float, score) -> PreTrainedModel:
    if not 0 <= sparsity <= 1:
        raise ValueError(f"sparsity must be in [0, 1], got {sparsity}")
    pruned = copy.deepcopy(model)
    weights = prunable(pruned)
    flat = torch.cat([w.detach().flatten().cpu() for w in weights])
    k = round(sparsity * flat.numel())
    if k == 0:
        return pruned
    idx = torch.topk(score(flat), k, largest=False).indices  # exactly k, ties broken by topk
    mask = torch.ones_like(flat, dtype=torch.bool)
    mask[idx] = False
    offset = 0
    for w in weights:
        n = w.numel()
        w.mul_(mask[offset : offset + n].view_as(w).to(w.device, w.dtype))
        offset += n
    return pruned
