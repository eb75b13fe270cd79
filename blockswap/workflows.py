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
    if "latency" in first:
        lat = first["latency"]
        note += f"; latency on {lat['device']} {lat['dtype']} {lat['threads']} threads, {lat['repeats']} repeats"
    if result["blocks"]:
        note += f"; substituted blocks {result['blocks']}"
    return "\n".join(lines + ["", note])
