"""Plain-text (markdown) tables that the CLI prints."""

from __future__ import annotations

import functools


def _table_row(name: str, values: list[str], width: int = 14) -> str:
    return f"| {name:<22} | " + " | ".join(f"{v:>{width}}" for v in values) + " |"


def measure_table(result: dict) -> str:
    """A markdown table: baseline (if any), before, after; cut columns; a note on how it was measured."""
    cols = [(result["baseline_name"], result["baseline"])] if "baseline" in result else []
    cols.append(("before", result["before"]))
    if "after" in result:
        dropped = len(result.get("dropped", []))
        label = f"{len(result['blocks']) - dropped} swapped" + (f", {dropped} dropped" if dropped else "")
        cols.append((f"after ({label})", result["after"]))
    cuts = [("cut", result["cut"])] if "cut" in result else []
    if "cut_vs_baseline" in result:
        cuts.append((f"cut vs {result['baseline_name']}", result["cut_vs_baseline"]))
    batch = result["before"]["macs"]["batch"]
    lat_key = f"latency_b{batch}"
    width = max(14, *(len(c[0]) for c in cols + cuts))  # headers whole ("after (12 swapped)")
    row = functools.partial(_table_row, width=width)
    lines = [row("", [c[0] for c in cols + cuts])]
    lines.append("|" + "|".join(["-" * 24] + ["-" * (width + 2)] * (len(cols) + len(cuts))) + "|")
    p_cells = [f"{c['params']['total'] / 1e6:.2f}" for _, c in cols] + [f"{x['params_cut']:.1%}" for _, x in cuts]
    lines.append(row("params (M)", p_cells))
    lines.append(row("encoder params (M)", [f"{c['params']['encoder'] / 1e6:.2f}" for _, c in cols] + [""] * len(cuts)))
    lines.append(
        row("GMACs", [f"{c['macs']['gmacs']:.3f}" for _, c in cols] + [f"{x['gmacs_cut']:.1%}" for _, x in cuts])
    )
    if all(lat_key in c for _, c in cols):
        cells = [f"{c[lat_key]['median_ms']:.2f}" for _, c in cols] + [
            f"x{x[f'speedup_b{batch}']:.2f}" for _, x in cuts
        ]
        lines.append(row("latency ms (median)", cells))
    last = cols[-1][1]
    note = f"batch {batch}, seq {last['macs']['seq_len']}, MACs counted with eager attention"
    if last.get("peak_memory_mb") is not None:
        note += f"; peak accelerator memory {last['peak_memory_mb']:.0f} MiB"
    else:
        note += f"; process peak RSS {last['process_peak_rss_mb']:.0f} MiB"
    if lat_key in last:
        lat = last[lat_key]
        note += f"; latency on {lat['device']} {lat['dtype']} {lat['threads']} threads, {lat['repeats']} repeats"
    dropped = result.get("dropped", [])
    if result["blocks"]:
        note += f"; substituted blocks {[b for b in result['blocks'] if b not in dropped]}"
    if dropped:
        note += f", dropped {dropped}"
    return "\n".join(lines + ["", note])


# Columns of `evaluate`'s table for tasks other than classification: (header, metrics key).
_COLUMNS = {
    "pearson": [("Pearson", "pearson"), ("Spearman", "spearman"), ("MSE", "mse")],
    "f1": [("entity F1", "f1"), ("precision", "precision"), ("recall", "recall"), ("word accuracy", "word_accuracy")],
}


def metrics_table(m: dict) -> str:
    if m["metric"] in _COLUMNS:
        cols = _COLUMNS[m["metric"]]
        lines = [
            "| dataset | split | n | " + " | ".join(h for h, _ in cols) + " | examples/s |",
            "|---|---|---:|" + "---:|" * (len(cols) + 1),
            f"| {m['dataset']} | {m['split']} | {m['n']} | "
            + " | ".join(f"{m[k]:.4f}" for _, k in cols)
            + f" | {m['examples_per_s']:.1f} |",
        ]
        return "\n".join(lines + (["", "tags: " + ", ".join(m["label_names"])] if m["metric"] == "f1" else []))
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


def export_summary(folder: str, meta: dict) -> str:
    """What `blockswap export` did: files and sizes, parity, test accuracy per runtime."""
    p, t = meta["parity"], meta.get("test", {})
    sizes = ", ".join(f"{name} {size / 2**20:.1f} MiB" for name, size in meta["bytes"].items())
    what, agreement = p.get("output", "logits"), p["argmax_agreement"]
    agreement = "" if agreement is None else f", argmax agreement {agreement:.4f}"
    scales = f", int8 with {meta['int8_scales']} scales" if "int8_scales" in meta else ""
    fused = f", {meta['attention_fused']} attention layers as one fused operator" if meta.get("attention_fused") else ""
    lines = [
        f"exported {folder}: {sizes} (opset {meta['opset']}{scales}{fused})",
        f"parity vs PyTorch on {p['n']} real sentences (batch x length {p['shapes']}): max |Δ{what}| "
        f"{p['max_abs_logit_diff']:.2e}{agreement} -> {'passed' if p['passed'] else 'FAILED'}",
    ]
    if meta.get("task") == "embedding" and t:  # agreement of each runtime's embeddings with PyTorch's
        runtimes = [r for r in ("onnx_fp32", "onnx_int8") if f"{r}_mean_cosine" in t]
        lines.append(
            f"test texts (n={t['n']}) vs PyTorch's embeddings: "
            + ", ".join(
                f"{r.replace('_', ' ')} mean cosine {t[f'{r}_mean_cosine']:.4f}, recall@10 {t[f'{r}_recall@10']:.4f}"
                for r in runtimes
            )  # fmt: skip
        )
    elif t:
        name = t.get("metric", "accuracy")
        acc = f"test {name} (n={t['n']}): torch {t[f'torch_{name}']:.4f}, onnx fp32 {t[f'onnx_fp32_{name}']:.4f}"
        if f"onnx_int8_{name}" in t:
            acc += f", onnx int8 {t[f'onnx_int8_{name}']:.4f}"
        if "int8_argmax_agreement_with_fp32" in t:
            acc += f" (argmax = fp32 on {t['int8_argmax_agreement_with_fp32']:.1%})"
        lines.append(acc)
    return "\n".join(lines)


def baseline_ahead(b: dict, folder: str) -> str:
    """One line for a saved baseline student that keeps more on test than the substitution path's student at the
    same curve point, beyond the paired interval (an entry of summary.json's ``baselines_ahead``)."""
    adv = b["blockswap_advantage"]
    lo, hi = adv["ci95"]
    return (
        f"the {b['baseline']} baseline's student {folder} (GMACs -{b['gmacs_cut']:.1%}) keeps {b['kept_test']:.4f} on "
        f"test, {-adv['kept_test']:.4f} [{-hi:.4f}, {-lo:.4f}] more than step {b['step']}'s substituted student: "
        "ahead beyond noise; it is a plain model folder of the teacher's class"
    )


def time_budget(tb: dict) -> str:
    """What ``--time-budget`` left of the training stages (summary.json's ``time_budget``)."""
    parts = [
        f"{name} {tb[key]['steps']} of {tb[key]['planned_steps']} steps"
        for key, name in (("blockwise", "block-wise distillation"), ("recovery", "recovery"))
        if key in tb
    ]
    verdict = "cut to fit" if tb["cut"] else "nothing cut"
    if tb.get("over"):
        taken, fixed = tb["seconds_taken"], tb["seconds_taken"] - tb["training_seconds"]
        verdict = (
            f"{'cut' if tb['cut'] else 'nothing cut'}, and over by {taken - tb['seconds']:.0f} s: {taken:.0f} s by the "
            f"summary, {fixed:.0f} s of them in what it does not shorten (all but block-wise distillation and recovery)"
        )
        if fixed > tb["seconds"]:
            verdict += ": a budget below that cannot be met"
    return f"--time-budget {tb['seconds']:g} s: {', '.join(parts)} ({verdict})"


def dropped_note(summary: dict) -> str:
    """``", block 3 dropped"`` for a hybrid student (--drop-blocks) in summary.json; '' otherwise."""
    dropped = summary.get("chosen_dropped") or []
    return f"; {'block' if len(dropped) == 1 else 'blocks'} {', '.join(map(str, dropped))} dropped" if dropped else ""
