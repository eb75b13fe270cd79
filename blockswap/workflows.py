"""Small recipes behind the single-purpose subcommands (measure, evaluate): build, call, summarise."""

from __future__ import annotations

from transformers import PreTrainedModel

from . import adapters, export, measure
from .config import CompactConfig, ConfigError
from .substitute import check_blocks, substitute


def _model_for(model: str | None, arch: str | None) -> PreTrainedModel:
    if arch is not None:
        return adapters.model_from_config(adapters.builtin_config(arch)).eval()
    return export.load_model(model).eval()


def _profile(model: PreTrainedModel, *, seq_len: int, batch: int, with_latency: bool, repeats: int) -> dict:
    return measure.profile(
        model, batch=batch, seq_len=seq_len, with_latency=with_latency, repeats=repeats, warmup=min(3, repeats)
    )


def _cuts(reference: dict, other: dict) -> dict:
    out = {
        "params_cut": measure.cut(reference["params"]["total"], other["params"]["total"]),
        "gmacs_cut": measure.cut(reference["macs"]["macs"], other["macs"]["macs"]),
    }
    if "latency" in reference and "latency" in other:
        out["speedup"] = reference["latency"]["median_ms"] / other["latency"]["median_ms"]
    return out


def measure_command(
    *,
    model: str | None,
    arch: str | None,
    substitute_n: int | None,
    blocks: list[int] | None,
    baseline: str | None,
    compact: CompactConfig,
    seq_len: int = 128,
    batch: int = 1,
    with_latency: bool = True,
    repeats: int = 10,
) -> dict:
    """Measure a model before and after substituting blocks (and against a baseline architecture)."""
    teacher = _model_for(model, arch)
    n = adapters.num_blocks(teacher)
    if substitute_n is not None:
        if not 0 <= substitute_n <= n:
            raise ConfigError(f"--substitute {substitute_n} is out of range: the model has {n} blocks")
        blocks = list(range(n - substitute_n, n))
    blocks = check_blocks(teacher, blocks or [])
    kw = {"seq_len": seq_len, "batch": batch, "with_latency": with_latency, "repeats": repeats}
    result = {"source": arch or model, "blocks": blocks, "compact": compact.__dict__, "before": _profile(teacher, **kw)}
    if blocks:
        student = substitute(teacher, blocks, compact).eval()
        result["after"] = _profile(student, **kw)
        result["cut"] = _cuts(result["before"], result["after"])
    if baseline is not None:
        ref = _model_for(None, baseline)
        result["baseline_name"] = baseline
        result["baseline"] = _profile(ref, **kw)
        final = result.get("after", result["before"])
        result["cut_vs_baseline"] = _cuts(result["baseline"], final)
    return result


def _row(name: str, values: list[str]) -> str:
    return f"| {name:<22} | " + " | ".join(f"{v:>14}" for v in values) + " |"


def format_measure_table(result: dict) -> str:
    """A markdown table: baseline (if any), before, after, cut %."""
    cols: list[tuple[str, dict]] = []
    if "baseline" in result:
        cols.append((result["baseline_name"], result["baseline"]))
    cols.append(("before", result["before"]))
    if "after" in result:
        cols.append((f"after ({len(result['blocks'])} swapped)", result["after"]))
    cut_cols = []
    if "cut" in result:
        cut_cols.append(("cut", result["cut"]))
    if "cut_vs_baseline" in result:
        cut_cols.append((f"cut vs {result['baseline_name']}", result["cut_vs_baseline"]))
    header = _row("", [c[0][:14] for c in cols] + [c[0][:14] for c in cut_cols])
    lines = [header, "|" + "|".join(["-" * 24] + ["-" * 16] * (len(cols) + len(cut_cols))) + "|"]
    lines.append(
        _row(
            "params (M)",
            [f"{c['params']['total'] / 1e6:.2f}" for _, c in cols] + [f"{x['params_cut']:.1%}" for _, x in cut_cols],
        )
    )
    lines.append(
        _row("encoder params (M)", [f"{c['params']['encoder'] / 1e6:.2f}" for _, c in cols] + ["" for _ in cut_cols])
    )
    lines.append(
        _row("GMACs", [f"{c['macs']['gmacs']:.3f}" for _, c in cols] + [f"{x['gmacs_cut']:.1%}" for _, x in cut_cols])
    )
    if all("latency" in c for _, c in cols):
        lines.append(
            _row(
                "latency ms (median)",
                [f"{c['latency']['median_ms']:.2f}" for _, c in cols] + [f"x{x['speedup']:.2f}" for _, x in cut_cols],
            )
        )
    first = cols[-1][1]
    note = f"batch {first['macs']['batch']}, seq {first['macs']['seq_len']}, MACs counted with eager attention"
    if first.get("peak_memory_mb") is not None:
        note += f"; peak accelerator memory {first['peak_memory_mb']:.0f} MiB"
    else:
        note += f"; process peak RSS {first['process_peak_rss_mb']:.0f} MiB"
    if "latency" in first:
        lat = first["latency"]
        note += f"; latency on {lat['device']} {lat['dtype']} {lat['threads']} threads, {lat['repeats']} repeats"
    if result["blocks"]:
        note += f"; substituted blocks {result['blocks']}"
    return "\n".join(lines + ["", note])


def dry_run(cfg) -> str:
    """Build the configured plan on a random-weight model of the teacher's architecture; structure only."""
    if cfg.run.arch is None:
        raise ConfigError("--dry-run needs the teacher's built-in architecture: set run.arch (e.g. bert-base-uncased)")
    n_blocks = adapters.builtin_config(cfg.run.arch).num_hidden_layers
    k = cfg.run.max_blocks or n_blocks
    result = measure_command(
        model=None, arch=cfg.run.arch, substitute_n=k, blocks=None, baseline=cfg.run.baseline_arch,
        compact=cfg.compact, seq_len=cfg.run.eval_seq_len, batch=1, with_latency=False, repeats=1,
    )  # fmt: skip
    head = f"dry run: {cfg.run.arch} (random weights), {k} of {n_blocks} blocks substituted, teacher {cfg.run.teacher}"
    return head + "\n" + format_measure_table(result)


def finetune_command(cfg, out) -> dict:
    """Fine-tune ``cfg.finetune.model`` (default: packaged MiniLM) on ``cfg.data``; save model, tokenizer, metrics."""
    import json

    from accelerate.utils import set_seed

    from . import data
    from .evaluate import evaluate
    from .finetune import build_classifier, default_base_model, finetune
    from .optim import make_accelerator

    accelerator, _ = make_accelerator(cpu=cfg.run.cpu, mixed_precision=cfg.run.mixed_precision)
    base = cfg.finetune.model or default_base_model()
    tok = export.load_tokenizer(base)
    dsd = data.load_source(cfg.data)
    tk = data.tokenize(dsd, tok, cfg.data.max_length)
    set_seed(cfg.run.seed)
    model = build_classifier(base, data.label_names(dsd))
    model, history = finetune(
        model,
        data.loader(tk["train"], tok, batch_size=cfg.finetune.batch_size, shuffle=True, seed=cfg.run.seed),
        data.loader(tk["validation"], tok, batch_size=64, shuffle=False),
        cfg.finetune,
        accelerator=accelerator,
    )
    history["test"] = evaluate(model, data.loader(tk["test"], tok, batch_size=64, shuffle=False))
    export.save(model, out, tokenizer=tok)
    (out / "metrics.json").write_text(json.dumps(history, indent=2))
    return history


def evaluate_command(cfg, model_name: str, split: str, json_path: str | None, batch_size: int):
    """Metrics of a classifier on a split of ``cfg.data``; returns (metrics, path written or None)."""
    import json
    from pathlib import Path

    from . import data
    from .evaluate import evaluate

    model = export.load_model(model_name).eval()
    tok = export.load_tokenizer(model_name)
    dsd = data.load_source(cfg.data)
    names = data.label_names(dsd)
    if len(names) > model.config.num_labels:
        raise data.DataError(
            f"the data has {len(names)} label values but the model's head has {model.config.num_labels}"
        )
    tk = data.tokenize(dsd, tok, cfg.data.max_length)
    result = evaluate(model, data.loader(tk[split], tok, batch_size=batch_size, shuffle=False))
    result.update(dataset=cfg.data.dataset, split=split, label_names=names)
    path = json_path
    if path is None and Path(model_name).is_dir():
        path = str(Path(model_name) / f"eval_{Path(cfg.data.dataset).stem}_{split}.json")
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(result, indent=2))
    return result, path


def format_metrics(m: dict) -> str:
    lines = [
        "| dataset | split | n | accuracy | macro-F1 | loss | examples/s |",
        "|---|---|---:|---:|---:|---:|---:|",
        f"| {m['dataset']} | {m['split']} | {m['n']} | {m['accuracy']:.4f} | {m['macro_f1']:.4f} | {m['loss']:.4f} | "
        f"{m['examples_per_s']:.1f} |",
        "",
        "confusion (rows = true, columns = predicted): " + ", ".join(m["label_names"]),
    ]
    lines += ["  " + " ".join(f"{v:>6}" for v in row) for row in m["confusion"]]
    return "\n".join(lines)
