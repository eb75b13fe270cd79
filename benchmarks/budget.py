"""The equal-budget comparison at a larger common budget, on finished suite runs.

    .venv/bin/python benchmarks/budget.py RUN_DIR [RUN_DIR ...] --recovery-epochs 2 --root DIR
        [--json benchmarks/results/budget.json]

Each RUN_DIR is a finished `benchmarks/suite.py` run (`--recover-key`: the key points' curve students are
saved). For each, a folder ROOT/<run name> links the run's teacher, importance order, curve and curve
students, and the run's own recovery and baselines stages run again there with `--recovery-epochs E`,
`--recover-key` and `--baselines distil`: the substitution path (block-wise epochs + E epochs of recovery)
and the DistilBERT-style student (blocks dropped at the nearest GMACs cut, every weight trained by KD) get
the same optimiser steps x batch at each key point, as in the suite, only more of them. The result has the
suite's layout (`summary`: mean and sd over seeds of kept on test per dataset and point; `runs`: each
run's cells with their paired 95 % intervals). A finished folder under ROOT is reused.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from finished_run import open_run  # noqa: E402  (benchmarks/finished_run.py)
from suite import aggregate, points  # noqa: E402  (benchmarks/suite.py)

LINKED = ("curve.json", "importance.json", "teacher.json", "model", "model_last")


def rerun(run: Path, folder: Path, epochs: float) -> float:
    """Recovery + `distil` at the key points of ``run`` with ``epochs`` of recovery, in ``folder``; seconds."""
    import transformers

    from blockswap.config import dump_config
    from blockswap.run import compare, stages
    from blockswap.run.state import RunState

    if (folder / "baselines.json").is_file():
        return 0.0
    transformers.utils.logging.disable_progress_bar()
    folder.mkdir(parents=True, exist_ok=True)
    for name in [*LINKED, *(p.name for p in run.glob("model_step*") if not p.name.endswith("_recovered"))]:
        if (run / name).exists() and not (folder / name).exists():
            (folder / name).symlink_to((run / name).resolve())
    opened = open_run(run)
    cfg = dataclasses.replace(
        opened.cfg,
        distill=dataclasses.replace(opened.cfg.distill, recovery_epochs=epochs, recover_key=True),
        run=dataclasses.replace(opened.cfg.run, baselines=("distil",), baseline_points="key"),
    )
    (folder / "config.yaml").write_text(dump_config(cfg))
    state = RunState(cfg=cfg, out=folder, accelerator=opened.accelerator, data=opened.data, teacher=opened.teacher)
    started = time.perf_counter()
    if not (folder / "recovery.json").is_file():
        stages.recovery(state)
    compare.baselines_stage(state)
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="finished suite run folders (<dataset>-s<seed>)")
    parser.add_argument("--recovery-epochs", type=float, default=2.0)
    parser.add_argument("--root", required=True, help="one folder per run for the re-run stages")
    parser.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "budget.json"))
    args = parser.parse_args()
    runs: dict[str, dict[int, dict]] = {}
    seconds: dict[str, float] = {}
    for run in map(Path, args.runs):
        match = re.fullmatch(r"(.+)-s(\d+)", run.name)
        if match is None or not (run / "summary.json").is_file():
            parser.error(f"{run} is not a finished suite run folder (<dataset>-s<seed> with summary.json)")
        folder = Path(args.root) / run.name
        seconds[run.name] = rerun(run, folder, args.recovery_epochs)
        runs.setdefault(match[1], {})[int(match[2])] = points(folder)
        result = {
            "command": " ".join(["benchmarks/budget.py", *sys.argv[1:]]),
            "recovery_epochs": args.recovery_epochs,
            "summary": aggregate(runs),
            "runs": runs,
            "wall_seconds_this_invocation": seconds,
        }
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")  # after every run
    print(json.dumps(result["summary"], indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
