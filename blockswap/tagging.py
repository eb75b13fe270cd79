"""Token classification (NER-style tagging): word/tag data, first-sub-token label alignment, entity-level F1.

Data are sentences as lists of words with one tag per word (``tokens`` + ``tags``, or a hub dataset's
``tokens`` + ``ner_tags``). Each word's tag goes to its first sub-token; the other sub-tokens, the
special tokens and padding get ``IGNORE`` and are left out of the loss and the metrics, so a word is
predicted once, at its first sub-token. Entities are read from BIO / IOB2 tags the way seqeval's
default mode reads them: ``B-X`` starts an entity, ``I-X`` continues one of type X (and starts one
after ``O`` or another type), ``O`` ends it.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from datasets import ClassLabel, Dataset, DatasetDict, Features, Sequence, Value

from .errors import DataError

IGNORE = -100  # label of positions that are not a word's first sub-token
TAG_CANDIDATES = ("tags", "ner_tags", "labels", "label")


def is_tagging(columns: list[str], task: str) -> bool:
    """``task`` token, or auto with a ``tokens`` column next to a tag column."""
    return task == "token" or (task == "auto" and "tokens" in columns and any(c in columns for c in TAG_CANDIDATES))


def tag_names(values: list[list]) -> list[str]:
    """Tag names of string tags: ``O`` first, then sorted (integer tags keep their numbers)."""
    flat = {t for row in values for t in row}
    if all(isinstance(t, (int, np.integer)) for t in flat):
        return [str(i) for i in range(max(flat) + 1)] if flat else ["O"]
    rest = sorted(str(t) for t in flat if t != "O")
    return (["O"] if "O" in flat else []) + rest


def to_dataset(df: pd.DataFrame, tag_col: str, names: list[str]) -> Dataset:
    """A DataFrame of ``tokens`` and tag lists (names or ids) -> a Dataset of ``tokens`` + ``label`` (tag ids)."""
    if "tokens" not in df.columns:
        raise DataError(
            f"token classification needs a 'tokens' column (a list of words); columns: {', '.join(df.columns)}"
        )
    tokens, tags = df["tokens"].tolist(), df[tag_col].tolist()
    for i, (words, row) in enumerate(zip(tokens, tags, strict=True)):
        if (
            not isinstance(words, (list, np.ndarray))
            or not isinstance(row, (list, np.ndarray))
            or len(words) != len(row)
        ):
            raise DataError(f"row {i}: 'tokens' and '{tag_col}' must be lists of the same length")
    index = {n: i for i, n in enumerate(names)}
    ids = [[index[str(t)] if str(t) in index else int(t) for t in row] for row in tags]
    frame = pd.DataFrame({"tokens": [[str(w) for w in words] for words in tokens], "label": ids})
    feats = Features({"tokens": Sequence(Value("string")), "label": Sequence(ClassLabel(names=names))})
    return Dataset.from_pandas(frame, features=feats, preserve_index=False)


def split_dataset(ds: Dataset, split) -> DatasetDict:
    """Train / validation / test cut by ``split(strata) -> (train, validation, test) indices`` (no strata here)."""
    tr, va, te = split(np.zeros(len(ds), dtype=np.int64))
    return DatasetDict({"train": ds.select(tr), "validation": ds.select(va), "test": ds.select(te)})


def tokenize_words(dsd: DatasetDict, tokenizer, max_length: int) -> DatasetDict:
    """Sub-word encode each sentence's words; each word's tag on its first sub-token, ``IGNORE`` elsewhere."""
    if not getattr(tokenizer, "is_fast", False):
        raise DataError("token classification needs a fast tokenizer (word ids); this model's tokenizer is not")

    def enc(batch):
        out = tokenizer(batch["tokens"], is_split_into_words=True, truncation=True, max_length=max_length)
        labels = []
        for i, tags in enumerate(batch["label"]):
            previous, row = None, []
            for word in out.word_ids(i):
                row.append(IGNORE if word is None or word == previous else tags[word])
                previous = word
            labels.append(row)
        out["labels"] = labels
        return out

    return dsd.map(enc, batched=True, remove_columns=["tokens", "label"], desc="tokenising words")


def entities(tags: list[str]) -> set[tuple[str, int, int]]:
    """``(type, first, last)`` word spans of a BIO / IOB2 tag sequence (seqeval's default, lenient mode)."""
    spans, start, kind = set(), None, None
    for i, tag in enumerate([*tags, "O"]):
        prefix, typ = ("O", None) if tag == "O" else tag.split("-", 1) if "-" in tag else ("I", tag)
        begins = prefix in ("B", "S") or (prefix != "O" and typ != kind)  # I-X after O or another type begins too
        if start is not None and (prefix == "O" or begins):
            spans.add((kind, start, i - 1))
            start, kind = None, None
        if prefix != "O" and start is None:
            start, kind = i, typ
        if prefix in ("E", "S"):  # IOBES: the entity ends on this word
            spans.add((kind, start, i))
            start, kind = None, None
    return spans


def sentence_counts(pred: list[str], gold: list[str]) -> tuple[int, int, int]:
    """(true positive entities, predicted entities, gold entities) of one sentence."""
    p, g = entities(pred), entities(gold)
    return len(p & g), len(p), len(g)


def tagging_metrics(preds: list[list[int]], golds: list[list[int]], names: list[str]) -> dict:
    """Entity-level micro precision / recall / F1 (main), word accuracy, per-sentence counts for bootstrapping."""
    counts = [sentence_counts([names[t] for t in p], [names[t] for t in g]) for p, g in zip(preds, golds, strict=True)]
    tp, npred, ngold = (sum(c[k] for c in counts) for k in range(3))
    precision, recall = tp / npred if npred else 0.0, tp / ngold if ngold else 0.0
    f1 = 2 * tp / (npred + ngold) if npred + ngold else 0.0
    words = sum(len(g) for g in golds)
    right = sum(int(a == b) for p, g in zip(preds, golds, strict=True) for a, b in zip(p, g, strict=True))
    return {
        "metric": "f1",
        "score": f1,
        "f1": f1,
        "precision": precision,
        "recall": recall,
        "word_accuracy": right / words if words else 0.0,
        "n": len(golds),
        "entity_counts": [list(c) for c in counts],  # per sentence: paired comparisons between models
    }


def f1_of_counts(counts: torch.Tensor) -> torch.Tensor:
    """Entity F1 from summed (tp, predicted, gold) counts along dimension -2: ``(..., N, 3) -> (...)``."""
    total = counts.sum(-2)
    return 2 * total[..., 0] / (total[..., 1] + total[..., 2]).clamp(min=1)


def word_predictions(logits: torch.Tensor, labels: torch.Tensor) -> tuple[list[list[int]], list[list[int]]]:
    """Per sentence, the predicted and gold tag ids of its words (positions whose label is not ``IGNORE``).

    ``logits``: (B, S, C); ``labels``: (B, S).
    """
    keep = labels != IGNORE
    pred = logits.argmax(-1)
    return [p[k].tolist() for p, k in zip(pred, keep, strict=True)], [
        g[k].tolist() for g, k in zip(labels, keep, strict=True)
    ]
