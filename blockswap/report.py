"""Render a run folder's JSON artifacts into report.md and PNG plots. Reads only; never computes."""

from __future__ import annotations

import json
import math
from pathlib import Path

import yaml

from . import tables
from .compact import CompactSpec
from .files import write_text


def _load(run_dir: Path, name: str):
    p = run_dir / name
    return json.loads(p.read_text()) if p.is_file() else None


def _plots(run_dir: Path, curve: dict, imp: dict | None, base: dict | None, recovered: dict) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    made = [_curve_plot(plt, run_dir, curve["rows"], _metric(curve))]
    if imp:
        made.append(_importance_plot(plt, run_dir, imp))
    if base:
        made.append(_baselines_plot(plt, run_dir, curve["rows"], base, recovered))
    if curve["rows"][0].get("test_metrics"):
        made.append(_metrics_plot(plt, run_dir, curve["rows"]))
    return made


def _metrics_plot(plt, run_dir: Path, rows: list[dict]) -> str:
    """Every test metric of the task (mean cosine, Spearman, precision, macro-F1, ...) against the GMACs cut."""
    names = list(rows[0]["test_metrics"])
    fig, axes = plt.subplots(1, len(names), figsize=(3.6 * len(names), 3.4), squeeze=False)
    for ax, name in zip(axes[0], names, strict=True):
        ax.plot([r["gmacs_cut"] * 100 for r in rows], [r["test_metrics"].get(name) for r in rows], "o-")
        ax.set_xlabel("GMACs cut (%)")
        ax.set_title(f"test {name}")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(run_dir / "metrics.png", dpi=110)
    plt.close(fig)
    return "metrics.png"


def _curve_plot(plt, run_dir: Path, rows: list[dict], metric: str) -> str:
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, key, label in ((axes[0], "params_cut", "parameters cut"), (axes[1], "gmacs_cut", "GMACs cut")):
        ax.plot([r[key] * 100 for r in rows], [r["kept"] * 100 for r in rows], "o-", label="block substitution")
        for r in rows[1:]:
            ax.annotate(
                str(r["block"]), (r[key] * 100, r["kept"] * 100), textcoords="offset points", xytext=(4, 4), fontsize=8
            )
        ax.axhline(99, color="grey", ls=":", lw=1)
        ax.set_xlabel(f"{label} (%)")
        ax.set_ylabel(f"validation {metric} kept (%)")
        ax.grid(alpha=0.3)
    axes[0].set_title(f"{metric} kept vs parameters cut (labels: block)")
    axes[1].set_title(f"{metric} kept vs GMACs cut")
    fig.tight_layout()
    fig.savefig(run_dir / "curve.png", dpi=110)
    plt.close(fig)
    return "curve.png"


def _importance_plot(plt, run_dir: Path, imp: dict) -> str:
    names = list(imp["normalised"])
    grid = [
        [0.0 if (v is None or (isinstance(v, float) and math.isnan(v))) else v for v in imp["normalised"][n]]
        for n in names
    ]
    grid.append([0.0 if (v is None or (isinstance(v, float) and math.isnan(v))) else v for v in imp["combined"]])
    fig, ax = plt.subplots(figsize=(1.2 + 0.7 * len(grid[0]), 0.6 + 0.45 * len(grid)))
    im = ax.imshow(grid, cmap="viridis", aspect="auto", vmin=0, vmax=1)
    ax.set_yticks(range(len(grid)), names + ["combined"])
    ax.set_xticks(range(len(grid[0])), [str(i) for i in range(len(grid[0]))])
    ax.set_xlabel("block")
    ax.set_title("block importance (normalised per signal)")
    fig.colorbar(im, ax=ax)
    fig.tight_layout()
    fig.savefig(run_dir / "importance.png", dpi=110)
    plt.close(fig)
    return "importance.png"


def _baselines_plot(plt, run_dir: Path, rows: list[dict], base: dict, recovered: dict) -> str:
    """Kept vs GMACs cut (baselines that cut GMACs) and vs parameters cut (all of them)."""
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    rec = [(rows[int(step)], r["kept_validation_after"]) for step, r in recovered.items()]
    for ax, key, label in ((axes[0], "gmacs_cut", "GMACs cut"), (axes[1], "params_cut", "parameters cut")):
        ax.plot([r[key] * 100 for r in rows], [r["kept"] * 100 for r in rows], "o-", label="block substitution")
        if rec:
            ax.plot([r[key] * 100 for r, _ in rec], [k * 100 for _, k in rec], "*", ms=12, label="+ recovery")
        for name in base.get("descriptions", {}):
            points = [r for r in base[name] if key in r]
            if points:
                ax.plot([r[key] * 100 for r in points], [r["kept"] * 100 for r in points], "s--", label=name)
        ax.set_xlabel(f"{label} (%)")
        ax.set_ylabel("validation score kept (%)")
        ax.grid(alpha=0.3)
        ax.legend()
    axes[0].set_title("substitution vs baselines at equal cost (GMACs)")
    axes[1].set_title("substitution vs baselines (parameters)")
    fig.tight_layout()
    fig.savefig(run_dir / "baselines.png", dpi=110)
    plt.close(fig)
    return "baselines.png"


def _pct(x: float) -> str:
    return f"{x * 100:.1f} %"


def _interval(ci: list[float] | None) -> str:
    return "" if ci is None else f"[{ci[0]:.3f}, {ci[1]:.3f}]"


def _metric(curve: dict) -> str:
    return curve.get("metric", "accuracy")


def _base_cell(b: dict | None) -> str:
    """A baseline's kept on validation, and on test with its interval where it has one."""
    if b is None:
        return ""
    test = f"; test {_kept_ci(b['kept_test'], b.get('kept_test_ci95'))}" if "kept_test" in b else ""
    adv = b.get("blockswap_advantage")
    if adv:
        test += f"; blockswap {adv['kept_test']:+.4f} {_interval(adv['ci95'])}"
    return f"{b['kept']:.4f}{test}"


def _kept_ci(kept: float | None, ci: list[float] | None) -> str:
    return "" if kept is None else f"{kept:.4f} {_interval(ci)}"


def _curve_table(curve: dict, final: int | None = None) -> list[str]:
    """The curve's rows; ``final`` (the summary's chosen step, which recovery may have moved) is marked chosen."""
    final = curve.get("chosen_step") if final is None else final
    lines = [
        f"| step | block | substituted | params (M) | params cut | GMACs | GMACs cut | val {_metric(curve)} | kept (val) | test {_metric(curve)} "
        "| kept (test) [95 % CI] | latency ms |",
        "|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in curve["rows"]:
        mark = " **(chosen)**" if r["step"] == final else ""
        lines.append(
            f"| {r['step']}{mark} | {_block_cell(r)} | {r['substituted']} | {r['params'] / 1e6:.2f} | "
            f"{_pct(r['params_cut'])} | {r['gmacs']:.3f} | {_pct(r['gmacs_cut'])} | {r['score']:.4f} | {r['kept']:.4f} | "
            f"{r['test_score']:.4f} | {_kept_ci(r.get('kept_test'), r.get('kept_test_ci95'))} | {r['latency_ms']:.1f} |"
        )
    return lines


def _block_cell(row: dict) -> str:
    """The block a curve step swapped in a substitute for, or dropped (a hybrid's first steps)."""
    if row["block"] is None:
        return ""
    return f"{row['block']} (dropped)" if row["block"] in row.get("dropped", ()) else str(row["block"])


def _metrics_table(curve: dict) -> list[str]:
    """The task's other test metrics per step (plotted in metrics.png)."""
    rows = curve["rows"]
    names = list(rows[0].get("test_metrics") or {})
    if not names:
        return []
    lines = ["Other test metrics per step (`metrics.png`):", "", "| step | GMACs cut | " + " | ".join(names) + " |"]
    lines.append("|---:|---:|" + "---:|" * len(names))
    for r in rows:
        cells = [f"{r['test_metrics'].get(n, float('nan')):.4f}" for n in names]
        lines.append(f"| {r['step']} | {_pct(r['gmacs_cut'])} | " + " | ".join(cells) + " |")
    return lines + [""]


def _baseline_table(curve: dict, base: dict, recovered: dict) -> list[str]:
    names = list(base.get("descriptions", {}))
    lines = ["| step | GMACs cut | params cut | substitution kept | " + " | ".join(f"{n} kept" for n in names) + " |"]
    lines.append("|---:|---:|---:|---:|" + "---:|" * len(names))
    by_step = {n: {b["step"]: b for b in base[n]} for n in names}  # baselines may cover the key steps only
    for r in curve["rows"][1:]:
        cells = [_base_cell(by_step[n].get(r["step"])) for n in names]
        if not any(cells) and base.get("descriptions"):
            continue
        rec = recovered.get(str(r["step"]))
        ours = (
            _base_cell(r) if rec is None else _base_cell({**rec, "kept": rec["kept_validation_after"]}) + " (recovered)"
        )
        cut = f"{_pct(r['gmacs_cut'])} | {_pct(r['params_cut'])}"
        lines.append(f"| {r['step']} | {cut} | {ours} | " + " | ".join(cells) + " |")
    return lines


def _recovery_table(curve: dict, recovered: dict) -> list[str]:
    lines = ["", "## Recovery", "", "The student trained end to end by KD after the curve (`--recovery-epochs`; every weight "
             "unless `--recovery-freeze-kept`); the equal-budget baselines at these steps get the same extra steps.", "",
             f"| step | GMACs cut | steps x batch | seconds | val {_metric(curve)} before -> after | kept (val) after "
             "[95 % CI] | kept (test) before | kept (test) after [95 % CI] |", "|---:|---:|---:|---:|---|---:|---:|---:|"]  # fmt: skip
    for step, r in recovered.items():
        row = curve["rows"][int(step)]
        lines.append(
            f"| {step} | {_pct(row['gmacs_cut'])} | {r['steps']} x {r['batch_size']} | {r['seconds']:.0f} | "
            f"{r['validation_before']:.4f} -> {r['validation_after']:.4f} | "
            f"{_kept_ci(r.get('kept_validation_after'), r.get('kept_validation_after_ci95'))} | "
            f"{r['kept_test_before']:.4f} | {_kept_ci(r['kept_test'], r['kept_test_ci95'])} |"
        )
    return lines


def _upgrade(curve: dict, summary: dict | None, ev: dict | None) -> None:
    """Read a run written before tasks had a named main metric (accuracy keys) as accuracy scores."""
    for r in curve["rows"]:
        r.setdefault("score", r.get("accuracy"))
        r.setdefault("test_score", r.get("test_accuracy"))
    if summary is not None and "metric" not in summary:
        summary.update(metric="accuracy", teacher_test_score=summary.get("teacher_test_accuracy"))
        summary["student_test_score"] = summary.get("student_test_accuracy")
    for side in (ev or {}).values():
        if isinstance(side, dict) and "test" in side:
            side["test"].setdefault("metric", "accuracy")
            side["test"].setdefault("score", side["test"].get("accuracy"))


def render(run_dir: str | Path) -> Path:
    """Write ``report.md`` (and plots) for a run folder; returns the report path."""
    run_dir = Path(run_dir)
    curve = _load(run_dir, "curve.json")
    if curve is None:
        raise FileNotFoundError(f"{run_dir} has no curve.json; run `blockswap run` first")
    summary, ev = _load(run_dir, "summary.json"), _load(run_dir, "evaluation.json")
    _upgrade(curve, summary, ev)
    imp, base, teacher = (
        _load(run_dir, "importance.json"),
        _load(run_dir, "baselines.json"),
        _load(run_dir, "teacher.json"),
    )
    recovered = (_load(run_dir, "recovery.json") or {}).get("students", {})  # older runs: a flat dict, not shown
    plots = _plots(run_dir, curve, imp, base, recovered)
    md = [f"# blockswap run: {run_dir.name}", ""] + _summary_lines(summary, teacher) + _substitute_line(run_dir)
    md += (
        ["## Substitution curve", "", "![curve](curve.png)", ""]
        + _curve_table(curve, (summary or {}).get("chosen_step"))
        + [""]
    )
    md += _metrics_table(curve)
    md += _stop_rule_line(summary, curve)
    md += [f"`kept (val)` = validation {_metric(curve)} / the teacher's (the stop rule uses it); `kept (test)` = the same on "
           "the test split with a 95 % paired-bootstrap interval (teacher and student resampled on the same "
           "sentences); where two points' intervals overlap, their difference is within noise. Cuts are fractions "
           "of the teacher."]  # fmt: skip
    if recovered:
        md += _recovery_table(curve, recovered)
    if ev:
        md += _evaluation_lines(ev)
    if imp:
        md += ["", "## Block importance", "", "![importance](importance.png)", ""]
        md += [f"Order (least important first): {imp['order']}"]
    if base:
        md += ["", "## Baselines", "", "![baselines](baselines.png)", ""] + _baseline_table(curve, base, recovered)
        md += [
            "",
            "Each cell: kept on validation; test: kept on the test split with its 95 % paired interval; blockswap: "
            "how much more the substitution path's student at that point keeps on test (recovered when it was), "
            "with a 95 % interval paired on the same sentences — above 0 means blockswap is ahead beyond noise (the "
            "budgeted baselines' own cuts are in baselines.json: `distil` drops whole blocks at the nearest GMACs cut).",
        ]
        md += [""] + [f"- `{name}`: {text}" for name, text in base.get("descriptions", {}).items()]
    pruned = _load(run_dir, "vocab.json")
    if pruned:
        md += ["", "## Smaller vocabulary (model_vocab)", ""] + _vocab_lines(pruned)
    exported = _load(run_dir, "export.json")
    if exported:
        md += ["", "## ONNX export", ""]
        for name in ("teacher", "student"):
            if name in exported:
                md += [f"- {line}" for line in tables.export_summary(f"onnx/{name}", exported[name]).splitlines()]
        if "latency" in exported.get("teacher", {}) and "latency" in exported.get("student", {}):
            md += [""] + _ort_latency_lines(exported)
    md += ["", "Plots: " + ", ".join(plots)]
    out = run_dir / "report.md"
    write_text(out, "\n".join(md) + "\n")
    return out


def _sessions(setup: dict) -> str:
    n = setup.get("sessions", 1)  # older runs: one session
    return f"{n} sessions' medians, each of " if n > 1 else ""


def _ort_latency_lines(exported: dict) -> list[str]:
    """export.json's ONNX Runtime latencies: teacher and student per batch and precision, the student's speed-up
    over the teacher in the same runtime."""
    t, s, setup = exported["teacher"]["latency"], exported["student"]["latency"], exported["latency_setup"]
    cols = [(case, rt) for case in t for rt in ("ort_fp32", "ort_int8") if rt in t[case] and rt in s.get(case, {})]
    shape = {case: "×".join(map(str, t[case][rt]["batch"])) for case, rt in cols}
    md = [
        "| ONNX Runtime, median ms | " + " | ".join(f"{rt[4:]} {shape[case]}" for case, rt in cols) + " |",
        "|---|" + "---:|" * len(cols),
        "| teacher | " + " | ".join(f"{t[case][rt]['median_ms']:.1f}" for case, rt in cols) + " |",
        "| student | " + " | ".join(
            f"{s[case][rt]['median_ms']:.1f} (×{t[case][rt]['median_ms'] / s[case][rt]['median_ms']:.2f})"
            for case, rt in cols
        ) + " |",
        "",
        f"Median of {_sessions(setup)}{setup['repeats']} after {setup['warmup']} warm-up, {setup['threads']} threads (as torch); batch ×"
        " sequence in each header: random full-length ids at the measurement length, then the test split's (up to 32)"
        " longer-half sentences padded to their longest; (×N): the student's speed-up over the teacher in the same"
        " runtime.",
    ]  # fmt: skip
    return md


def _vocab_lines(v: dict) -> list[str]:
    """vocab.json in words: what was kept, what it cost on the test split (older runs' files lack some fields)."""
    against = " of the unpruned student's embeddings" if v["metric"].startswith("recall@") else ""
    score = f"- test {v['metric']}{against}: {v['test_score_before']:.4f} → {v['test_score_after']:.4f}"
    if "kept" in v:
        score += f", kept {_kept_ci(v['kept'], v.get('kept_ci95'))} (n = {v['n_test']})"
    if "test_texts_all_tokens_kept" in v:
        score += f"; {v['test_texts_all_tokens_kept']:.1%} of the test texts use only kept tokens (identical outputs)"
    if "dropped_rows" in v:
        how = f"The tokenizer is unchanged: each token the training texts never use reads {v['dropped_rows']}."
    elif "test_texts_all_tokens_kept" in v:
        how = "The tokenizer is unchanged: each token the training texts never use reads the kept row nearest its own (cosine)."
    else:
        how = (
            "Made by an older blockswap: the tokenizer was pruned too, and unseen words were re-split into kept pieces."
        )
    lines = [
        f"- {v['vocab_before']:,} → {v['vocab_after']:,} word-embedding rows kept (−{v['word_embedding_cut']:.1%}); "
        f"parameters {v['params_before'] / 1e6:.2f} M → {v['params_after'] / 1e6:.2f} M. {how}",
        score,
    ]
    if "mean_cosine_to_unpruned" in v:
        lines.append(f"- mean cosine to the unpruned student's test embeddings: {v['mean_cosine_to_unpruned']:.4f}")
    return lines


def _stop_rule_line(summary: dict | None, curve: dict) -> list[str]:
    """How the chosen step was chosen, when recovery moved it past the curve's own choice."""
    if not summary or summary.get("chosen_step") in (None, curve.get("chosen_step")):
        return []
    before = (
        "no step kept the minimum on validation"
        if curve.get("chosen_step") is None
        else f"step {curve.get('chosen_step')} was the last to keep the minimum on validation"
    )
    return [
        f"Stop rule `recovered`: before recovery, {before}; after recovery the last step's student keeps it, so it "
        "is the chosen one.",
        "",
    ]


def _recovered(summary: dict) -> str:
    steps = summary.get("recovery_steps", 0)
    return f", after {steps} steps of recovery" if steps else ""


def _summary_lines(summary: dict | None, teacher: dict | None) -> list[str]:
    md = []
    if summary:
        md += [
            f"- teacher test {summary['metric']}: **{summary['teacher_test_score']:.4f}**",
            f"- chosen student (step {summary['chosen_step']}, blocks {summary['chosen_blocks']}{tables.dropped_note(summary)}"
            f"{_recovered(summary)}): test {summary['metric']} "
            f"**{summary['student_test_score']:.4f}**, kept **{summary['kept_test']:.4f}** "
            f"(95 % paired-bootstrap interval {_interval(summary.get('kept_test_ci95'))} "
            f"over {summary.get('n_test')} test sentences)",
            f"- parameters cut {_pct(summary['params_cut'])}, GMACs cut {_pct(summary['gmacs_cut'])}, "
            f"speed-up x{summary['speedup_b1']:.2f} (batch 1) / x{summary['speedup_b32']:.2f} (batch 32)",
            f"- wall time: {_stage_seconds(summary['seconds_per_stage'])}{_host(summary)}",
        ]
        ahead = summary.get("baselines_ahead", [])
        md += ["- **Behind a baseline here**: " + tables.baseline_ahead(b, "`" + b["folder"] + "`") for b in ahead]
        if "time_budget" in summary:
            tb = summary["time_budget"]
            head = (
                "**Over the time budget**: "
                if tb.get("over")
                else "**Trained less to fit the time**: "
                if tb["cut"]
                else ""
            )
            md += ["- " + head + tables.time_budget(tb)]
        md += [""]
    if teacher:
        md += [f"Teacher: `{teacher.get('source')}`.", ""]
    return md


def _substitute_line(run_dir: Path) -> list[str]:
    """The substitute's shape from the run's config.yaml (it depends on the task and the flags); [] without one."""
    path = run_dir / "config.yaml"
    saved = (yaml.safe_load(path.read_text()) or {}) if path.is_file() else {}
    c, drop = saved.get("compact") or {}, (saved.get("run") or {}).get("drop_blocks") or 0
    if not c:
        return []
    spec = CompactSpec.from_dict(c)
    layers = f"{spec.layers} transformer layer{'s' if spec.layers != 1 else ''}"
    line = (
        f"Substitute: down to {spec.hidden}, {layers} × {spec.heads} heads (feed-forward {spec.ffn_size}, "
        f"{spec.activation}), up again, plus the residual (`compact` in config.yaml)."
    )
    if drop:
        n = "block" if drop == 1 else f"{drop} blocks"
        line += (
            f" Hybrid students (`--drop-blocks {drop}`): the curve's first {drop} step{'s' if drop > 1 else ''} "
            f"drop the least important {n} outright (as layer removal does); the later steps substitute."
        )
    return [line, ""]


def _stage_seconds(seconds: dict) -> str:
    """``teacher 131 s, importance 30 s, … (this invocation 498 s)``: a resumed run's total counts only its own stages."""
    parts = [f"{name} {value:.0f} s" for name, value in seconds.items() if name != "total_this_invocation"]
    total = seconds.get("total_this_invocation")
    return ", ".join(parts) + (f" (this invocation {total:.0f} s)" if total is not None else "")


def _host(summary: dict) -> str:
    """`` on CPU, N cores, training in P`` for the wall-time line (runs before it was recorded: nothing)."""
    h = summary.get("host")
    if not h:
        return ""
    precision = summary.get("training_precision")
    return f" on {h['cpu']}, {h['cores']} cores" + (f", training in {precision}" if precision else "")


def _evaluation_lines(ev: dict) -> list[str]:
    lt, ls = ev["teacher"]["latency_b32"], ev["student"]["latency_b32"]
    md = [
        "",
        "## Teacher vs chosen student (test split)",
        "",
        f"| | test {ev['teacher']['test']['metric']} | params (M) | GMACs | latency b1 (ms) | latency b32 (ms) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name in ("teacher", "student"):
        e = ev[name]
        md.append(
            f"| {name} | {e['test']['score']:.4f} | {e['params']['total'] / 1e6:.2f} | {e['macs']['gmacs']:.3f} | "
            f"{e['latency_b1']['median_ms']:.1f} | {e['latency_b32']['median_ms']:.1f} |"
        )
    md += ["", f"Latency: median of {lt['repeats']} after {lt['warmup']} warm-up, seq {lt['seq_len']}, "
           f"{lt['device']} {lt['dtype']}, {lt['threads']} threads; student spread p10-p90 "
           f"{ls['p10_ms']:.1f}-{ls['p90_ms']:.1f} ms at batch 32."]  # fmt: skip
    if "probe" in ev:
        p = ev["probe"]
        md += ["", f"Logistic-regression probe on the embeddings (test accuracy): teacher {p['teacher']:.4f}, "
               f"student {p['student']:.4f}."]  # fmt: skip
    if "sts" in ev:
        s = ev["sts"]
        md += ["", f"STS ({s['dataset']}, {s['split']}, {s['pairs']} pairs), Spearman of cosine similarity with the "
               f"gold scores: teacher {s['teacher']:.4f}, student {s['student']:.4f}."]  # fmt: skip
    return md
