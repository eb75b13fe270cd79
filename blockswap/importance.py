"""Block-importance signals: each a callable ``(model, batches, *, seed) -> one score per block``.

Higher score = more important. Signals see only the blocks listed in ``candidates`` (others get NaN
and are never chosen), so re-ranking on a partly substituted student works the same way.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import nn
from torch.nn import functional as F
from transformers import PreTrainedModel

from . import arch
from .arch import capture_blocks, forward_inputs
from .losses import task_loss

Batches = Sequence[dict[str, torch.Tensor]]
Signal = Callable[..., list[float]]


def _loss(model: PreTrainedModel, batches: Batches) -> float:
    total, n = 0.0, 0
    with torch.no_grad():
        for b in batches:
            logits = model(**forward_inputs(model, b)).logits
            total += task_loss(logits, b["labels"], reduction="sum").item()
            n += len(b["labels"])
    return total / max(n, 1)


def drop_one(model: PreTrainedModel, batches: Batches, **_) -> list[float]:
    """Validation-loss increase when each block alone is replaced by the identity."""
    model.eval()
    base = _loss(model, batches)
    layers = arch.blocks(model)
    scores = []
    for i in range(len(layers)):
        original = layers[i]
        arch.put_block(model, i, arch.identity_block(model))
        try:
            scores.append(_loss(model, batches) - base)
        finally:
            layers[i] = original
    return scores


def influence(model: PreTrainedModel, batches: Batches, **_) -> list[float]:
    """Block influence: mean over real tokens of 1 - cos(block input, block output)."""
    model.eval()
    n = arch.num_blocks(model)
    sums, count = [0.0] * n, 0.0
    with torch.no_grad(), capture_blocks(model) as rec:
        for b in batches:
            model(**forward_inputs(model, b))
            m = b["attention_mask"].bool()
            for i in range(n):
                cos = F.cosine_similarity(rec[i]["input"], rec[i]["output"], dim=-1)  # (B, S)
                sums[i] += (1 - cos)[m].sum().item()
            count += m.sum().item()
    return [s / max(count, 1) for s in sums]


def grad_act(model: PreTrainedModel, batches: Batches, **_) -> list[float]:
    """Gradient x activation: |<dL/d out_i, out_i - in_i>| summed over the validation batches.

    A first-order estimate of the loss change if block i's contribution were removed.
    """
    model.eval()
    n = arch.num_blocks(model)
    scores = [0.0] * n
    requires = [p.requires_grad for p in model.parameters()]
    for p in model.parameters():  # block outputs must carry gradients even for a frozen model
        p.requires_grad_(True)
    try:
        for b in batches:
            with capture_blocks(model, detach=False) as rec:
                logits = model(**forward_inputs(model, b)).logits
                outs = [rec[i]["output"] for i in range(n)]
                grads = torch.autograd.grad(task_loss(logits, b["labels"], reduction="sum"), outs)
            m = b["attention_mask"].unsqueeze(-1).to(logits.dtype)  # (B, S, 1)
            for i in range(n):
                delta = (rec[i]["output"] - rec[i]["input"]).detach()  # (B, S, H)
                scores[i] += (grads[i] * delta * m).sum(dim=(1, 2)).abs().sum().item()
    finally:
        for p, r in zip(model.parameters(), requires, strict=True):
            p.requires_grad_(r)
    return scores


def _cached_outputs(model: PreTrainedModel, batches: Batches) -> list[tuple[list[torch.Tensor], dict]]:
    model.eval()
    cache = []
    with torch.no_grad(), capture_blocks(model) as rec:
        for b in batches:
            model(**forward_inputs(model, b))
            cache.append(([rec[i]["output"] for i in range(len(rec))], b))
    return cache


def softmax_weight(model: PreTrainedModel, batches: Batches, *, steps: int = 60, seed: int = 0, **_) -> list[float]:
    """A learned softmax weighting of all block outputs feeding the frozen head; score = weight."""
    cache = _cached_outputs(model, batches)
    n = len(cache[0][0])
    w = nn.Parameter(torch.zeros(n, device=cache[0][0][0].device))
    opt = torch.optim.Adam([w], lr=0.05)
    for step in range(steps):
        outs, batch = cache[step % len(cache)]
        mix = torch.einsum("n,nbsh->bsh", w.softmax(0), torch.stack(outs))
        loss = task_loss(arch.head_logits(model, mix, batch), batch["labels"])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return w.detach().softmax(0).tolist()


def scale(
    model: PreTrainedModel, batches: Batches, *, steps: int = 60, seed: int = 0, l1: float = 0.01, **_
) -> list[float]:
    """A learned scale on each block's contribution (out = in + s * (block(in) - in)), rest frozen.

    Trained on cross-entropy with an L1 pull towards 0: blocks the task needs keep |s| near 1.
    """
    model.eval()
    layers = arch.blocks(model)
    n = len(layers)
    s = nn.Parameter(torch.ones(n, device=next(model.parameters()).device))
    opt = torch.optim.Adam([s], lr=0.02)
    requires = [p.requires_grad for p in model.parameters()]
    for p in model.parameters():
        p.requires_grad_(False)

    def make_hook(i):
        def hook(module, args, kwargs, output):
            x = args[0] if args else kwargs["hidden_states"]
            out = output[0] if isinstance(output, tuple) else output
            new = x + s[i] * (out - x)
            return (new, *output[1:]) if isinstance(output, tuple) else new  # keep (hidden, attention) shape

        return hook

    handles = [layers[i].register_forward_hook(make_hook(i), with_kwargs=True) for i in range(n)]
    try:
        for step in range(steps):
            b = batches[step % len(batches)]
            logits = model(**forward_inputs(model, b)).logits
            loss = task_loss(logits, b["labels"]) + l1 * s.abs().sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
    finally:
        for h in handles:
            h.remove()
        for p, r in zip(model.parameters(), requires, strict=True):
            p.requires_grad_(r)
    return s.detach().abs().tolist()


SIGNALS: dict[str, Signal] = {
    "drop_one": drop_one,
    "influence": influence,
    "grad_act": grad_act,
    "softmax_weight": softmax_weight,
    "scale": scale,
}


def normalise(scores: Sequence[float], candidates: Sequence[int]) -> list[float]:
    """Scale to [0, 1] by the largest candidate score (negatives clipped to 0); non-candidates get NaN.

    Dividing by the maximum keeps ratios: min-max scaling would blow up differences of a few percent
    between near-equal blocks into the full 0..1 range and let a weak signal decide the order.
    """
    vals = [max(0.0, scores[i]) for i in candidates]
    hi = max(vals)
    out = [math.nan] * len(scores)
    for i in candidates:
        out[i] = max(0.0, scores[i]) / hi if hi > 0 else 0.0
    return out


def combine(normalised: dict[str, list[float]], weights: dict[str, float], candidates: Sequence[int]) -> list[float]:
    """Weighted mean of normalised signals over the candidate blocks."""
    total = sum(weights.values())
    n = len(next(iter(normalised.values())))
    out = [math.nan] * n
    for i in candidates:
        out[i] = sum(weights[k] * normalised[k][i] for k in weights) / total
    return out


def rank(
    model: PreTrainedModel,
    batches: Batches,
    weights: dict[str, float],
    *,
    candidates: Sequence[int] | None = None,
    probe_steps: int = 60,
    seed: int = 0,
) -> dict:
    """Run the weighted signals; returns raw, normalised and combined scores and the order.

    ``order`` lists candidate blocks from least to most important (ties broken by index).
    """
    n = arch.num_blocks(model)
    candidates = list(range(n)) if candidates is None else list(candidates)
    device = next(model.parameters()).device  # the signals run where the model is (a GPU run's teacher: there)
    batches = [{k: v.to(device) for k, v in b.items()} for b in batches]
    raw, norm = {}, {}
    for name in weights:
        torch.manual_seed(seed)
        raw[name] = [float(x) for x in SIGNALS[name](model, batches, steps=probe_steps, seed=seed)]
        norm[name] = normalise(raw[name], candidates)
    combined = combine(norm, weights, candidates)
    order = sorted(candidates, key=lambda i: (combined[i], i))
    return {"raw": raw, "normalised": norm, "combined": combined, "weights": weights, "order": order}
