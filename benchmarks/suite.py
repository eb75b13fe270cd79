"""The comparison a sceptic asks for: blockswap vs the equal-budget baselines, several seeds and datasets.

    .venv/bin/python benchmarks/suite.py [--datasets snippets,amazon,nyt,tweets] [--seeds 0,1,2]
        [--root runs/suite] [--json benchmarks/results/suite.json] [-- extra `blockswap run` flags]

For every dataset and seed it runs the default recipe (`blockswap run --seed S --dataset D`) with the
equal-budget baselines `distil` (DistilBERT-style layer dropping + KD) and `thesis` (the seed thesis's
procedure) at the key points: the curve step nearest a 50 % GMACs cut and the last step (every block
substituted); `--recover-key` gives both points' students the same recovery as the chosen one (whatever step
the stop rule chose), and each baseline gets the recovery steps of the point it is compared at. A finished
run folder is reused, an interrupted one resumed. It writes, per dataset and point, the mean and standard deviation over seeds of `kept` on the test split for each method, and per
run the paired 95 % intervals, so "blockswap is above the baseline" can be checked against the noise; and,
per baseline, blockswap's advantage pooled over seeds (`blockswap_minus_<baseline>`, see `pooled_advantage`).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from blockswap.run.compare import key_rows  # noqa: E402

METHODS = ("blockswap", "distil", "thesis")


def run_one(folder: Path, dataset: str, seed: int, extra: list[str], teachers_from: Path | None = None) -> float:
    """Run (or resume) one `blockswap run`; returns its wall seconds (0 when it was already complete).

    ``teachers_from``: another suite's root; the run takes that suite's teacher of the same dataset and seed
    (``--teacher``, the folder its teacher.json names) instead of fine-tuning one, so that the two suites differ
    only in what the extra flags change (`benchmarks/compare_suites.py` compares them per sentence).
    """
    if (folder / "summary.json").is_file():
        return 0.0
    cmd = [sys.executable, "-m", "blockswap.cli", "run", "--out", str(folder), "--dataset", dataset]
    if teachers_from is not None:
        cmd += ["--teacher", str(_teacher_of(teachers_from / folder.name))]
    cmd += ["--seed", str(seed), "--baselines", "distil,thesis", "--baseline-points", "key", "--recover-key", *extra]
    if folder.exists():
        cmd.append("--resume")
    started = time.perf_counter()
    subprocess.run(cmd, cwd=ROOT, check=True)
    return time.perf_counter() - started


def _teacher_of(run: Path) -> Path | str:
    """The teacher a finished run used: its own fine-tuned RUN/teacher, else the one it was given."""
    if (run / "teacher").is_dir():
        return run / "teacher"
    if not (run / "teacher.json").is_file():
        sys.exit(f"--teachers-from: {run} has no teacher; give a suite root with this dataset and seed")
    return json.loads((run / "teacher.json").read_text())["source"]


def key_points(rows: list[dict]) -> dict[str, dict]:
    """``{"half": row, "every": row}`` of a curve's rows (the teacher's row first): the step nearest a 50 % GMACs cut
    and the last step; only ``every`` when they are the same step."""
    keys = key_rows(rows[1:])
    return dict(zip(("half", "every") if len(keys) == 2 else ("every",), keys, strict=True))


def points(folder: Path) -> dict[str, dict]:
    """``{"half": ..., "every": ...}``: each method's cut, kept (validation) and kept on test with its interval.

    Where the run's recovery stage trained a point's student, ``blockswap`` is the recovered student (its
    budget includes recovery, as the baselines' does) and ``blockswap_curve`` the curve's student before it.
    """
    curve = json.loads((folder / "curve.json").read_text())
    base_file = folder / "baselines.json"  # absent when the run was given no baselines (`-- --baselines ""`)
    base = json.loads(base_file.read_text()) if base_file.is_file() else {}
    rec_file = folder / "recovery.json"
    recovered = json.loads(rec_file.read_text()).get("students", {}) if rec_file.is_file() else {}
    out = {}
    for name, r in key_points(curve["rows"]).items():
        entry = {"step": r["step"], "blockswap": _cell(r)}
        if str(r["step"]) in recovered:
            rec = recovered[str(r["step"])]
            entry["blockswap_curve"] = entry["blockswap"]
            entry["blockswap"] = {
                **_cell(r), "kept": rec["kept_validation_after"], "kept_test": rec["kept_test"],
                "kept_test_ci95": rec["kept_test_ci95"], "train_steps": r["train_steps"] + rec["steps"],
                "train_seconds": r["train_seconds"] + rec["seconds"],
            }  # fmt: skip
        for method in ("distil", "thesis"):
            match = next((b for b in base.get(method, []) if b["step"] == r["step"]), None)
            if match is not None:
                entry[method] = _cell(match)
        out[name] = entry
    return out


def _cell(r: dict) -> dict:
    keys = ("gmacs_cut", "params_cut", "kept", "kept_test", "kept_test_ci95", "train_steps", "train_seconds",
            "blockswap_advantage")  # fmt: skip
    return {k: r[k] for k in keys if k in r}


def _se(ci: list[float]) -> float:
    return (ci[1] - ci[0]) / (2 * 1.96)


def pooled_advantage(pairs: list[tuple[dict, dict]]) -> dict:
    """blockswap's kept on test minus a baseline's, averaged over runs (seeds), with a 95 % interval for that mean.

    Each run's difference carries its test-sampling error: the paired interval when the run recorded one
    (`blockswap_advantage`: the same sentences resampled for both), else, for runs made before that was
    recorded, the two separate intervals combined as if independent (wider than paired, so conservative).
    Normal approximation, se = interval width / 3.92; the interval is mean +- 1.96 sqrt(sum se^2) / runs. It
    covers the test sample, not the seeds' training randomness: `sd` is the spread of the runs' differences.
    """
    diffs, ses, paired = [], [], 0
    for ours, theirs in pairs:
        adv = theirs.get("blockswap_advantage")
        if adv is not None:
            diffs.append(adv["kept_test"])
            ses.append(_se(adv["ci95"]))
            paired += 1
        else:
            diffs.append(ours["kept_test"] - theirs["kept_test"])
            ses.append((_se(ours["kept_test_ci95"]) ** 2 + _se(theirs["kept_test_ci95"]) ** 2) ** 0.5)
    mean = statistics.fmean(diffs)
    half = 1.96 * sum(se * se for se in ses) ** 0.5 / len(ses)
    return {
        "mean": mean, "ci95": [mean - half, mean + half], "sd": statistics.stdev(diffs) if len(diffs) > 1 else 0.0,
        "runs": len(diffs), "runs_ahead": sum(d > 0 for d in diffs), "runs_paired": paired,
    }  # fmt: skip


def aggregate(runs: dict[str, dict[int, dict]]) -> dict:
    """Mean and sd over seeds of kept on test, per dataset, point and method; and how often blockswap's
    interval lies wholly above each baseline's point estimate."""
    summary = {}
    for dataset, by_seed in runs.items():
        summary[dataset] = {}
        for point in ("half", "every"):
            cells = [p[point] for p in by_seed.values() if point in p]
            if not cells:
                continue
            row = {"seeds": len(cells)}
            for method in METHODS:
                kept = [c[method]["kept_test"] for c in cells if method in c and "kept_test" in c[method]]
                cuts = [c[method]["gmacs_cut"] for c in cells if method in c]
                if kept:
                    row[method] = {
                        "kept_test_mean": statistics.fmean(kept),
                        "kept_test_sd": statistics.stdev(kept) if len(kept) > 1 else 0.0,
                        "gmacs_cut_mean": statistics.fmean(cuts),
                    }
            for method in ("distil", "thesis"):
                pairs = [(c["blockswap"], c[method]) for c in cells if method in c]
                row[f"blockswap_clearly_above_{method}"] = sum(
                    b["kept_test_ci95"][0] > m["kept_test"] for b, m in pairs
                )  # runs where blockswap's lower bound is above the baseline's estimate
                row[f"runs_with_{method}"] = len(pairs)
                if pairs:
                    row[f"blockswap_minus_{method}"] = pooled_advantage(pairs)
            summary[dataset][point] = row
    return summary


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default="snippets,amazon,nyt,tweets")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--root", default=str(ROOT / "runs" / "suite"), help="one run folder per dataset and seed")
    parser.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "suite.json"))
    parser.add_argument("--teachers-from", type=Path, help="another suite's root: reuse its fine-tuned teachers")
    parser.add_argument("extra", nargs="*", help="extra flags for `blockswap run` (after --)")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    datasets = args.datasets.split(",")
    out = Path(args.json)
    # notes written by hand into an earlier result (how a run was made) survive a re-run
    notes = json.loads(out.read_text()).get("notes") if out.is_file() else None
    runs: dict[str, dict[int, dict]] = {Path(d).stem: {} for d in datasets}  # a packaged name, or a file's stem
    seconds: dict[str, float] = {}
    for seed in seeds:  # seed-major: an interrupted suite has whole seeds over every dataset
        for dataset in datasets:
            folder = Path(args.root) / f"{Path(dataset).stem}-s{seed}"
            seconds[folder.name] = run_one(folder, dataset, seed, args.extra, args.teachers_from)
            runs[Path(dataset).stem][seed] = points(folder)
            result = {
                "command": " ".join(["benchmarks/suite.py", *sys.argv[1:]]),
                "summary": aggregate({name: by_seed for name, by_seed in runs.items() if by_seed}),
                "runs": runs,
                "wall_seconds_this_invocation": seconds,
                **({"notes": notes} if notes else {}),
            }
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(result, indent=2) + "\n")  # after every run: a stopped suite keeps its results
    print(json.dumps(result["summary"], indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
