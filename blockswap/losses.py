"""Pure distillation losses."""

from __future__ import annotations

import torch
from torch.nn import functional as F


def kd_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(teacher || student) of temperature-softened distributions, times T^2 (Hinton et al.).

    ``student_logits``, ``teacher_logits``: (B, C). Returns a scalar averaged over the batch.
    """
    t = temperature
    log_p_s = F.log_softmax(student_logits / t, dim=-1)
    log_p_t = F.log_softmax(teacher_logits / t, dim=-1)
    return (log_p_t.exp() * (log_p_t - log_p_s)).sum(-1).mean() * t * t


def masked_mse(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean squared error over real tokens only.

    ``pred``, ``target``: (B, S, H); ``mask``: (B, S) with 1 for real tokens (None = all real).
    Averaged over real tokens and the hidden dimension.
    """
    se = (pred - target).pow(2).mean(-1)  # (B, S)
    if mask is None:
        return se.mean()
    m = mask.to(se.dtype)
    return (se * m).sum() / m.sum().clamp(min=1)


def distillation_loss(
    *,
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    student_hidden: list[torch.Tensor],
    teacher_hidden: list[torch.Tensor],
    mask: torch.Tensor | None,
    temperature: float,
    alpha: float,
    beta: float,
) -> tuple[torch.Tensor, dict[str, float]]:
    """KL(T) + alpha * CE(labels) + beta * mean hidden-state MSE at the given block boundaries.

    Logits (B, C); labels (B,); hidden lists of (B, S, H), paired; mask (B, S).
    """
    kl = kd_kl(student_logits, teacher_logits, temperature)
    ce = F.cross_entropy(student_logits, labels)
    if student_hidden:
        mse = torch.stack([masked_mse(s, t, mask) for s, t in zip(student_hidden, teacher_hidden, strict=True)]).mean()
    else:
        mse = torch.zeros((), device=student_logits.device)
    total = kl + alpha * ce + beta * mse
    return total, {"kl": kl.item(), "ce": ce.item(), "mse": mse.item(), "total": total.item()}
