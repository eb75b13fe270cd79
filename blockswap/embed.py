"""Sentence-embedding models (sentence-transformers folders): the teacher's embeddings are the target.

``SentenceEncoder`` wraps a ``SentenceTransformer`` (its own tokenizer, transformer, pooling and
normalisation — nothing re-implemented) so the rest of blockswap sees it like a classifier: its
forward returns ``.logits`` = the sentence embedding ``(B, D)``, and its transformer sits under the
usual attribute (``bert``, ``roberta``, ...) so the architecture table finds its blocks.

The training signal needs no labels: each text's ``labels`` are the teacher's embedding of it, so
every loss and importance signal compares the student's embedding with the teacher's (MSE + 1 - cosine,
see ``losses.task_loss``), and the metrics are the embeddings' agreement: mean cosine, recall@10 of the
teacher's nearest neighbours among the held-out texts (main metric), and a logistic-regression probe
on the data's own labels where it has them.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from .errors import MissingDependency, ModelLoadError

RECALL_K = 10
METRICS = (f"recall@{RECALL_K}", "mean_cosine")  # the main metric (kept, the stop rule): --embedding-metric


@dataclass
class EmbeddingOutput:
    logits: torch.Tensor  # (B, D): the sentence embedding, named like a classifier's output


class SentenceEncoder(nn.Module):
    """A SentenceTransformer seen as ``model(input_ids, attention_mask, token_type_ids) -> .logits (B, D)``."""

    def __init__(self, st) -> None:
        super().__init__()
        encoder = st[0].auto_model
        # Registered first, so module names (MAC counting, hooks) read ``bert.encoder.layer.i`` like a classifier's.
        setattr(self, encoder.base_model_prefix, encoder)
        self.st = st
        self.config = encoder.config
        self.takes_token_types = "token_type_ids" in _forward_params(encoder)

    @property
    def encoder(self) -> nn.Module:
        return self.st[0].auto_model

    def set_attn_implementation(self, implementation: str) -> None:
        self.encoder.set_attn_implementation(implementation)

    def forward(self, input_ids, attention_mask=None, token_type_ids=None) -> EmbeddingOutput:
        features = {"input_ids": input_ids, "attention_mask": attention_mask}
        if attention_mask is None:
            features["attention_mask"] = torch.ones_like(input_ids)
        if token_type_ids is not None and self.takes_token_types:
            features["token_type_ids"] = token_type_ids
        return EmbeddingOutput(self.st(features)["sentence_embedding"])


def _forward_params(module: nn.Module) -> set[str]:
    import inspect

    return set(inspect.signature(module.forward).parameters)


def is_sentence_transformers_folder(path: str | Path) -> bool:
    return (Path(path) / "modules.json").is_file()


def _st():
    try:
        import sentence_transformers
    except ImportError:
        raise MissingDependency(
            "embedding models need sentence-transformers: pip install 'blockswap[embeddings]'"
        ) from None
    return sentence_transformers


def load_teacher(path: str | Path) -> SentenceEncoder:
    """A sentence-transformers folder (or hub id) as a frozen ``SentenceEncoder`` (never remote code)."""
    st = _st()
    try:
        model = st.SentenceTransformer(str(path), device="cpu")
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"cannot load sentence-transformers model {path}: {str(e).splitlines()[0]}") from None
    return SentenceEncoder(model.float()).eval().requires_grad_(False)  # fp32 whatever dtype it was saved in


def default_teacher() -> str:
    """The packaged all-MiniLM-L6-v2 sentence-transformers folder (offline default); one line if not installed."""
    from .train import default_base_model  # the same folder: the classifiers' default base encoder

    return default_base_model()


def save(model: SentenceEncoder, directory: Path, write_transformer) -> None:
    """A sentence-transformers folder: modules, pooling, tokenizer from ``model.st``; the transformer (config,
    weights, remote code) written by ``write_transformer(encoder, folder)`` over what ``st.save`` wrote."""
    model.st.save(str(directory))
    write_transformer(model.encoder, directory)


def _without_pruned_embedding(weights: Path) -> None:
    """Drop a pruned vocabulary's embedding (``X.weight`` beside ``X.rows``) from a weights file, in place, so the
    original architecture can read the rest; the pruned embedding is put in and loaded afterwards."""
    from safetensors.torch import load_file, save_file

    state = load_file(weights)
    pruned = {k.removesuffix(".rows") for k in state if k.endswith(".rows")}
    if pruned:
        save_file({k: v for k, v in state.items() if k.rpartition(".")[0] not in pruned}, weights)


@contextlib.contextmanager
def _quiet_transformers():
    """transformers' warnings (its load report) off inside the context, its own level back afterwards."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)


def load(directory: Path, base_config: dict, put_substitutes) -> SentenceEncoder:
    """A saved student: its folder with the *original* transformer config loaded by sentence-transformers,
    then the recorded substitutes put in and every weight loaded from the folder (strictly)."""
    from safetensors.torch import load_file

    with tempfile.TemporaryDirectory() as tmp:
        plain = Path(tmp) / "model"
        # the original architecture reads the folder's weights (substituted blocks' keys are left over, their
        # original blocks start random); the substitutes and every weight are then loaded strictly below
        shutil.copytree(directory, plain, ignore=shutil.ignore_patterns("modeling_blockswap.py"))
        (plain / "config.json").write_text(json.dumps(base_config))
        _without_pruned_embedding(plain / "model.safetensors")
        with _quiet_transformers():  # its report of those keys is expected here, and alarming to a library user
            model = load_teacher(plain)
    put_substitutes(model)
    state = load_file(directory / "model.safetensors")
    missing, unexpected = model.encoder.load_state_dict(state, strict=False)
    missing = [k for k in missing if k in dict(model.encoder.named_parameters())]
    if missing or unexpected:
        raise ModelLoadError(
            f"{directory}: weights do not match the recorded structure ({missing[:3]} {unexpected[:3]})"
        )
    return model.eval()


# --- metrics --------------------------------------------------------------------------------------------------


def neighbours(emb: torch.Tensor, k: int) -> torch.Tensor:
    """Indices ``(N, k)`` of each row's k most cosine-similar other rows of ``emb`` ``(N, D)``."""
    x = F.normalize(emb.double(), dim=-1)
    sim = x @ x.T
    sim.fill_diagonal_(-float("inf"))
    return sim.topk(min(k, len(emb) - 1), dim=-1).indices


def recall_at_k(student: torch.Tensor, teacher: torch.Tensor, k: int = RECALL_K) -> torch.Tensor:
    """Per text, the share of the teacher's k nearest neighbours that the student's k nearest also contain."""
    s, t = neighbours(student, k), neighbours(teacher, k)
    hits = (s[:, :, None] == t[:, None, :]).any(-1).double()  # (N, k)
    return hits.mean(-1)


def embedding_metrics(student: torch.Tensor, teacher: torch.Tensor, main: str = METRICS[0]) -> dict:
    """Agreement of student embeddings ``(N, D)`` with the teacher's: recall@10, mean cosine, MSE; ``main`` (one of
    ``METRICS``) is the ``score`` that ``kept`` and the stop rule read, and its per-text values the ones that
    paired intervals resample (``recall_per_text`` or ``cosine_per_text``)."""
    recall = recall_at_k(student, teacher) if len(teacher) > 1 else torch.ones(len(teacher), dtype=torch.float64)
    cosine = F.cosine_similarity(student.double(), teacher.double(), dim=-1)
    per_text = {METRICS[0]: ("recall_per_text", recall), "mean_cosine": ("cosine_per_text", cosine)}[main]
    return {
        "metric": main,
        "score": per_text[1].mean().item(),
        f"recall@{RECALL_K}": recall.mean().item(),
        "mean_cosine": cosine.mean().item(),
        "mse": (student.double() - teacher.double()).pow(2).mean().item(),
        "n": len(teacher),
        per_text[0]: per_text[1].tolist(),  # per example: paired comparisons between models
    }


@dataclass
class StsSet:
    """Sentence pairs with gold similarity scores (``--eval-dataset``), tokenised once, unique texts by length."""

    source: str
    split: str
    pairs: torch.Tensor  # (N, 2): each pair's two indices into the unique texts
    scores: torch.Tensor  # (N,) gold similarity
    batches: list[tuple[list[int], dict[str, torch.Tensor]]]  # the unique texts by length (loaders.length_batches)

    @classmethod
    def build(cls, source: str, split: str, tokenizer, *, max_length: int, batch_size: int = 64) -> StsSet:
        from .data import read_sts
        from .loaders import length_batches

        first, second, scores = read_sts(source, split)
        texts = list(dict.fromkeys(first + second))
        index = {t: i for i, t in enumerate(texts)}
        batches = list(length_batches(tokenizer, texts, max_length=max_length, batch_size=batch_size))
        pairs = torch.tensor([[index[a], index[b]] for a, b in zip(first, second, strict=True)])
        return cls(source, split, pairs, torch.tensor(scores, dtype=torch.float64), batches)

    @property
    def tokens(self) -> int:
        """Tokens (padding included) of one pass over the unique texts."""
        return sum(batch["input_ids"].numel() for _, batch in self.batches)

    @torch.no_grad()
    def spearman(self, model) -> float:
        """Spearman correlation of ``model``'s cosine similarity of each pair with the gold scores."""
        from .evaluate import logits_fn, regression_metrics
        from .loaders import in_input_order

        was_training = model.training
        model.eval()
        forward = logits_fn(model)  # on the model's device, back on the CPU
        emb = in_input_order(lambda b: forward(b).double(), self.batches)
        model.train(was_training)
        cos = F.cosine_similarity(emb[self.pairs[:, 0]], emb[self.pairs[:, 1]], dim=-1)
        return regression_metrics(cos, self.scores)["spearman"]


PROBE_TRAIN_TEXTS = 2000  # training texts the probe of a run's evaluation stage embeds (its first shuffled batches)


def probe_accuracy(train_x, train_y, test_x, test_y, *, seed: int = 0) -> float:
    """Accuracy of a logistic-regression probe trained on ``train_x`` embeddings (scikit-learn)."""
    from sklearn.linear_model import LogisticRegression

    clf = LogisticRegression(max_iter=1000, random_state=seed)
    clf.fit(train_x.double().numpy(), train_y.numpy())
    return float((clf.predict(test_x.double().numpy()) == test_y.numpy()).mean())
