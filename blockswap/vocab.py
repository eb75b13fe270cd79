"""Vocabulary pruning: keep the tokens a task's corpus uses (plus every special token), shrink the embeddings.

After every block is substituted the word embeddings are most of a small encoder's parameters. A
WordPiece vocabulary cut to the corpus tokenises every text whose tokens were all seen exactly as
before (greedy longest match finds the same pieces: no longer piece existed before either), so those
texts give identical logits. A word that needs a dropped piece is re-split into kept pieces, or
becomes the unknown token when none fit. BPE and SentencePiece vocabularies are refused: their
merges / scores would have to be rebuilt, not just filtered.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import torch
from torch import nn
from transformers import AutoTokenizer, PreTrainedModel

from .errors import DataError, DeployError


def _check_wordpiece(tokenizer) -> dict:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    kind = type(backend.model).__name__ if backend is not None else type(tokenizer).__name__
    if kind != "WordPiece":
        raise DeployError(
            f"vocabulary pruning supports WordPiece tokenizers (BERT, MiniLM, DistilBERT, ELECTRA); this one is {kind} "
            "(BPE / SentencePiece vocabularies need their merges rebuilt, which blockswap does not do)"
        )
    return json.loads(backend.to_str())


def used_ids(tokenizer, texts: list[str]) -> list[int]:
    """Sorted ids of every token ``texts`` use, plus all special and added tokens."""
    if not texts:
        raise DataError("the corpus for vocabulary pruning is empty; give a dataset with training texts")
    seen: set[int] = set(tokenizer.all_special_ids)
    seen.update(tokenizer.convert_tokens_to_ids(list(tokenizer.get_added_vocab())))
    for start in range(0, len(texts), 1024):
        for ids in tokenizer(texts[start : start + 1024], add_special_tokens=True)["input_ids"]:
            seen.update(ids)
    return sorted(seen)


def _pruned_tokenizer(tokenizer, spec: dict, keep: list[int]):
    """The same tokenizer with only ``keep`` (old ids, sorted), renumbered 0..K-1 in the old order."""
    id2tok = {i: t for t, i in tokenizer.get_vocab().items()}
    remap = {old: new for new, old in enumerate(keep)}
    spec["model"]["vocab"] = {id2tok[old]: new for old, new in remap.items() if id2tok[old] in spec["model"]["vocab"]}
    for added in spec.get("added_tokens", []):
        added["id"] = remap[added["id"]]
    for special in ((spec.get("post_processor") or {}).get("special_tokens") or {}).values():
        special["ids"] = [remap[i] for i in special["ids"]]
    if spec.get("padding"):
        spec["padding"]["pad_id"] = remap[spec["padding"]["pad_id"]]
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer.save_pretrained(tmp)
        (Path(tmp) / "tokenizer.json").write_text(json.dumps(spec, ensure_ascii=False))
        (Path(tmp) / "vocab.txt").write_text("".join(id2tok[i] + "\n" for i in keep), encoding="utf-8")
        return AutoTokenizer.from_pretrained(tmp)


@torch.no_grad()
def _shrink_embeddings(model: PreTrainedModel, keep: list[int]) -> None:
    old = model.get_input_embeddings()
    remap = {o: n for n, o in enumerate(keep)}
    pad = old.padding_idx if old.padding_idx in remap else None
    new = nn.Embedding(len(keep), old.embedding_dim, padding_idx=remap[pad] if pad is not None else None)
    new.weight.copy_(old.weight[torch.tensor(keep)])
    model.set_input_embeddings(new)
    model.config.vocab_size = len(keep)
    if getattr(model.config, "pad_token_id", None) in remap:
        model.config.pad_token_id = remap[model.config.pad_token_id]


def prune_vocabulary(model: PreTrainedModel, tokenizer, texts: list[str]):
    """A copy of ``model`` and a new tokenizer restricted to the tokens of ``texts``; returns (model, tokenizer, stats).

    The original model is not touched.
    """
    import copy

    spec = _check_wordpiece(tokenizer)
    keep = used_ids(tokenizer, texts)
    new_tok = _pruned_tokenizer(tokenizer, spec, keep)
    pruned = copy.deepcopy(model)
    before = sum(p.numel() for p in model.get_input_embeddings().parameters())
    _shrink_embeddings(pruned, keep)
    after = sum(p.numel() for p in pruned.get_input_embeddings().parameters())
    stats = {"vocab_before": len(tokenizer), "vocab_after": len(keep), "word_embedding_params_before": before,
             "word_embedding_params_after": after, "word_embedding_cut": 1 - after / before}  # fmt: skip
    return pruned, new_tok, stats


def coverage(tokenizer, keep_tokenizer, texts: list[str]) -> float:
    """Share of ``texts`` that the pruned tokenizer tokenises exactly as the original (same tokens)."""
    if not texts:
        return 1.0
    a = tokenizer(texts)["input_ids"]
    b = keep_tokenizer(texts)["input_ids"]
    same = sum(
        tokenizer.convert_ids_to_tokens(x) == keep_tokenizer.convert_ids_to_tokens(y) for x, y in zip(a, b, strict=True)
    )
    return same / len(texts)


def _all_texts(ds) -> list[str]:
    """Every text of a split: both sides of sentence pairs; a tagged sentence's words joined by spaces."""
    if "tokens" in ds.column_names:
        return [" ".join(words) for words in ds["tokens"]]
    return list(ds["text"]) + (list(ds["text_pair"]) if "text_pair" in ds.column_names else [])


def prune_and_measure(model: PreTrainedModel, tokenizer, dsd, *, max_length: int):
    """Prune to the training texts of ``dsd``; measure test accuracy before and after. Returns (model, tokenizer, stats)."""
    from datasets import DatasetDict

    from .evaluate import evaluate
    from .loaders import loader, tokenize

    pruned, new_tok, stats = prune_vocabulary(model, tokenizer, _all_texts(dsd["train"]))
    stats["test_texts_tokenised_identically"] = coverage(tokenizer, new_tok, _all_texts(dsd["test"]))
    for name, m, tok in (("before", model, tokenizer), ("after", pruned, new_tok)):
        test = tokenize(DatasetDict(test=dsd["test"]), tok, max_length)["test"]
        result = evaluate(m, loader(test, tok, batch_size=64, shuffle=False))
        stats["metric"], stats[f"test_score_{name}"] = result["metric"], result["score"]
        stats[f"params_{name}"] = sum(p.numel() for p in m.parameters())
    return pruned, new_tok, stats
