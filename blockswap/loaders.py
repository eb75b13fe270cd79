"""Tokenised splits -> DataLoaders: length-bucketed training batches, length-sorted evaluation.

``TaskData`` is what every training and evaluation loop reads: the tokenizer, the tokenised
train / validation / test splits and the label names.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
from datasets import Dataset, DatasetDict
from torch.utils.data import DataLoader

from .config import DataConfig
from .data import load_source
from .evaluate import logits_fn
from .tagging import IGNORE, tokenize_words

EVAL_BATCH_SIZE = 64
EXTRA_COLUMNS = ("class_label",)  # carried through batches beside the model inputs (the embedding task's probe)


def label_names(dsd: DatasetDict) -> list[str]:
    """Class (or tag) names; a regression task has one output, named ``score``."""
    feature = dsd["train"].features["label"]
    feature = getattr(feature, "feature", feature)  # token tasks: a sequence of tags
    return list(feature.names) if hasattr(feature, "names") else ["score"]


def task_of(dsd: DatasetDict) -> str:
    """``token``, ``regression`` or ``classification``, from the label feature."""
    feature = dsd["train"].features["label"]
    if hasattr(feature, "feature"):
        return "token"
    return "classification" if hasattr(feature, "names") else "regression"


def tokenize(dsd: DatasetDict, tokenizer, max_length: int) -> DatasetDict:
    """Add ``input_ids`` / ``attention_mask`` (/ ``token_type_ids``), rename ``label`` -> ``labels``.

    A ``text_pair`` column makes every example a sentence pair, truncated longest-first.
    """

    columns = next(iter(dsd.values())).column_names
    if "tokens" in columns:
        return tokenize_words(dsd, tokenizer, max_length)
    pair = "text_pair" in columns

    def enc(batch):  # a pair is encoded as the model's own pair input ([CLS] a [SEP] b [SEP] for BERT)
        return tokenizer(batch["text"], batch["text_pair"] if pair else None, truncation=True, max_length=max_length)

    out = dsd.map(enc, batched=True, remove_columns=["text", "text_pair"] if pair else ["text"], desc="tokenising")
    return out.rename_column("label", "labels") if "label" in columns else out  # unlabelled texts (embedding task)


def collate(tokenizer):
    """Dynamic padding to the longest sample of each batch."""

    def fn(rows: list[dict]) -> dict[str, torch.Tensor]:
        values = [r["labels"] for r in rows]  # float for regression, integer class ids, or a tag id per token
        extra = {k: torch.tensor([r[k] for r in rows]) for k in rows[0] if k in EXTRA_COLUMNS}
        feats = [{k: v for k, v in r.items() if k != "labels" and k not in EXTRA_COLUMNS} for r in rows]
        batch = {**tokenizer.pad(feats, return_tensors="pt"), **extra}
        if isinstance(values[0], list) and values[0] and isinstance(values[0][0], float):  # embedding targets (B, D)
            labels = torch.tensor(values, dtype=torch.float32)
        elif isinstance(values[0], list):  # token tags: padded with IGNORE on the tokenizer's padding side
            width = batch["input_ids"].shape[1]
            labels = torch.full((len(values), width), IGNORE, dtype=torch.long)
            for i, row in enumerate(values):
                start = width - len(row) if tokenizer.padding_side == "left" else 0
                labels[i, start : start + len(row)] = torch.tensor(row, dtype=torch.long)
        else:
            labels = torch.tensor(values, dtype=torch.float32 if isinstance(values[0], float) else torch.long)
        batch["labels"] = labels
        return batch

    return fn


class BucketBatchSampler(torch.utils.data.Sampler[list[int]]):
    """Shuffled batches of similar length: less padding, same examples per epoch.

    Each epoch shuffles all indices (seeded), sorts windows of ``batch_size * window`` by length,
    cuts them into batches and shuffles the batch order.
    """

    def __init__(self, lengths: list[int], batch_size: int, *, seed: int = 0, window: int = 50) -> None:
        self.lengths, self.batch_size, self.seed, self.window = list(lengths), batch_size, seed, window
        self.epoch = 0

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        self.epoch += 1
        order = torch.randperm(len(self.lengths), generator=g).tolist()
        span = self.batch_size * self.window
        batches = []
        for start in range(0, len(order), span):
            chunk = sorted(order[start : start + span], key=lambda i: self.lengths[i])
            batches += [chunk[j : j + self.batch_size] for j in range(0, len(chunk), self.batch_size)]
        for k in torch.randperm(len(batches), generator=g).tolist():
            yield batches[k]

    def __len__(self) -> int:
        return math.ceil(len(self.lengths) / self.batch_size)


def loader(ds: Dataset, tokenizer, *, batch_size: int, shuffle: bool, seed: int = 0) -> DataLoader:
    """A DataLoader with dynamic padding; training batches are length-bucketed, evaluation is sorted by length."""
    lengths = [len(x) for x in ds["input_ids"]]
    if shuffle:
        sampler = BucketBatchSampler(lengths, batch_size, seed=seed)
        return DataLoader(ds.with_format(None), batch_sampler=sampler, collate_fn=collate(tokenizer))
    ds = ds.select(np.argsort(np.array(lengths), kind="stable").tolist())
    return DataLoader(ds.with_format(None), batch_size=batch_size, shuffle=False, collate_fn=collate(tokenizer))


def length_batches(
    tokenizer, texts: list[str], *, max_length: int, batch_size: int = EVAL_BATCH_SIZE
) -> Iterator[tuple[list[int], dict[str, torch.Tensor]]]:
    """Raw texts tokenised in batches of similar length (little padding): yields each batch's indices into
    ``texts`` and the batch; ``in_input_order`` puts the outputs back."""
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        batch = tokenizer([texts[i] for i in idx], truncation=True, max_length=max_length, padding=True,
                          return_tensors="pt")  # fmt: skip
        yield idx, dict(batch)


def in_input_order(
    forward: Callable[[dict], torch.Tensor], batches: Iterable[tuple[list[int], dict[str, torch.Tensor]]]
) -> torch.Tensor:
    """``forward`` over ``length_batches``' batches, its ``(B, ...)`` outputs stacked in the texts' order."""
    idx, rows = [], []
    for i, batch in batches:
        idx += i
        rows.append(forward(batch))
    if not rows:
        return torch.empty(0)
    rows = torch.cat(rows)
    out = torch.empty_like(rows)
    out[torch.tensor(idx)] = rows
    return out


@dataclass
class TaskData:
    """A task's tokenizer, tokenised splits and label names."""

    tokenizer: object
    splits: DatasetDict
    label_names: list[str]
    task: str = "classification"  # or regression, token

    def loader(self, split: str, *, shuffle: bool = False, batch_size: int = EVAL_BATCH_SIZE, seed: int = 0):
        return loader(self.splits[split], self.tokenizer, batch_size=batch_size, shuffle=shuffle, seed=seed)


@torch.no_grad()
def prepare_embedding(cfg: DataConfig, teacher, *, log: Callable[[str], None] = print) -> TaskData:
    """The embedding task: texts tokenised with the teacher's own tokenizer; each text's ``labels`` are the
    teacher's embedding of it (fp32), its class label (if any) kept as ``class_label`` for the probe."""
    tokenizer = teacher.st[0].tokenizer
    dsd = load_source(cfg, log=log)
    names = label_names(dsd) if "label" in dsd["train"].column_names else []
    splits = tokenize(dsd, tokenizer, cfg.max_length)
    if "labels" in splits["train"].column_names:
        splits = splits.rename_column("labels", "class_label")
    out = {}
    for name, ds in splits.items():
        ds = ds.add_column("labels", [[0.0]] * len(ds))  # placeholder so the loader's batches carry labels
        order = np.argsort(np.array([len(x) for x in ds["input_ids"]]), kind="stable")  # by length: little padding
        by_length = DataLoader(
            ds.select(order.tolist()).with_format(None), batch_size=EVAL_BATCH_SIZE, collate_fn=collate(tokenizer)
        )
        forward = logits_fn(teacher)  # where the teacher is (a GPU run's: there), back on the CPU
        with torch.no_grad():
            parts = [forward(batch) for batch in by_length]
        embeddings = torch.empty(len(ds), parts[0].shape[-1]) if parts else torch.empty(0, 0)
        embeddings[torch.from_numpy(order)] = torch.cat(parts) if parts else embeddings
        log(f"teacher embeddings of the {name} split: {len(ds)} texts")
        out[name] = ds.remove_columns("labels").add_column("labels", embeddings.tolist())
    return TaskData(tokenizer, DatasetDict(out), names, "embedding")


def prepare(cfg: DataConfig, tokenizer, *, log: Callable[[str], None] = print) -> TaskData:
    """Load the configured source and tokenise it with ``tokenizer``."""
    dsd = load_source(cfg, log=log)
    return TaskData(tokenizer, tokenize(dsd, tokenizer, cfg.max_length), label_names(dsd), task_of(dsd))
