"""Task metrics: accuracy, macro-F1, loss, confusion matrix, throughput."""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
from torch.nn import functional as F
from torch.utils.data import DataLoader

from .arch import forward_inputs
from .tagging import f1_of_counts, tagging_metrics, word_predictions


def metrics(
    logits: torch.Tensor, labels: torch.Tensor, num_labels: int, *, embedding_metric: str | None = None
) -> dict:
    """The task's metrics; ``score`` is its main metric (``metric`` names it), which ``kept`` compares.

    Classification, ``logits`` (N, C) and integer ``labels`` (N,): accuracy (main), macro-F1, mean
    cross-entropy, confusion matrix (rows = true, columns = predicted) and per-example ``correct``.
    Regression, ``logits`` (N, 1) and float ``labels``: Pearson (main), Spearman, MSE and per-example
    ``preds`` / ``labels`` (paired comparisons between models resample them). Embeddings ``(N, D)`` against the
    teacher's: ``embed.embedding_metrics``, ``embedding_metric`` its main metric (default recall@10).
    """
    if labels.is_floating_point() and labels.dim() == 2:  # embeddings against the teacher's
        from .embed import METRICS, embedding_metrics

        return embedding_metrics(logits, labels, embedding_metric or METRICS[0])
    if num_labels == 1:
        return regression_metrics(logits[:, 0].double(), labels.double())
    preds = logits.argmax(-1)
    confusion = torch.zeros(num_labels, num_labels, dtype=torch.long)
    confusion.index_put_((labels, preds), torch.ones_like(labels), accumulate=True)
    tp = confusion.diag().double()
    precision = tp / confusion.sum(0).clamp(min=1)
    recall = tp / confusion.sum(1).clamp(min=1)
    f1 = torch.where(precision + recall > 0, 2 * precision * recall / (precision + recall), torch.zeros_like(tp))
    present = (confusion.sum(0) + confusion.sum(1)) > 0  # classes that occur in labels or predictions
    accuracy = (preds == labels).double().mean().item() if len(labels) else 0.0
    return {
        "metric": "accuracy",
        "score": accuracy,
        "accuracy": accuracy,
        "macro_f1": f1[present].mean().item() if present.any() else 0.0,
        "loss": F.cross_entropy(logits.float(), labels).item() if len(labels) else 0.0,
        "confusion": confusion.tolist(),
        "n": int(len(labels)),
        "correct": (preds == labels).int().tolist(),  # per example: paired comparisons between models
    }


def _ranks(x: torch.Tensor) -> torch.Tensor:
    """Ranks along the last dimension, ties given their average rank (as scipy.stats.rankdata)."""
    order = x.argsort(dim=-1, stable=True)
    sorted_x = x.gather(-1, order)
    ranks = torch.empty_like(x)
    ranks.scatter_(-1, order, torch.arange(x.shape[-1], dtype=x.dtype).expand_as(x).contiguous())
    # average the ranks of ties: for each run of equal sorted values, every member gets the run's mean rank
    new_run = torch.ones_like(sorted_x, dtype=torch.bool)
    new_run[..., 1:] = sorted_x[..., 1:] != sorted_x[..., :-1]
    run_id = new_run.cumsum(-1) - 1  # (…, N)
    positions = torch.arange(x.shape[-1], dtype=x.dtype).expand_as(x)
    total = torch.zeros_like(x).scatter_add_(-1, run_id, positions)
    count = torch.zeros_like(x).scatter_add_(-1, run_id, torch.ones_like(x))
    mean_rank = (total / count.clamp(min=1)).gather(-1, run_id)
    return ranks.scatter_(-1, order, mean_rank)


def pearson(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pearson correlation along the last dimension (0 where either side is constant)."""
    a, b = a - a.mean(-1, keepdim=True), b - b.mean(-1, keepdim=True)
    denom = (a.pow(2).sum(-1) * b.pow(2).sum(-1)).sqrt()
    return torch.where(denom > 0, (a * b).sum(-1) / denom.clamp(min=1e-300), torch.zeros_like(denom))


def regression_metrics(preds: torch.Tensor, labels: torch.Tensor) -> dict:
    """Pearson (main), Spearman and MSE of predictions ``(N,)`` against float labels ``(N,)``."""
    r = pearson(preds, labels).item() if len(labels) > 1 else 0.0
    return {
        "metric": "pearson",
        "score": r,
        "pearson": r,
        "spearman": pearson(_ranks(preds), _ranks(labels)).item() if len(labels) > 1 else 0.0,
        "mse": (preds - labels).pow(2).mean().item() if len(labels) else 0.0,
        "loss": (preds - labels).pow(2).mean().item() if len(labels) else 0.0,
        "n": int(len(labels)),
        "preds": preds.tolist(),
        "labels": labels.tolist(),
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
def predict(model, loader: DataLoader) -> tuple[torch.Tensor, torch.Tensor] | tuple[list, list]:
    """Logits (N, C) and labels (N,) over a loader, for a PyTorch classifier or an ``OnnxClassifier``.

    For a token classifier: per sentence, the predicted and the gold tag ids of its words.
    """
    forward = logits_fn(model)
    was_training = getattr(model, "training", False)
    if was_training:
        model.eval()
    all_logits, all_labels, tagged = [], [], ([], [])
    for batch in loader:
        logits = forward(batch)
        if logits.dim() == 3:
            preds, golds = word_predictions(logits, batch["labels"])
            tagged[0].extend(preds)
            tagged[1].extend(golds)
        else:
            all_logits.append(logits)
            all_labels.append(batch["labels"])
    if was_training:
        model.train()
    return tagged if tagged[1] else (torch.cat(all_logits), torch.cat(all_labels))


def evaluate(model, loader: DataLoader, *, embedding_metric: str | None = None) -> dict:
    """Metrics of ``model`` on ``loader`` plus examples per second (``embedding_metric``: see ``metrics``)."""
    t0 = time.perf_counter()
    logits, labels = predict(model, loader)
    seconds = time.perf_counter() - t0
    if isinstance(logits, list):  # token classification
        names = [model.config.id2label[i] for i in range(model.config.num_labels)]
        out = tagging_metrics(logits, labels, names)
    else:
        out = metrics(logits, labels, int(model.config.num_labels), embedding_metric=embedding_metric)
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
    correct = ({"correct": teacher_correct.int().tolist()}, {"correct": student_correct.int().tolist()})
    return kept_interval(*correct, samples=samples, seed=seed)


def _resamples(n: int, samples: int, seed: int) -> torch.Tensor:
    """(samples, n) example indices drawn with replacement, seeded: the same rows for every model compared."""
    return torch.randint(n, (samples, n), generator=torch.Generator().manual_seed(seed))


def _ci95(values: torch.Tensor) -> list[float]:
    return torch.quantile(values, torch.tensor([0.025, 0.975], dtype=values.dtype)).tolist()


def _bootstrap(teacher_score, student_score, n: int, *, samples: int, seed: int) -> dict:
    idx, everything = _resamples(n, samples, seed), torch.arange(n)
    t, s = teacher_score(idx), student_score(idx)  # (samples,)
    ratio = torch.where(s == t, torch.ones_like(t), s / t.clamp(min=1e-12))  # equal scores keep everything
    low, high = _ci95(ratio)
    kept = (student_score(everything) / teacher_score(everything).clamp(min=1e-12)).item()
    return {"kept": kept, "ci95": [low, high], "n": n, "samples": samples}


# what paired intervals resample, by task: tagging's per-sentence entity counts, an embedding's per-text recall or
# cosine (its main metric's), classification's correctness; regression resamples preds and labels
PER_EXAMPLE = ("entity_counts", "recall_per_text", "cosine_per_text", "correct")


def per_example(metrics: dict) -> dict:
    """The per-example part of a ``metrics`` dict that paired intervals resample (the rest are summaries)."""
    for key in PER_EXAMPLE:
        if key in metrics:
            return {key: metrics[key]}
    return {"preds": metrics["preds"], "labels": metrics["labels"]}


def _score_fn(metrics: dict, labels: torch.Tensor | None = None):
    """The task's main metric on a resample: a function of index rows (samples, n) -> (samples,)."""
    if "entity_counts" in metrics:  # token classification: resample sentences, entity F1 from summed counts
        counts = torch.tensor(metrics["entity_counts"], dtype=torch.float64)
        return lambda idx: f1_of_counts(counts[idx])
    for key in PER_EXAMPLE[1:]:  # embeddings' per-text neighbour recall or cosine; per-example correctness
        if key in metrics:
            values = torch.tensor(metrics[key], dtype=torch.float64)
            return lambda idx: values[idx].mean(-1)
    preds = torch.tensor(metrics["preds"], dtype=torch.float64)  # regression: Pearson on the resampled pairs
    return lambda idx: pearson(preds[idx], labels[idx])


def _score_fns(teacher: dict, *others: dict) -> tuple[list, int]:
    labels = torch.tensor(teacher["labels"], dtype=torch.float64) if "preds" in teacher else None
    fns = [_score_fn(m, labels) for m in (teacher, *others)]
    return fns, len(next(iter(per_example(teacher).values())))


def kept_interval(teacher: dict, student: dict, *, samples: int = 2000, seed: int = 0) -> dict:
    """``kept`` on the task's main metric with its 95 % paired-bootstrap interval, from two ``metrics`` dicts
    (or their ``per_example`` parts).

    Classification resamples per-example correctness; regression resamples (prediction, label) pairs
    and recomputes Pearson for teacher and student on the same resample; tagging recomputes entity F1
    from the resampled sentences' counts; embeddings average per-text neighbour recall.
    """
    (t, s), n = _score_fns(teacher, student)
    return _bootstrap(t, s, n, samples=samples, seed=seed)


def kept_difference(teacher: dict, a: dict, b: dict, *, samples: int = 2000, seed: int = 0) -> dict:
    """kept(a) - kept(b) with its 95 % paired-bootstrap interval: every resample draws the same examples for the
    teacher and both students, so what the two students get wrong together cancels (much narrower than
    comparing their separate intervals). ``difference`` is on the whole test split."""
    (t, sa, sb), n = _score_fns(teacher, a, b)
    idx, everything = _resamples(n, samples, seed), torch.arange(n)
    low, high = _ci95((sa(idx) - sb(idx)) / t(idx).clamp(min=1e-12))
    whole = ((sa(everything) - sb(everything)) / t(everything).clamp(min=1e-12)).item()
    return {"difference": whole, "ci95": [low, high], "n": n, "samples": samples}
