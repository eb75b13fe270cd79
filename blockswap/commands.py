"""The single-purpose subcommands as library calls: measure, dry run, finetune, evaluate. No printing."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import torch
from accelerate.utils import set_seed
from transformers import PreTrainedModel

from . import arch, deploy, embed, export, files, measure
from .compact import CompactSpec
from .config import Config
from .data import load_source
from .errors import ConfigError, DataError
from .evaluate import evaluate, logits_fn
from .loaders import in_input_order, length_batches, prepare
from .substitute import check_blocks, check_drop_blocks, drop_blocks, substitute
from .train import default_base_model, make_accelerator, train_teacher
from .vocab import CANDIDATES, prune_and_measure


def _model_for(model: str | None, builtin: str | None) -> PreTrainedModel:
    if builtin is not None:
        return arch.model_from_config(arch.builtin_config(builtin)).eval()
    return export.load_model(model).eval()


def measure_command(
    *,
    model: str | None,
    builtin: str | None,
    substitute_n: int | None,
    blocks: list[int] | None,
    baseline: str | None,
    compact: CompactSpec,
    seq_len: int = 128,
    batch: int = 1,
    with_latency: bool = True,
    repeats: int = 10,
    drop: int = 0,
) -> dict:
    """Cost of a model before and after substituting blocks (and of a baseline architecture), with cuts; the first
    ``drop`` of the blocks are removed instead (a hybrid, as `blockswap run --drop-blocks` builds)."""
    teacher = _model_for(model, builtin)
    n = arch.num_blocks(teacher)
    if substitute_n is not None:
        if not 0 <= substitute_n <= n:
            raise ConfigError(f"--substitute {substitute_n} is out of range: the model has {n} blocks")
        blocks = list(range(n - substitute_n, n))
    blocks = check_blocks(teacher, blocks or [])
    kw = {"seq_len": seq_len, "batch": batch, "repeats": repeats, "warmup": min(3, repeats)}
    kw["latency_batches"] = (batch,) if with_latency else ()
    before = measure.cost(teacher, **kw)
    result = {
        "source": builtin or model,
        "blocks": blocks,
        "compact": dataclasses.asdict(compact),
        "before": before.as_dict(),
    }
    final = before
    if blocks:
        result["dropped"] = blocks[:drop]
        student = substitute(teacher, blocks[drop:], compact)
        final = measure.cost(drop_blocks(student, blocks[:drop]).eval(), **kw)
        result["after"], result["cut"] = final.as_dict(), final.cut(before)
    if baseline is not None:
        ref = measure.cost(_model_for(None, baseline), **kw)
        result["baseline_name"], result["baseline"] = baseline, ref.as_dict()
        result["cut_vs_baseline"] = final.cut(ref)
    return result


def dry_run(cfg: Config) -> tuple[str, dict]:
    """The configured plan built on a random-weight model of ``run.arch``: (headline, measure result).

    Without ``run.arch``, the offline default (no teacher or base model named) is planned on its own
    architecture, the packaged all-MiniLM-L6-v2's.
    """
    name = cfg.run.arch
    if name is None and cfg.run.teacher is None and cfg.finetune.model is None:
        name = "all-minilm-l6-v2"  # the built-in entry of the packaged default teacher's architecture
    if name is None:
        raise ConfigError(
            "--dry-run builds the plan without loading the teacher, so it needs its built-in architecture: "
            f"add --arch NAME, one of: {', '.join(arch.BUILTIN_ARCHS)}"
        )
    n_blocks = arch.builtin_config(name).num_hidden_layers
    k = min(cfg.run.max_blocks or n_blocks, n_blocks)
    check_drop_blocks(cfg.run.drop_blocks, n_blocks)
    result = measure_command(
        model=None, builtin=name, substitute_n=k, blocks=None, baseline=cfg.run.baseline_arch,
        compact=cfg.compact, seq_len=cfg.run.eval_seq_len, batch=1, with_latency=False, repeats=1,
        drop=cfg.run.drop_blocks,
    )  # fmt: skip
    packaged = "as it is" if cfg.data.task == "embedding" else "fine-tuned by the run"
    teacher = cfg.run.teacher or cfg.finetune.model or f"the packaged all-MiniLM-L6-v2 ({packaged})"
    dropped = len(result.get("dropped", []))
    plan = f"{k - dropped} of {n_blocks} blocks substituted" + (f" and {dropped} dropped" if dropped else "")
    head = f"dry run: {name} (random weights), {plan}, teacher {teacher}"
    return head, result


def finetune_command(cfg: Config, out: Path, *, log: Callable[[str], None]) -> dict:
    """Fine-tune ``cfg.finetune.model`` (default: packaged MiniLM) as `blockswap run` fine-tunes its teacher.

    Saves model + tokenizer and metrics.json into ``out``; returns the metrics.
    """
    accelerator, _ = make_accelerator(cpu=cfg.run.cpu, mixed_precision=cfg.run.mixed_precision)
    set_seed(cfg.run.seed)
    base = cfg.finetune.model or default_base_model()
    data = prepare(cfg.data, export.load_tokenizer(base), log=log)
    model, metrics = train_teacher(base, data, cfg.finetune, seed=cfg.run.seed, accelerator=accelerator, log=log)
    export.save(model, out, tokenizer=data.tokenizer)
    files.write_json(out / "metrics.json", metrics)
    return metrics


def evaluate_command(
    cfg: Config,
    model_name: str,
    split: str,
    json_path: str | None,
    batch_size: int,
    *,
    int8: bool = False,
    cpu: bool = False,
):
    """Metrics of a classifier (PyTorch or ONNX folder) on a split of ``cfg.data``; returns (metrics, path or None)."""
    model, tokenizer = open_model(model_name, int8=int8, cpu=cpu)
    if is_embedding_model(model):
        raise ConfigError(
            f"{model_name} is a sentence-embedding model: `evaluate` scores classifiers; an embedding student is "
            "measured against its teacher by `blockswap run --task embedding`, and `predict` writes its embeddings"
        )
    data = prepare(cfg.data, tokenizer)
    if len(data.label_names) > model.config.num_labels:
        raise DataError(
            f"the data has {len(data.label_names)} label values but the model's head has {model.config.num_labels}"
        )
    result = evaluate(model, data.loader(split, batch_size=batch_size))
    result.update(dataset=cfg.data.dataset, split=split, label_names=data.label_names)
    path = json_path
    if path is None and Path(model_name).is_dir():
        path = str(Path(model_name) / f"eval_{Path(cfg.data.dataset).stem}_{split}.json")
    if path:
        files.write_json(path, result)
    return result, path


def compute_device(cpu: bool = False) -> torch.device:
    """Where a command runs a PyTorch model: the GPU when there is one (CUDA), unless ``cpu``."""
    return torch.device("cuda" if torch.cuda.is_available() and not cpu else "cpu")


def open_model(folder: str, *, int8: bool = False, threads: int | None = None, cpu: bool = False):
    """A PyTorch classifier (or sentence-transformers model; on ``compute_device(cpu)``) or, for an ONNX folder,
    an ``OnnxClassifier`` (ONNX Runtime on the CPU); plus its tokenizer."""
    if deploy.is_onnx_folder(folder):
        model = deploy.OnnxClassifier.load(folder, int8=int8, threads=threads)
    else:
        if int8:
            raise ConfigError(f"--int8 needs an ONNX folder; {folder} has no {deploy.ONNX_FILE}")
        model = export.load(folder) if embed.is_sentence_transformers_folder(folder) else export.load_classifier(folder)
        model.to(compute_device(cpu))
    return model, export.load_tokenizer(folder)


def is_embedding_model(model) -> bool:
    """A sentence-embedding model, in PyTorch or exported to ONNX."""
    return isinstance(model, embed.SentenceEncoder) or getattr(model, "is_embedding", False)


def predict_command(
    folder: str,
    texts: list[str] | list[tuple[str, str]],
    *,
    batch_size: int,
    max_length: int,
    int8: bool,
    progress=None,
    cpu: bool = False,
):
    """One dict per text (or ``(text, text_pair)`` pair), in input order: label, its probability, every label's
    (a regressor's value; a tagger's tags; a sentence-embedding model's embedding)."""
    model, tokenizer = open_model(folder, int8=int8, cpu=cpu)
    forward = logits_fn(model)
    pairs = bool(texts) and isinstance(texts[0], tuple)
    if is_embedding_model(model):
        if pairs:
            raise ConfigError("a sentence-embedding model embeds single texts; drop --text-pair-column")
        limit = model.st.max_seq_length if isinstance(model, embed.SentenceEncoder) else model.max_seq_length
        max_length = min(max_length, limit or max_length)  # what SentenceTransformer.encode truncates to
        return _predict_embeddings(forward, tokenizer, texts, batch_size=batch_size, max_length=max_length,
                                   progress=progress)  # fmt: skip
    names = [model.config.id2label[i] for i in range(model.config.num_labels)]
    if isinstance(model, torch.nn.Module) and arch.is_token_model(model):
        return _predict_tags(
            model, tokenizer, texts, names, batch_size=batch_size, max_length=max_length, progress=progress
        )
    order = sorted(range(len(texts)), key=lambda i: len("".join(texts[i])))  # similar lengths share a batch
    probs = [None] * len(texts)
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            first = [texts[i][0] if pairs else texts[i] for i in idx]
            second = [texts[i][1] for i in idx] if pairs else None
            batch = tokenizer(first, second, truncation=True, max_length=max_length, padding=True, return_tensors="pt")
            logits = forward(dict(batch))
            out = logits if logits.shape[-1] == 1 else logits.softmax(-1)
            for i, p in zip(idx, out.tolist(), strict=True):
                probs[i] = p
            if progress is not None:
                progress(len(idx))
    if len(names) == 1:  # regression: the head's output is the prediction
        return [
            {"index": i, **({"text": t[0], "text_pair": t[1]} if pairs else {"text": t}), "value": p[0]}
            for i, (t, p) in enumerate(zip(texts, probs, strict=True))
        ]
    rows = []
    for i, p in enumerate(probs):
        best = max(range(len(p)), key=p.__getitem__)
        rows.append(
            {
                "index": i,
                **({"text": texts[i][0], "text_pair": texts[i][1]} if pairs else {"text": texts[i]}),
                "label": names[best],
                "score": p[best],
                "probs": dict(zip(names, p, strict=True)),
            }
        )
    return rows


def _predict_embeddings(forward, tokenizer, texts, *, batch_size: int, max_length: int, progress=None) -> list[dict]:
    """Each text's embedding (pooled and normalised as the model declares), in input order."""

    def run(batch: dict) -> torch.Tensor:
        out = forward(batch)
        if progress is not None:
            progress(len(out))
        return out

    with torch.inference_mode():
        vectors = in_input_order(run, length_batches(tokenizer, texts, max_length=max_length, batch_size=batch_size))
    return [
        {"index": i, "text": t, "embedding": v} for i, (t, v) in enumerate(zip(texts, vectors.tolist(), strict=True))
    ]


def _predict_tags(model, tokenizer, texts, names, *, batch_size: int, max_length: int, progress=None) -> list[dict]:
    """Token classification: each text split on whitespace into words, one tag per word (its first sub-token's)."""
    if texts and isinstance(texts[0], tuple):
        raise ConfigError("a token classifier tags single texts; drop --text-pair-column")
    forward, rows = logits_fn(model), []
    with torch.inference_mode():
        for start in range(0, len(texts), batch_size):
            words = [t.split() for t in texts[start : start + batch_size]]
            batch = tokenizer(
                words,
                is_split_into_words=True,
                truncation=True,
                max_length=max_length,
                padding=True,
                return_tensors="pt",
            )
            probs = forward(dict(batch)).softmax(-1)  # (B, S, C)
            for b, ws in enumerate(words):
                first = {}
                for pos, w in enumerate(batch.word_ids(b)):
                    if w is not None and w not in first:
                        first[w] = pos
                tags = [names[int(probs[b, first[w]].argmax())] if w in first else None for w in range(len(ws))]
                rows.append({"index": start + b, "text": texts[start + b], "words": ws, "tags": tags})
            if progress is not None:
                progress(len(words))
    return rows


def export_command(cfg: Config, folder: str, out: Path, *, int8: bool, int8_scales: str = "auto") -> dict:
    """ONNX export of a classifier or sentence-transformers folder, parity-checked and evaluated on the configured
    dataset's test split."""
    deploy.require_onnx()
    model = export.load(folder) if embed.is_sentence_transformers_folder(folder) else export.load_classifier(folder)
    dsd = load_source(cfg.data)
    return deploy.export_checked(
        model,
        export.load_tokenizer(folder),
        out,
        dsd=dsd,
        max_length=cfg.data.max_length,
        int8=int8,
        int8_scales=int8_scales,
    )


def prune_vocab_command(
    cfg: Config, folder: str, out: Path, *, candidates: int = CANDIDATES, cpu: bool = False
) -> dict:
    """Keep the tokens of the configured dataset's training texts; save the smaller model with vocab.json.

    A classifier is scored on the test split's task metric; a sentence-transformers folder by how well the pruned
    model's test embeddings agree with the unpruned one's (recall@10 of its neighbours, mean cosine). The pass over
    the vocabulary and the scoring run on ``compute_device(cpu)``; the folder is saved from the CPU."""
    is_embedding = embed.is_sentence_transformers_folder(Path(folder).expanduser())
    model = export.load(Path(folder).expanduser()) if is_embedding else export.load_classifier(folder)
    model.to(compute_device(cpu))
    tokenizer = export.load_tokenizer(folder)
    data = dataclasses.replace(cfg.data, task="embedding") if is_embedding else cfg.data  # texts need no labels
    pruned, stats = prune_and_measure(
        model, tokenizer, load_source(data), max_length=cfg.data.max_length, candidates=candidates
    )
    stats["dataset"] = cfg.data.dataset
    export.save(pruned.cpu(), out, tokenizer=tokenizer)
    files.write_json(out / "vocab.json", stats)
    return stats
