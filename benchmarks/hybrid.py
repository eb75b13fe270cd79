"""Hybrid students — some blocks dropped, some substituted — at equal budget, on a finished run.

    .venv/bin/python benchmarks/hybrid.py RUN_DIR --plan drop=3,4:sub=0 [--plan ...] [--json FILE]

Each plan's student is the run's teacher with the ``drop`` blocks removed and the ``sub`` blocks replaced by
the run's block-wise-trained substitutes (RUN/substitutes.safetensors), then trained as the recovery stage
trains a student (every weight at the recovery learning rate, warm-up and linear decay, for recovery_epochs;
hidden-state MSE at the substituted blocks' outputs, none at a dropped block's). Its budget is the run's
block-wise steps plus those: what the substitution path's recovered students and the ``distil`` baseline
beside them got. Reported: GMACs and parameter cuts, kept on test with its 95 % paired interval, and the
paired difference to every recovered student (recovery.json) and every ``distil`` student (baselines.json)
of the run, on the same test texts. Run with ``--recover-key --baselines distil`` for both.
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
from finished_run import open_run  # benchmarks/finished_run.py

from blockswap import distill, measure
from blockswap.evaluate import kept_difference, kept_interval
from blockswap.run.state import RunState
from blockswap.substitute import load_substitutes, substitute

ROOT = Path(__file__).resolve().parents[1]


def parse_plan(text: str) -> tuple[list[int], list[int]]:
    """``drop=3,4:sub=0`` -> ([3, 4], [0]); either part may be left out."""
    parts = dict(p.split("=", 1) for p in text.split(":") if p)
    if set(parts) - {"drop", "sub"}:
        raise SystemExit(f"--plan {text!r}: use drop=I,J:sub=K,L")
    drop, sub = ([int(i) for i in parts.get(k, "").split(",") if i] for k in ("drop", "sub"))
    if set(drop) & set(sub) or not (drop or sub):
        raise SystemExit(f"--plan {text!r}: a block is either dropped or substituted, and at least one is")
    return drop, sub


def build(teacher, substitutes: dict, drop: list[int], sub: list[int], spec):
    """The teacher with ``sub`` substituted (trained substitutes) and ``drop`` replaced by identity blocks."""
    return substitute(teacher, sub, spec, substitutes={i: substitutes[i] for i in sub}, dropped=drop).requires_grad_(
        True
    )


def references(run: Path) -> dict[str, dict]:
    """The run's recovered substituted students and distil students: name -> per-example test results."""
    refs = {}
    rec = json.loads((run / "recovery.json").read_text())["students"] if (run / "recovery.json").is_file() else {}
    for step, r in rec.items():
        refs[f"substituted {r['substituted']} (step {step}, recovered)"] = r["test_per_example"]
    base = json.loads((run / "baselines.json").read_text()) if (run / "baselines.json").is_file() else {}
    for b in base.get("distil", []):
        refs[f"distil, dropped {b['dropped']} (step {b['step']})"] = b["test_per_example"]
    return refs


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir")
    parser.add_argument("--plan", action="append", required=True, help="drop=I,J:sub=K (repeatable)")
    parser.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "hybrid.json"))
    args = parser.parse_args()
    plans = [parse_plan(p) for p in args.plan]
    transformers.utils.logging.disable_progress_bar()
    run = Path(args.run_dir)
    cfg, accelerator, precision, teacher, data = open_run(run)
    state = RunState(cfg=cfg, out=run, accelerator=accelerator, data=data, teacher=teacher)
    substitutes = load_substitutes(run / "substitutes.safetensors", teacher, cfg.compact)
    blockwise_steps = json.loads((run / "blockwise.json").read_text())["budget"]["steps"]
    rcfg = dataclasses.replace(
        cfg.distill, freeze_kept=False, lr_kept=cfg.distill.recovery_lr, lr_substitute=cfg.distill.recovery_lr,
        beta=cfg.distill.recovery_beta,
    )  # fmt: skip
    seq, teacher_test, refs = cfg.run.eval_seq_len, state.teacher_test(), references(run)
    teacher_cost = measure.count_macs(teacher, seq_len=seq)["macs"], measure.count_params(teacher)["total"]
    result = {"run_dir": str(run), "precision": precision, "blockwise_steps": blockwise_steps, "plans": []}
    for drop, sub in plans:
        set_seed(cfg.run.seed)
        student, started = build(teacher, substitutes, drop, sub, cfg.compact), time.perf_counter()
        loader = state.train_loader(cfg.run.seed + 1000)
        steps = distill.steps_for(cfg.distill.recovery_epochs, loader)
        distill.end_to_end(student, teacher, loader, rcfg, steps=steps, accelerator=accelerator,
                           desc=f"drop {drop}, substitute {sub}", cache=state.teacher_cache)  # fmt: skip
        seconds = time.perf_counter() - started
        test = state.evaluate_point(student, "test")
        ci = kept_interval(teacher_test, test, seed=0)
        macs, params = measure.count_macs(student, seq_len=seq)["macs"], measure.count_params(student)["total"]
        point = {
            "drop": drop, "substitute": sub, "gmacs_cut": measure.cut(teacher_cost[0], macs),
            "params_cut": measure.cut(teacher_cost[1], params), "metric": test["metric"], "test_score": test["score"],
            "kept_test": ci["kept"], "kept_test_ci95": ci["ci95"], "train_steps": blockwise_steps + steps,
            "train_batch": cfg.distill.batch_size, "train_seconds_end_to_end": round(seconds, 1),
            "minus": {name: kept_difference(teacher_test, test, theirs, seed=0) for name, theirs in refs.items()},
        }  # fmt: skip
        result["plans"].append(point)
        print(json.dumps({k: v for k, v in point.items() if k != "minus"}))
        for name, d in point["minus"].items():
            print(f"  minus {name}: {d['difference']:+.4f} [{d['ci95'][0]:+.4f}, {d['ci95'][1]:+.4f}]")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
