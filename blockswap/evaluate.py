"""Task metrics: accuracy, macro-F1, loss, confusion matrix, throughput."""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
from torch.nn import functional as F
from torch.utils.data import DataLoader

from .arch import forward_inputs


def metrics(logits: torch.Tensor, labels: torch.Tensor, num_labels: int) -> dict:
    """Accuracy, macro-F1, mean cross-entropy and confusion matrix (rows = true, columns = predicted).

    ``logits``: (N, C); ``labels``: (N,).
    """
    preds = logits.argmax(-1)
    confusion = torch.zeros(num_labels, num_labels, dtype=torch.long)
    confusion.index_put_((labels, preds), torch.ones_like(labels), accumulate=True)
    tp = confusion.diag().double()
    precision = tp / confusion.sum(0).clamp(min=1)
    recall = tp / confusion.sum(1).clamp(min=1)
    f1 = torch.where(precision + recall > 0, 2 * precision * recall / (precision + recall), torch.zeros_like(tp))
    present = (confusion.sum(0) + confusion.sum(1)) > 0  # classes that occur in labels or predictions
    return {
        "accuracy": (preds == labels).double().mean().item() if len(labels) else 0.0,
        "macro_f1": f1[present].mean().item() if present.any() else 0.0,
        "loss": F.cross_entropy(logits.float(), labels).item() if len(labels) else 0.0,
        "confusion": confusion.tolist(),
        "n": int(len(labels)),
        "correct": (preds == labels).int().tolist(),  # per example: paired comparisons between models
    }


def logits_fn(model) -> Callable[[dict[str, torch.Tensor]], torch.Tensor]:
    """``batch -> (B, C) float logits on the CPU`` for a PyTorch classifier or an ``OnnxClassifier``."""
    if not isinstance(model, torch.nn.Module):
        return model.logits  # deploy.OnnxClassifier
    device = next(model.parameters()).device

    def forward(batch: dict[str, torch.Tensor]) -> torch.Tensor:
        inputs = {k: v.to(device) for k, v in forward_inputs(model, batch).items()}
        return model(**inputs).logits.float().cpu()

    return forward


@torch.no_grad()
def predict(model, loader: DataLoader) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits (N, C) and labels (N,) over a loader, for a PyTorch classifier or an ``OnnxClassifier``."""
    forward = logits_fn(model)
    was_training = getattr(model, "training", False)
    if was_training:
        model.eval()
    all_logits, all_labels = [], []
    for batch in loader:
        all_logits.append(forward(batch))
        all_labels.append(batch["labels"])
    if was_training:
        model.train()
    return torch.cat(all_logits), torch.cat(all_labels)


def evaluate(model, loader: DataLoader) -> dict:
    """Metrics of ``model`` on ``loader`` plus examples per second."""
    t0 = time.perf_counter()
    logits, labels = predict(model, loader)
    seconds = time.perf_counter() - t0
    out = metrics(logits, labels, int(model.config.num_labels))
    out["examples_per_s"] = len(labels) / seconds if seconds > 0 else float("inf")
    out["seconds"] = seconds
    return out


def paired_bootstrap(
    teacher_correct: torch.Tensor, student_correct: torch.Tensor, *, samples: int = 2000, seed: int = 0
) -> dict:
    """95 % paired-bootstrap interval of ``kept`` = student accuracy / teacher accuracy.

    Both vectors (N,) say whether each model got each sentence right; every resample draws the same
    sentences for both, so the interval reflects how much the *difference* depends on the sample.
    """
    t, s = teacher_correct.double(), student_correct.double()
    n = len(t)
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(n, (samples, n), generator=g)
    ratio = s[idx].mean(1) / t[idx].mean(1).clamp(min=1e-12)  # (samples,)
    low, high = torch.quantile(ratio, torch.tensor([0.025, 0.975], dtype=ratio.dtype)).tolist()
    kept = (s.mean() / t.mean().clamp(min=1e-12)).item()
    return {"kept": kept, "ci95": [low, high], "n": n, "samples": samples}
