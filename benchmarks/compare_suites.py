"""Did a recipe change move kept? Two suites of the same teachers, compared on the same test sentences.

    .venv/bin/python benchmarks/compare_suites.py NEW_ROOT OLD_ROOT [--datasets snippets,amazon,nyt,tweets]
        [--seeds 0,1,2] [--json benchmarks/results/compare.json]

NEW_ROOT and OLD_ROOT hold `benchmarks/suite.py` runs (``DATASET-sSEED``) that differ only in the recipe change
and share each seed's fine-tuned teacher (``suite.py --teachers-from OLD_ROOT -- <the change>``; checked: the
teachers' test predictions must be identical). At the suite's two key points — the step nearest a 50 % GMACs
cut and the last step, each run's own — both runs' recovered students (``--recover-key``, the suite's default)
are compared per sentence: new − old, and new − each equal-budget baseline of OLD's run (``baselines.json``;
a suite run without baselines has none), as ``evaluate.kept_difference`` (paired bootstrap, 95 %), then pooled
over seeds per dataset with ``suite.pooled_advantage`` (it covers the test sample, not training randomness:
``sd`` is the seeds' spread).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from suite import key_points, pooled_advantage  # noqa: E402  (benchmarks/, this script's folder)

from blockswap.evaluate import kept_difference, per_example  # noqa: E402

POINTS = ("half", "every")


def _read(folder: Path, name: str) -> dict:
    path = folder / name
    if not path.is_file():
        sys.exit(f"{folder}: no {name}; compare finished suite runs (benchmarks/suite.py)")
    return json.loads(path.read_text())


def _key_students(folder: Path) -> dict[str, tuple[dict, dict]]:
    """``{"half": (curve row, recovered student), "every": ...}``; exits with one line when a key point was not
    recovered (the run was made without --recover-key)."""
    rows = _read(folder, "curve.json")["rows"]
    students = _read(folder, "recovery.json")["students"]
    out = {}
    for point, row in key_points(rows).items():
        student = students.get(str(row["step"]))
        if student is None or "test_per_example" not in student:
            sys.exit(f"{folder}: step {row['step']} was not recovered; compare runs made with --recover-key")
        out[point] = (row, student)
    return out


def compare_run(new: Path, old: Path) -> dict[str, dict]:
    """Per key point: both recovered students' kept, and new − old / new − OLD's baselines per sentence."""
    teacher = _read(new, "teacher.json")["test"]
    if per_example(teacher) != per_example(_read(old, "teacher.json")["test"]):
        sys.exit(f"{new} and {old} have different teachers; make NEW with benchmarks/suite.py --teachers-from OLD")
    base_file = old / "baselines.json"
    baselines = json.loads(base_file.read_text()) if base_file.is_file() else {}
    ours, theirs = _key_students(new), _key_students(old)
    out = {}
    for point in ours.keys() & theirs.keys():
        (row_new, s_new), (row_old, s_old) = ours[point], theirs[point]
        cell = {
            "step_new": row_new["step"], "step_old": row_old["step"],
            "gmacs_cut_new": row_new["gmacs_cut"], "gmacs_cut_old": row_old["gmacs_cut"],
            "kept_new": s_new["kept_test"], "kept_new_ci95": s_new["kept_test_ci95"],
            "kept_new_before": s_new["kept_test_before"], "kept_old": s_old["kept_test"],
            "kept_validation_new": s_new["kept_validation_after"], "kept_validation_old": s_old["kept_validation_after"],
            "new_minus_old": kept_difference(teacher, s_new["test_per_example"], s_old["test_per_example"]),
        }  # fmt: skip
        for name, points in baselines.items():
            match = next((b for b in points if isinstance(b, dict) and b.get("step") == row_old["step"]), None)
            if match is not None and "test_per_example" in match:
                cell[f"kept_{name}"], cell[f"gmacs_cut_{name}"] = match["kept_test"], match["gmacs_cut"]
                cell[f"new_minus_{name}"] = kept_difference(
                    teacher, s_new["test_per_example"], match["test_per_example"]
                )
        out[point] = cell
    return out


def pooled(cells: list[dict]) -> dict:
    """Means over seeds and each paired difference pooled (``suite.pooled_advantage``, plus the seeds' values)."""
    out = {"seeds": len(cells)}
    for key in ("kept_new", "kept_old", "kept_validation_new", "kept_validation_old"):
        out[f"mean_{key}"] = statistics.fmean(c[key] for c in cells)
    out["sd_kept_new"] = statistics.stdev(c["kept_new"] for c in cells) if len(cells) > 1 else 0.0
    for key in sorted({k for c in cells for k in c if k.startswith("new_minus_")}):
        if key != "new_minus_old":  # a baseline's own kept, beside blockswap's
            name = key.removeprefix("new_minus_")
            out[f"mean_kept_{name}"] = statistics.fmean(c[f"kept_{name}"] for c in cells if f"kept_{name}" in c)
        pairs = [({}, {"blockswap_advantage": {"kept_test": c[key]["difference"], "ci95": c[key]["ci95"]}})
                 for c in cells if key in c]  # fmt: skip
        out[key] = pooled_advantage(pairs) | {"per_seed": [p[1]["blockswap_advantage"]["kept_test"] for p in pairs]}
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("new", type=Path, help="the changed recipe's suite root")
    parser.add_argument("old", type=Path, help="the reference suite root (same teachers)")
    parser.add_argument("--datasets", default="snippets,amazon,nyt,tweets")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "compare.json")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    datasets: dict[str, dict] = {}
    for dataset in args.datasets.split(","):
        runs = {s: compare_run(args.new / f"{dataset}-s{s}", args.old / f"{dataset}-s{s}") for s in seeds}
        datasets[dataset] = {
            point: {"runs": {s: run[point] for s, run in runs.items()}, **pooled([run[point] for run in runs.values()])}
            for point in POINTS
            if all(point in run for run in runs.values())
        }
    command = " ".join(["benchmarks/compare_suites.py", *sys.argv[1:]])
    # what was written by hand into an earlier result (what the suites were, how they were made) survives a re-run
    notes = json.loads(args.json.read_text()) if args.json.is_file() else {}
    notes = {k: v for k, v in notes.items() if k not in ("command", "datasets")}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({**notes, "command": command, "datasets": datasets}, indent=1) + "\n")
    for dataset, by_point in datasets.items():
        for point, p in by_point.items():
            line = f"{dataset} {point}: new {p['mean_kept_new']:.4f} ± {p['sd_kept_new']:.4f}, old {p['mean_kept_old']:.4f}"
            for key in (k for k in p if k.startswith("new_minus_")):
                d = p[key]
                line += f" | {key} {d['mean']:+.4f} [{d['ci95'][0]:+.4f}, {d['ci95'][1]:+.4f}]"
            print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
