"""What recovery buys: a run's chosen and most compressed students, before and after recovery KD.

    .venv/bin/python benchmarks/recovery.py RUN_DIR [--epochs 1] [--beta 1.0] [--lr 5e-5] [--steps K,...]
        [--json FILE]

Uses the run's teacher, data and distillation config; each student gets ``--epochs`` of
`blockswap.distill.recover` (every weight trainable). The students are the run's saved ones
(RUN/model, RUN/model_last) or, with ``--steps``, the curve's step-K students rebuilt from the run's
teacher and block-wise substitutes (exact for runs whose curve trains nothing end to end,
``--e2e-steps 0``, the default). Reports validation and test accuracy, kept on
the test split with a 95 % paired-bootstrap interval, and the budget (steps x batch, wall seconds).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import torch
import transformers
from accelerate.utils import set_seed
from finished_run import open_run  # benchmarks/finished_run.py

from blockswap import export
from blockswap.distill import recover
from blockswap.evaluate import evaluate, paired_bootstrap
from blockswap.substitute import load_substitutes, substitute

ROOT = Path(__file__).resolve().parents[1]


def _scores(model, data, teacher_test: dict) -> dict:
    val, test = evaluate(model, data.loader("validation")), evaluate(model, data.loader("test"))
    ci = paired_bootstrap(torch.tensor(teacher_test["correct"]), torch.tensor(test["correct"]))
    return {
        "validation": val["score"],
        "test": test["score"],
        "test_loss": test.get("loss"),
        "kept_test": ci["kept"],
        "kept_test_ci95": ci["ci95"],
    }


def _students(run: Path, steps: str, teacher, cfg):
    """``(name, student)`` pairs: RUN/model and RUN/model_last, or the curve's step-K students rebuilt."""
    if not steps:
        yield from ((name, export.load(run / name)) for name in ("model", "model_last") if (run / name).is_dir())
        return
    if cfg.distill.e2e_steps:
        raise SystemExit(f"--steps rebuilds curve students from block-wise substitutes only; {run} trained "
                         f"{cfg.distill.e2e_steps} end-to-end steps per swap")  # fmt: skip
    rows = json.loads((run / "curve.json").read_text())["rows"]
    subs = load_substitutes(run / "substitutes.safetensors", teacher, cfg.compact)
    for k in (int(x) for x in steps.split(",")):
        blocks = rows[k]["substituted"]
        yield f"step{k}", substitute(teacher, blocks, substitutes={i: subs[i] for i in blocks}).requires_grad_(True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir")
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--beta", type=float, default=1.0)
    parser.add_argument("--lr", type=float, default=5e-5)
    parser.add_argument("--steps", default="", help="comma-separated curve steps to rebuild and recover instead")
    parser.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "recovery.json"))
    args = parser.parse_args()
    transformers.utils.logging.disable_progress_bar()
    run = Path(args.run_dir)
    cfg, accelerator, precision, teacher, data = open_run(run)
    dcfg = dataclasses.replace(cfg.distill, recovery_epochs=args.epochs, recovery_beta=args.beta, recovery_lr=args.lr)
    teacher_test = evaluate(teacher, data.loader("test"))
    result = {"run_dir": str(run), "precision": precision, "epochs": args.epochs, "beta": args.beta, "lr": args.lr,
              "teacher": {"validation": evaluate(teacher, data.loader("validation"))["score"],
                          "test": teacher_test["score"]}, "students": {}}  # fmt: skip
    for name, student in _students(run, args.steps, teacher, cfg):
        set_seed(cfg.run.seed)
        row = {"substituted": student.config.blockswap["substituted"], "before": _scores(student, data, teacher_test)}
        loader = data.loader("train", shuffle=True, batch_size=dcfg.batch_size, seed=cfg.run.seed + 1000)
        budget = recover(student, teacher, loader, dcfg, accelerator=accelerator)
        row["after"] = _scores(student, data, teacher_test)
        row["budget"] = {k: v for k, v in budget.items() if k != "log"}
        result["students"][name] = row
        print(name, json.dumps({k: row[k] for k in ("before", "after", "budget")}))
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
