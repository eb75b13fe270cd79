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


def is_embedding_target(labels: torch.Tensor) -> bool:
    """Float labels ``(B, D)``: a teacher's embeddings (the embedding task), not classes, scores or tags."""
    return labels.is_floating_point() and labels.dim() == 2


def embedding_loss(student: torch.Tensor, target: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Squared error plus (1 - cosine) between embeddings ``(B, D)``: matches direction and scale."""
    per_text = (
        (student.float() - target.float()).pow(2).mean(-1)
        + 1
        - F.cosine_similarity(student.float(), target.float(), dim=-1)
    )
    return per_text.sum() if reduction == "sum" else per_text.mean()


def similarity_kl(student: torch.Tensor, teacher: torch.Tensor, temperature: float = 0.05) -> torch.Tensor:
    """In-batch similarity structure: for each text, KL(teacher || student) between the softmax over the
    cosine similarities to the batch's other texts (temperature ``temperature``), averaged over texts.

    Zero when the student's similarities equal the teacher's; blind to a common rotation of all embeddings.
    """
    n = student.shape[0]
    if n < 2:
        return student.new_zeros(())
    off = ~torch.eye(n, dtype=torch.bool, device=student.device)

    def log_p(x: torch.Tensor) -> torch.Tensor:
        x = F.normalize(x.float(), dim=-1)
        return F.log_softmax((x @ x.T)[off].view(n, n - 1) / temperature, dim=-1)

    log_s, log_t = log_p(student), log_p(teacher)
    return (log_t.exp() * (log_t - log_s)).sum(-1).mean()


def task_loss(logits: torch.Tensor, labels: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """The task's own loss: cross-entropy for classifiers ``(B, C)`` with integer labels, squared error for
    regression heads ``(B, 1)`` with float labels (Hugging Face's ``num_labels == 1`` convention), per-token
    cross-entropy for ``(B, S, C)``, :func:`embedding_loss` against teacher embeddings ``(B, D)``."""
    if is_embedding_target(labels):
        return embedding_loss(logits, labels, reduction)
    if logits.dim() == 3:  # token classification (B, S, C): positions labelled -100 are not words' first pieces
        return F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=-100, reduction=reduction)
    if logits.shape[-1] == 1:
        return F.mse_loss(logits[:, 0].float(), labels.float(), reduction=reduction)
    return F.cross_entropy(logits.float(), labels, reduction=reduction)


def kd_logits(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Output distillation: :func:`kd_kl` for classifiers; for a regression head ``(B, 1)`` the squared error to
    the teacher's prediction (a temperature has no meaning there); for token classifiers ``(B, S, C)`` the KL
    of every real token (``mask`` (B, S), 1 = real), averaged over them."""
    if student_logits.dim() == 3:
        t = temperature
        log_p_s = F.log_softmax(student_logits.float() / t, dim=-1)
        log_p_t = F.log_softmax(teacher_logits.float() / t, dim=-1)
        per_token = (log_p_t.exp() * (log_p_t - log_p_s)).sum(-1) * t * t  # (B, S)
        if mask is None:
            return per_token.mean()
        m = mask.to(per_token.dtype)
        return (per_token * m).sum() / m.sum().clamp(min=1)
    if student_logits.shape[-1] == 1:
        return F.mse_loss(student_logits.float(), teacher_logits.float())
    return kd_kl(student_logits, teacher_logits, temperature)


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
    similarity: float = 0.0,
) -> tuple[torch.Tensor, dict[str, float]]:
    """KL(T) + alpha * CE(labels) + beta * mean hidden-state MSE at the given block boundaries.

    Logits (B, C); labels (B,); hidden lists of (B, S, H), paired; mask (B, S). For a regression head
    (C = 1) the KL is the squared error to the teacher's output and the CE the squared error to the labels.
    For embeddings (B, D) the output term is :func:`embedding_loss` plus ``similarity`` times
    :func:`similarity_kl`.
    """
    if is_embedding_target(labels):  # the labels are the teacher's output: one term, not two
        kl = ce = embedding_loss(student_logits, teacher_logits)
        if similarity:
            kl = ce = kl + similarity * similarity_kl(student_logits, teacher_logits)
    else:
        kl = kd_logits(student_logits, teacher_logits, temperature, mask)
        ce = task_loss(student_logits, labels)
    if student_hidden:
        mse = torch.stack([masked_mse(s, t, mask) for s, t in zip(student_hidden, teacher_hidden, strict=True)]).mean()
    else:
        mse = torch.zeros((), device=student_logits.device)
    total = kl + alpha * ce + beta * mse
    return total, {"kl": kl.item(), "ce": ce.item(), "mse": mse.item(), "total": total.item()}
