"""Vocabulary pruning: keep the word-embedding rows of the tokens a task's corpus uses; map the others to them.

After every block is substituted the word embeddings are most of a small encoder's parameters. The
tokenizer is left exactly as it was; the embedding keeps only the rows of the tokens the corpus uses
(plus every special and added token) and becomes a ``PrunedEmbedding``: each dropped token reads one kept
row — of the ``CANDIDATES`` kept rows most similar (cosine) to its own old row, the one whose token the model
answers most alike (its output for each token alone: class probabilities, or the sentence embedding).
Every text whose tokens were all kept gives identical logits. Measured on the offline default's four
packaged sets the cosine-nearest row loses less than the earlier method (a pruned WordPiece vocabulary
re-splitting unseen words into kept pieces), than mapping them to the unknown token, and than the mean
of their kept pieces; choosing among its candidates by the model's answer changes fewer predictions
still. Since the tokenizer is untouched it works for BPE and SentencePiece vocabularies alike.
"""

from __future__ import annotations

import copy

import torch
from torch.nn import functional as F
from tqdm.auto import tqdm
from transformers import PreTrainedModel

from .arch import forward_inputs
from .compact import PrunedEmbedding, pruned_embedding_like
from .embed import SentenceEncoder
from .errors import DataError, DeployError
from .substitute import META_KEY, record

CANDIDATES = 10  # a dropped token's most similar kept rows (cosine), among which the model's answer chooses


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


@torch.no_grad()
def nearest_rows(
    weight: torch.Tensor, keep: list[int], responses: torch.Tensor | None = None, *, candidates: int = CANDIDATES
) -> tuple[torch.Tensor, torch.Tensor]:
    """For every row of ``weight`` (vocab, dim): the index into ``keep`` of the kept row it will read, and that
    row's cosine similarity to its own. Without ``responses``, the most similar kept row; with ``responses``
    (vocab, R: the model's answer to each token, ``token_responses``), of the ``candidates`` most similar kept
    rows the one whose answer is nearest (Euclidean). A kept token maps to itself (similarity 1)."""
    keep_t = torch.tensor(keep)
    kept = F.normalize(weight[keep_t].float(), dim=1)
    k = 1 if responses is None else min(candidates, len(keep))
    kept_answers = None if responses is None else responses[keep_t]
    rows, similarity = torch.empty(weight.shape[0], dtype=torch.long), torch.empty(weight.shape[0])
    for start in range(0, weight.shape[0], 2048):
        end = min(start + 2048, weight.shape[0])
        top = (F.normalize(weight[start:end].float(), dim=1) @ kept.T).topk(k, dim=1)
        pick = torch.zeros(end - start, 1, dtype=torch.long)
        if k > 1:  # (chunk, k) distances between each token's answer and its candidates' answers
            pick = (kept_answers[top.indices] - responses[start:end, None]).norm(dim=-1).argmin(1, keepdim=True)
        rows[start:end] = top.indices.gather(1, pick).squeeze(1)
        similarity[start:end] = top.values.gather(1, pick).squeeze(1)
    rows[keep_t] = torch.arange(len(keep))  # exactly itself, also where two rows are equal
    similarity[keep_t] = 1.0
    return rows, similarity


def _special_template(tokenizer) -> tuple[list[int], list[int]]:
    """The ids the tokenizer puts before and after a text's own tokens ([CLS] ... [SEP], <s> ... </s>, ...)."""
    inner = tokenizer("hello", add_special_tokens=False)["input_ids"]
    full = tokenizer("hello", add_special_tokens=True)["input_ids"]
    for i in range(len(full) - len(inner) + 1):
        if inner and full[i : i + len(inner)] == inner:
            return full[:i], full[i + len(inner) :]
    return [], []


@torch.no_grad()
def token_responses(model, tokenizer, vocab_size: int, *, batch_size: int = 1024) -> torch.Tensor:
    """(vocab_size, R): what ``model`` answers to each token id alone, between the tokenizer's special tokens —
    a classifier's class probabilities (a regression head's value; a token classifier's at that token), a
    sentence encoder's normalised embedding."""
    before, after = (torch.tensor([ids], dtype=torch.long) for ids in _special_template(tokenizer))
    at = before.shape[1]
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out = []
    for start in tqdm(range(0, vocab_size, batch_size), desc="the model's answer to each token", disable=None):
        ids = torch.arange(start, min(start + batch_size, vocab_size))[:, None]
        x = torch.cat([before.expand(len(ids), -1), ids, after.expand(len(ids), -1)], 1)
        batch = {"input_ids": x, "attention_mask": torch.ones_like(x), "token_type_ids": torch.zeros_like(x)}
        if isinstance(model, SentenceEncoder):
            answer = F.normalize(model(**{k: v.to(device) for k, v in batch.items()}).logits.float(), dim=-1)
        else:
            logits = model(**{k: v.to(device) for k, v in forward_inputs(model, batch).items()}).logits.float()
            logits = logits[:, at] if logits.dim() == 3 else logits  # a token classifier: its answer at the token
            answer = logits if logits.shape[-1] == 1 else logits.softmax(-1)
        out.append(answer.cpu())
    model.train(was_training)
    return torch.cat(out)


def _transformer(model) -> PreTrainedModel:
    """The Hugging Face model holding the word embeddings: a classifier itself, a sentence encoder's transformer."""
    return model.encoder if isinstance(model, SentenceEncoder) else model


def install_pruned_embedding(model, *, kept: int) -> PrunedEmbedding:
    """Replace the word embeddings of ``model`` (a classifier or a ``SentenceEncoder``) by an (untrained)
    ``PrunedEmbedding`` and record it in its config."""
    old = _transformer(model).get_input_embeddings()
    vocab = {"kept": kept}
    new = pruned_embedding_like(old, vocab).to(old.weight.device, old.weight.dtype)
    _transformer(model).set_input_embeddings(new)
    record(model)
    getattr(model.config, META_KEY)["vocab"] = vocab
    return new


def prune_vocabulary(model, tokenizer, texts: list[str]):
    """A copy of ``model`` (a classifier or a ``SentenceEncoder``) whose word embeddings keep only the tokens of
    ``texts``; returns (model, stats). The tokenizer is unchanged; the original model is not touched.
    """
    return prune_to(model, used_ids(tokenizer, texts), tokenizer)


def prune_to(model, keep: list[int], tokenizer=None, *, candidates: int = CANDIDATES):
    """A copy of ``model`` whose word embeddings keep only the rows ``keep`` (sorted token ids); (model, stats).
    With ``tokenizer``, each dropped token reads the kept row the model's answer chooses among its ``candidates``
    most similar (``nearest_rows``); without it, or with one candidate, the most similar."""
    old = _transformer(model).get_input_embeddings()
    if isinstance(old, PrunedEmbedding):
        raise DeployError("this model's vocabulary is already pruned; prune the model it was made from")
    if keep[-1] >= old.num_embeddings:
        raise DeployError(f"the tokenizer gives ids up to {keep[-1]} but the model has {old.num_embeddings} rows")
    by_answer = tokenizer is not None and candidates > 1
    responses = token_responses(model, tokenizer, old.num_embeddings) if by_answer else None
    rows, similarity = nearest_rows(old.weight.detach().cpu(), keep, responses, candidates=candidates)  # on the CPU
    pruned = copy.deepcopy(model)
    new = install_pruned_embedding(pruned, kept=len(keep))
    with torch.no_grad():
        new.weight.copy_(old.weight[torch.tensor(keep)])
        new.rows.copy_(rows)
    dropped = torch.ones(len(rows), dtype=torch.bool)
    dropped[torch.tensor(keep)] = False
    before, after = old.weight.numel(), new.weight.numel()
    stats = {"vocab_before": old.num_embeddings, "vocab_after": len(keep), "word_embedding_params_before": before,
             "word_embedding_params_after": after, "word_embedding_cut": 1 - after / before,
             "dropped_mean_cosine_to_row_read": similarity[dropped].mean().item() if dropped.any() else 1.0,
             "dropped_rows": f"the kept row the model answers most alike among the {candidates} most similar to its own "
             "(cosine)" if by_answer else "the kept row most similar to its own (cosine)"}  # fmt: skip
    return pruned, stats


def coverage(tokenizer, keep: list[int] | set[int], texts: list[str]) -> float:
    """Share of ``texts`` whose every token is kept (these give exactly the unpruned model's logits)."""
    if not texts:
        return 1.0
    kept = set(keep)
    return sum(set(ids) <= kept for ids in tokenizer(texts)["input_ids"]) / len(texts)


def _all_texts(ds) -> list[str]:
    """Every text of a split: both sides of sentence pairs; a tagged sentence's words joined by spaces."""
    if "tokens" in ds.column_names:
        return [" ".join(words) for words in ds["tokens"]]
    return list(ds["text"]) + (list(ds["text_pair"]) if "text_pair" in ds.column_names else [])


def _scores(model, pruned, tokenizer, test, *, max_length: int) -> dict[str, dict]:
    """The task's metrics of both models on the test split; for a sentence encoder, the pruned model's agreement
    with the unpruned one's embeddings (recall@10 of its neighbours, mean cosine; the unpruned scores 1)."""
    from datasets import DatasetDict

    from .embed import embedding_metrics
    from .evaluate import evaluate, logits_fn
    from .loaders import in_input_order, length_batches, loader, tokenize

    if not isinstance(model, SentenceEncoder):
        batches = loader(tokenize(DatasetDict(test=test), tokenizer, max_length)["test"], tokenizer, batch_size=64,
                         shuffle=False)  # fmt: skip
        return {"before": evaluate(model, batches), "after": evaluate(pruned, batches)}
    texts = _all_texts(test)
    with torch.no_grad():  # logits_fn: on the model's device (a GPU when there is one), back on the CPU
        before, after = (
            in_input_order(logits_fn(m), length_batches(tokenizer, texts, max_length=max_length))
            for m in (model, pruned)
        )
    return {"before": embedding_metrics(before, before), "after": embedding_metrics(after, before)}


def prune_and_measure(model, tokenizer, dsd, *, max_length: int, candidates: int = CANDIDATES):
    """Prune to the training texts of ``dsd``; measure the test metric before and after. Returns (model, stats).

    ``kept`` is the pruned model's score over the unpruned one's, with its 95 % paired-bootstrap interval.
    """
    from .evaluate import kept_interval, per_example

    keep = used_ids(tokenizer, _all_texts(dsd["train"]))  # tokenised once: pruning and coverage both need it
    pruned, stats = prune_to(model, keep, tokenizer, candidates=candidates)
    stats["test_texts_all_tokens_kept"] = coverage(tokenizer, keep, _all_texts(dsd["test"]))
    results = _scores(model, pruned, tokenizer, dsd["test"], max_length=max_length)
    for name, m in (("before", model), ("after", pruned)):
        stats["metric"], stats[f"test_score_{name}"] = results[name]["metric"], results[name]["score"]
        stats[f"params_{name}"] = sum(p.numel() for p in m.parameters())
    if "mean_cosine" in results["after"]:
        stats["mean_cosine_to_unpruned"] = results["after"]["mean_cosine"]
    if "correct" in results["before"]:  # texts the pruned model gets right where the unpruned got them wrong, or back
        pairs = zip(results["before"]["correct"], results["after"]["correct"], strict=True)
        stats["test_texts_correctness_changed"] = sum(a != b for a, b in pairs)
    interval = kept_interval(per_example(results["before"]), per_example(results["after"]))
    stats.update(kept=interval["kept"], kept_ci95=interval["ci95"], n_test=interval["n"])
    return pruned, stats
