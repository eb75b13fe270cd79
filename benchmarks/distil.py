"""Substitution vs an equal-budget baseline, at chosen points of an existing run.

    .venv/bin/python benchmarks/distil.py RUN_DIR [--steps 4,6] [--baseline distil|thesis] [--json FILE]

For each chosen curve step: the run's own baseline runner — `distil` (default: blocks dropped at the
nearest GMACs cut, every remaining weight trained by KD) or `thesis` (the seed thesis's procedure: the
same blocks, randomly initialised substitutes, labels only) — trained for the optimiser steps x batch the
substitution path spent to reach that step (its recovery included when the run recovered it), next to
the curve point; kept on test with 95 % paired-bootstrap intervals. A run made before the budget was
recorded gets it recomputed from its config.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import transformers
from finished_run import open_run  # benchmarks/finished_run.py

from blockswap.distill import steps_for
from blockswap.run.compare import RUNNERS
from blockswap.run.state import RunState

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir")
    parser.add_argument("--steps", default="4,6", help="curve steps to compare at")
    parser.add_argument("--baseline", choices=("distil", "thesis"), default="distil")
    parser.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "distil.json"))
    args = parser.parse_args()
    transformers.utils.logging.disable_progress_bar()
    run = Path(args.run_dir)
    cfg, accelerator, precision, teacher, data = open_run(run)
    state = RunState(cfg=cfg, out=run, accelerator=accelerator, data=data, teacher=teacher)
    curve = json.loads((run / "curve.json").read_text())
    blockwise_steps = steps_for(cfg.distill.blockwise_epochs, state.train_loader(cfg.run.seed))
    wanted = {int(s) for s in args.steps.split(",")}
    rows = []
    for r in curve["rows"][1:]:
        if r["step"] in wanted:
            r.setdefault("train_steps", blockwise_steps + r["step"] * cfg.distill.e2e_steps)
            r.setdefault("train_batch", cfg.distill.batch_size)
            rows.append(r)
    base = RUNNERS[args.baseline](state, rows, curve["teacher_validation_score"])
    result = {"run_dir": str(run), "precision": precision, "baseline": args.baseline, "points": []}
    for r, b in zip(rows, base, strict=True):
        point = {
            "step": r["step"],
            "substitution": {k: r.get(k) for k in ("substituted", "gmacs_cut", "kept", "kept_test", "kept_test_ci95",
                                                    "train_steps", "train_batch")},
            args.baseline: b,
        }  # fmt: skip
        result["points"].append(point)
        print(json.dumps({"step": r["step"], "substitution": point["substitution"], args.baseline: {
            k: b.get(k) for k in ("dropped", "gmacs_cut", "kept", "kept_test", "kept_test_ci95", "train_steps", "train_seconds")}}))  # fmt: skip
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
