"""Wall time, peak memory and results of a whole `blockswap run` (default: the offline default).

    .venv/bin/python benchmarks/run_default.py [--out runs/bench] [-- extra blockswap run flags]

Writes benchmarks/results/run_default.json: wall time per stage, total, peak RSS of the run process,
the machine (cores, threads), the CPU seconds the run and (Linux) all other processes used meanwhile
(a timing with other work beside it is not clean), and the run's summary numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from blockswap import measure  # noqa: E402


def _without_per_example(value):
    """``value`` without its per-sentence test results (``test_per_example``: they stay in the run folder; this
    JSON is about time, memory and the run's numbers)."""
    if isinstance(value, dict):
        return {k: _without_per_example(v) for k, v in value.items() if k != "test_per_example"}
    if isinstance(value, list):
        return [_without_per_example(v) for v in value]
    return value


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "runs" / "bench-default"), help="run folder (replaced)")
    parser.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "run_default.json"))
    parser.add_argument("extra", nargs="*", help="extra flags for `blockswap run` (after --)")
    args = parser.parse_args()
    if "--resume" in args.extra:  # the folder is replaced: a "resumed" run would silently start afresh
        print(
            "run_default.py: it times a whole run in a fresh --out folder, so --resume would start afresh; leave it out",
            file=sys.stderr,
        )
        return 2
    out = Path(args.out)
    if out.exists():
        shutil.rmtree(out)
    cmd = [sys.executable, "-m", "blockswap.cli", "run", "--out", str(out), *args.extra]
    busy0, t0 = measure.busy_cpu_seconds(), time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT)
    wall = time.perf_counter() - t0
    busy1, usage = measure.busy_cpu_seconds(), resource.getrusage(resource.RUSAGE_CHILDREN)
    peak_kb = usage.ru_maxrss  # Linux: KiB of the largest child
    own = usage.ru_utime + usage.ru_stime
    # what other processes took meanwhile: on 2 cores even short jobs beside the run slow it far beyond their share
    others = None if busy0 is None else round(max(0.0, busy1 - busy0 - own), 1)
    result = {
        "command": " ".join(["blockswap", "run", "--out", str(out), *args.extra]),
        "returncode": proc.returncode,
        "wall_seconds": round(wall, 1),
        "peak_rss_mb": round(peak_kb / 1024, 1),
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "host": measure.machine(),  # timings from different CPUs are not comparable
        "cpu_seconds_run": round(own, 1),
        "cpu_seconds_other_processes": others,
    }
    if others is not None and others > 0.02 * wall * (os.cpu_count() or 1):
        print(f"warning: other processes used {others:.0f} CPU-s during the run; its wall time is not the code's alone")
    for name in ("timings.json", "summary.json"):
        p = out / name
        if p.is_file():
            result[name.removesuffix(".json")] = json.loads(p.read_text())
    if (out / "curve.json").is_file():
        result["curve"] = _without_per_example(json.loads((out / "curve.json").read_text())["rows"])
    for name in ("baselines", "recovery"):
        if (out / f"{name}.json").is_file():
            result[name] = _without_per_example(json.loads((out / f"{name}.json").read_text()))
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("wall_seconds", "peak_rss_mb", "returncode")}))
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main())
