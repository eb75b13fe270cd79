"""The single-purpose subcommands as library calls: measure, dry run, finetune, evaluate. No printing."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

from accelerate.utils import set_seed
from transformers import PreTrainedModel

from . import arch, export, files, measure
from .compact import CompactSpec
from .config import Config
from .errors import ConfigError, DataError
from .evaluate import evaluate
from .loaders import prepare
from .substitute import check_blocks, substitute
from .train import default_base_model, make_accelerator, train_teacher


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
) -> dict:
    """Cost of a model before and after substituting blocks (and of a baseline architecture), with cuts."""
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
        final = measure.cost(substitute(teacher, blocks, compact).eval(), **kw)
        result["after"], result["cut"] = final.as_dict(), final.cut(before)
    if baseline is not None:
        ref = measure.cost(_model_for(None, baseline), **kw)
        result["baseline_name"], result["baseline"] = baseline, ref.as_dict()
        result["cut_vs_baseline"] = final.cut(ref)
    return result


def dry_run(cfg: Config) -> tuple[str, dict]:
    """The configured plan built on a random-weight model of ``run.arch``: (headline, measure result)."""
    if cfg.run.arch is None:
        raise ConfigError("--dry-run needs the teacher's built-in architecture: set run.arch (e.g. bert-base-uncased)")
    n_blocks = arch.builtin_config(cfg.run.arch).num_hidden_layers
    k = cfg.run.max_blocks or n_blocks
    result = measure_command(
        model=None, builtin=cfg.run.arch, substitute_n=k, blocks=None, baseline=cfg.run.baseline_arch,
        compact=cfg.compact, seq_len=cfg.run.eval_seq_len, batch=1, with_latency=False, repeats=1,
    )  # fmt: skip
    head = f"dry run: {cfg.run.arch} (random weights), {k} of {n_blocks} blocks substituted, teacher {cfg.run.teacher}"
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


def evaluate_command(cfg: Config, model_name: str, split: str, json_path: str | None, batch_size: int):
    """Metrics of a classifier on a split of ``cfg.data``; returns (metrics, path written or None)."""
    model = export.load_model(model_name).eval()
    data = prepare(cfg.data, export.load_tokenizer(model_name))
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
