"""What each stop rule delivers, replayed on finished runs that recovered both the curve's choice and its last step.

    .venv/bin/python benchmarks/stop_rule.py RUN [RUN ...] [--json benchmarks/results/stop_rule.json]

A run of `benchmarks/suite.py` (or `blockswap run --recover-key` / `--recover-last --stop-rule curve`) has, in
recovery.json, the recovered student of the step the curve chose and of the curve's last step. Recovery starts
from the same seed for every student, so the run already holds what either rule would have delivered:
- ``curve``: the curve's choice (the last step keeping --min-kept on validation before recovery), recovered;
- ``recovered`` (the default since session 19): the last step's recovered student when it keeps --min-kept on
  validation after recovery, else the curve's choice, recovered (one recovery more than ``curve``).
Per run: each rule's step, GMACs and parameter cut, kept on validation and on test (with its interval) and
recoveries spent; per dataset (the run folder's name up to ``-s<seed>``) and over all runs: the means, standard
deviations and minimum kept on test. The rule's threshold is the run's own ``run.min_kept`` (config.yaml).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from suite import pooled_advantage  # noqa: E402  (benchmarks/, this script's folder)

from blockswap.evaluate import kept_difference  # noqa: E402

RULES = ("curve", "recovered")


def replay(folder: Path) -> dict:
    """Both rules' final student in one finished run; exits with one line if the run lacks a needed recovery."""
    curve = json.loads((folder / "curve.json").read_text())
    recovery = json.loads((folder / "recovery.json").read_text())
    students = recovery["students"]
    min_kept = yaml.safe_load((folder / "config.yaml").read_text())["run"]["min_kept"]
    chosen = recovery.get("curve_chosen_step", curve["chosen_step"])
    last = curve["rows"][-1]["step"]
    for step in {chosen, last}:
        if str(step) not in students:
            sys.exit(f"{folder}: step {step} was not recovered; replay needs runs made with --recover-key")

    def point(step: int, recoveries: int) -> dict:
        row, s = curve["rows"][step], students[str(step)]
        return {"step": step, "gmacs_cut": row["gmacs_cut"], "params_cut": row["params_cut"],
                "kept_validation": s["kept_validation_after"], "kept_test": s["kept_test"],
                "kept_test_ci95": s["kept_test_ci95"], "recoveries": recoveries}  # fmt: skip

    last_passes = students[str(last)]["kept_validation_after"] >= min_kept
    recovered = point(chosen, 1) if last == chosen else point(last, 1) if last_passes else point(chosen, 2)
    if recovered["step"] == chosen:  # the same student
        difference = {"difference": 0.0, "ci95": [0.0, 0.0]}
    else:  # paired on the same test sentences
        teacher = curve["rows"][0]["test_per_example"]
        pair = (students[str(s)]["test_per_example"] for s in (last, chosen))
        difference = kept_difference(teacher, *pair, seed=last)
    diff = {"kept_test": difference["difference"], "ci95": difference["ci95"]}
    return {"min_kept": min_kept, "curve": point(chosen, 1), "recovered": recovered, "recovered_minus_curve": diff}


def _stats(cells: list[dict]) -> dict:
    def mean_sd(key: str) -> tuple[float, float]:
        values = [c[key] for c in cells]
        return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0

    (cut, cut_sd), (kept, kept_sd) = mean_sd("gmacs_cut"), mean_sd("kept_test")
    return {"runs": len(cells), "gmacs_cut_mean": cut, "gmacs_cut_sd": cut_sd, "kept_test_mean": kept,
            "kept_test_sd": kept_sd, "kept_test_min": min(c["kept_test"] for c in cells),
            "recoveries": sum(c["recoveries"] for c in cells), "steps": [c["step"] for c in cells]}  # fmt: skip


def summarise(runs: dict[str, dict]) -> dict:
    """``{"ROOT/DATASET": ..., "ROOT/all": ...}`` for runs keyed ``ROOT/DATASET-sSEED``: each rule's statistics."""
    groups: dict[str, list[dict]] = {}
    for name, run in runs.items():
        root, dataset = name.rsplit("/", 1)
        groups.setdefault(f"{root}/{dataset.rsplit('-s', 1)[0]}", []).append(run)
        groups.setdefault(f"{root}/all", []).append(run)
    out = {}
    for group, members in groups.items():
        out[group] = {rule: _stats([r[rule] for r in members]) for rule in RULES}
        pairs = [(r["recovered"], r["curve"] | {"blockswap_advantage": r["recovered_minus_curve"]}) for r in members]
        out[group]["recovered_minus_curve"] = pooled_advantage(pairs)  # kept on test, pooled over the runs
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="finished run folders (named DATASET-sSEED)")
    parser.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "stop_rule.json")
    args = parser.parse_args()
    runs = {f"{run.parent.name}/{run.name}": replay(run) for run in args.runs}
    summary = summarise(runs)
    result = {"command": " ".join(["benchmarks/stop_rule.py", *map(str, args.runs)]), "runs": runs, "summary": summary}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=1) + "\n")
    for group, rules in summary.items():
        d = rules["recovered_minus_curve"]
        print(group, *(f"{rule}: cut {rules[rule]['gmacs_cut_mean']:.3f} kept {rules[rule]['kept_test_mean']:.4f} ± "
                       f"{rules[rule]['kept_test_sd']:.4f} (min {rules[rule]['kept_test_min']:.3f}, "
                       f"{rules[rule]['recoveries']} recoveries)" for rule in RULES),
              f"recovered - curve: {d['mean']:+.4f} [{d['ci95'][0]:+.4f}, {d['ci95'][1]:+.4f}]", sep="\n  ")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
