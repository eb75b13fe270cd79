"""What each part of the recipe buys: block-wise epochs, curve steps, recovery epochs, kept-block LR, hidden-state weight.

    .venv/bin/python benchmarks/ablation.py RUN_DIR [--work DIR] [--variants "a;b"] [--json FILE]

RUN_DIR is a finished `blockswap run` (its fine-tuned teacher, data config, importance order and curve).
Every variant builds the students at the run's two key points -- the curve step nearest a 50 % GMACs cut
and the last step (every block substituted) -- from block-wise substitutes (trained once per number of
block-wise epochs and cached in --work), optionally takes the run's own curve students (block-wise + the
curve's end-to-end steps) instead, then runs recovery with the variant's settings. It records kept on the
test split with its 95 % paired interval, validation accuracy, and the budget (optimiser steps x batch
and seconds per phase). Results are written after every variant; a second call skips finished ones.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import transformers
from accelerate.utils import set_seed

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from finished_run import open_run  # noqa: E402  (benchmarks/finished_run.py)

from blockswap import arch, distill, export  # noqa: E402
from blockswap.evaluate import evaluate, kept_interval  # noqa: E402
from blockswap.run.compare import key_rows  # noqa: E402
from blockswap.substitute import load_substitutes, make_compact, save_substitutes, substitute  # noqa: E402

# name: (block-wise epochs or "curve" for the run's own curve students, recovery epochs, recovery overrides)
VARIANTS: dict[str, tuple[float | str, float, dict]] = {
    "curve (run's recipe), no recovery": ("curve", 0.0, {}),
    "bw2, no curve, no recovery": (2.0, 0.0, {}),
    "bw1, no curve, no recovery": (1.0, 0.0, {}),
    "bw2 + recovery 1": (2.0, 1.0, {}),
    "bw1 + recovery 1": (1.0, 1.0, {}),
    "bw2 + recovery 1, no hidden-state term": (2.0, 1.0, {"recovery_beta": 0.0}),
    "bw2 + recovery 1, substitutes only": (2.0, 1.0, {"recovery_freeze_kept": True}),
    "bw1 + recovery 1, substitutes only": (1.0, 1.0, {"recovery_freeze_kept": True}),
    "bw1 + recovery 0.5, substitutes only": (1.0, 0.5, {"recovery_freeze_kept": True}),
    "bw1 + recovery 1, substitutes only, no hidden-state term": (
        1.0,
        1.0,
        {"recovery_freeze_kept": True, "recovery_beta": 0.0},
    ),
    "curve + recovery 1": ("curve", 1.0, {}),
}


def _substitutes(teacher, data, cfg, accelerator, epochs: float, work: Path) -> tuple[dict, dict]:
    """Block-wise substitutes of every block after ``epochs``, cached; with their budget."""
    path, meta = work / f"substitutes_bw{epochs:g}.safetensors", work / f"substitutes_bw{epochs:g}.json"
    if path.is_file() and meta.is_file():
        return load_substitutes(path, teacher, cfg.compact), json.loads(meta.read_text())
    set_seed(cfg.run.seed)
    subs = {i: make_compact(teacher, cfg.compact, i) for i in range(arch.num_blocks(teacher))}
    started = time.perf_counter()
    batches = data.loader("train", shuffle=True, batch_size=64, seed=2)
    distill.init_linear(teacher, subs, [b for _, b in zip(range(20), batches, strict=False)])
    dcfg = dataclasses.replace(cfg.distill, blockwise_epochs=epochs)
    loader = data.loader("train", shuffle=True, batch_size=dcfg.batch_size, seed=cfg.run.seed)
    distill.blockwise(teacher, subs, loader, dcfg, accelerator=accelerator)
    budget = {"steps": distill.steps_for(epochs, loader), "seconds": time.perf_counter() - started}
    save_substitutes(subs, path)
    meta.write_text(json.dumps(budget))
    return subs, budget


def _recover(student, teacher, data, cfg, accelerator, epochs: float, overrides: dict) -> dict:
    """Recovery as the run's stage does it, with the variant's settings."""
    if epochs <= 0:
        return {"steps": 0, "seconds": 0.0}
    dcfg = dataclasses.replace(cfg.distill, recovery_epochs=epochs, **overrides)
    loader = data.loader("train", shuffle=True, batch_size=dcfg.batch_size, seed=cfg.run.seed + 1000)
    budget = distill.recover(student, teacher, loader, dcfg, accelerator=accelerator)
    return {"steps": budget["steps"], "seconds": budget["seconds"]}


def _point(student, data, teacher_test: dict) -> dict:
    val, test = evaluate(student, data.loader("validation")), evaluate(student, data.loader("test"))
    ci = kept_interval(teacher_test, test)
    return {"validation": val["score"], "test": test["score"], "kept_test": ci["kept"], "kept_test_ci95": ci["ci95"]}


def table(result: dict) -> str:
    """The ablation as a markdown table: kept on test [95 % CI] and validation accuracy per key point."""
    steps = list(result["points"])
    head = " | ".join(f"step {s} (GMACs -{result['points'][s]['gmacs_cut']:.1%}): kept test [CI], val" for s in steps)
    lines = [f"| variant | steps x 32 | {head} |", "|---|---:|" + "---|" * len(steps)]
    for name, row in result["variants"].items():
        cells = []
        for s in steps:
            p = row["points"][str(s)]
            cells.append(
                f"{p['kept_test']:.3f} [{p['kept_test_ci95'][0]:.3f}, {p['kept_test_ci95'][1]:.3f}], {p['validation']:.4f}"
            )
        budget = "/".join(str(row["points"][str(s)]["train_steps"]) for s in steps)
        lines.append(f"| {name} | {budget} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir")
    parser.add_argument("--work", default=None, help="cache of block-wise substitutes (default RUN_DIR/ablation)")
    parser.add_argument("--variants", default=";".join(VARIANTS), help="semicolon-separated variant names")
    parser.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "ablation.json"))
    parser.add_argument("--table", action="store_true", help="print the --json file as a markdown table and exit")
    args = parser.parse_args()
    if args.table:
        print(table(json.loads(Path(args.json).read_text())))
        return 0
    transformers.utils.logging.disable_progress_bar()
    run = Path(args.run_dir)
    work = Path(args.work or run / "ablation")
    work.mkdir(parents=True, exist_ok=True)
    cfg, accelerator, precision, teacher, data = open_run(run)
    teacher_test = evaluate(teacher, data.loader("test"))
    curve = json.loads((run / "curve.json").read_text())
    keys = key_rows(curve["rows"][1:])
    out_path = Path(args.json)
    result = json.loads(out_path.read_text()) if out_path.is_file() else {}
    result.update(
        run_dir=str(run), precision=precision, teacher_test=teacher_test["score"], n_test=len(data.splits["test"])
    )
    result["points"] = {r["step"]: {"substituted": r["substituted"], "gmacs_cut": r["gmacs_cut"]} for r in keys}
    variants = result.setdefault("variants", {})
    for name in [v for v in args.variants.split(";") if v]:
        if name in variants:
            continue
        source, rec_epochs, overrides = VARIANTS[name]
        row: dict = {"blockwise_epochs": source, "recovery_epochs": rec_epochs, **overrides, "points": {}}
        subs, bw_budget = (
            (None, {}) if source == "curve" else _substitutes(teacher, data, cfg, accelerator, source, work)
        )
        for r in keys:
            set_seed(cfg.run.seed)
            if source == "curve":
                folder = run / ("model" if r["step"] == curve["chosen_step"] else "model_last")
                student = export.load(folder)
                assert student.config.blockswap["substituted"] == sorted(r["substituted"]), folder
                budget = {"steps": r["train_steps"], "seconds": r["train_seconds"]}
            else:
                student = substitute(teacher, r["substituted"], cfg.compact, substitutes=subs)
                budget = dict(bw_budget)
            rec = _recover(student, teacher, data, cfg, accelerator, rec_epochs, overrides)
            row["points"][str(r["step"])] = {
                **_point(student.eval(), data, teacher_test),
                "train_steps": budget["steps"] + rec["steps"],
                "seconds": {"before_recovery": budget["seconds"], "recovery": rec["seconds"]},
            }
            print(name, r["step"], json.dumps(row["points"][str(r["step"])]), flush=True)
        variants[name] = row
        out_path.parent.mkdir(parents=True, exist_ok=True)
        out_path.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
