"""Where ONNX Runtime spends a forward pass: time per operator type, for exported folders side by side.

    .venv/bin/python benchmarks/ort_profile.py NAME=ONNX_DIR [NAME=ONNX_DIR ...] [--int8] [--batch 32]
        [--threads 2] [--repeats 10] [--json benchmarks/results/ort_profile.json]

Each folder is one `blockswap export` output (model.onnx, model.int8.onnx, tokenizer). The input is the
first ``--batch`` test sentences of the offline default data, padded to the longest; ONNX Runtime's own
profiler records every kernel over ``--repeats`` runs after 3 warm-up runs. Written per model: median
wall ms of a run, and per operator type its ms per run, share of kernel time and node count. Answers
"why is the student's speed-up below its MACs ratio": which operators do not shrink with the MACs.
"""

from __future__ import annotations

import argparse
import collections
import json
import statistics
import tempfile
import time
from pathlib import Path

from blockswap.deploy import SLOW_FUSIONS

ROOT = Path(__file__).resolve().parents[1]


def profile(folder: Path, feeds_for, *, int8: bool, threads: int, repeats: int) -> dict:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
    opts.enable_profiling = True
    with tempfile.TemporaryDirectory() as tmp:
        opts.profile_file_prefix = str(Path(tmp) / "ort")
        path = folder / ("model.int8.onnx" if int8 else "model.onnx")
        session = ort.InferenceSession(  # the session blockswap opens (deploy.OnnxClassifier)
            str(path), opts, providers=["CPUExecutionProvider"], disabled_optimizers=list(SLOW_FUSIONS)
        )
        feeds = feeds_for(session)
        for _ in range(3):
            session.run(None, feeds)
        wall = []
        for _ in range(repeats):
            started = time.perf_counter()
            session.run(None, feeds)
            wall.append((time.perf_counter() - started) * 1000)
        events = json.loads(Path(session.end_profiling()).read_text())
    runs = repeats + 3
    total, nodes = collections.Counter(), collections.Counter()
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            total[e["args"]["op_name"]] += e["dur"] / 1000 / runs
            nodes[e["args"]["op_name"]] += 1 / runs
    kernel = sum(total.values())
    ops = {op: {"ms": ms, "share": ms / kernel, "nodes": round(nodes[op])} for op, ms in total.most_common()}
    return {"file": path.name, "median_ms": statistics.median(wall), "kernel_ms": kernel, "ops": ops}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+", help="NAME=ONNX_DIR")
    parser.add_argument("--int8", action="store_true", help="also profile model.int8.onnx")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "ort_profile.json"))
    args = parser.parse_args()

    import numpy as np
    from transformers import AutoTokenizer

    from blockswap.config import DataConfig
    from blockswap.data import load_source

    texts = list(load_source(DataConfig())["test"]["text"][: args.batch])
    result = {"batch": args.batch, "threads": args.threads, "repeats": args.repeats, "models": {}}
    for spec in args.models:
        name, folder = spec.split("=", 1)
        tokenizer = AutoTokenizer.from_pretrained(folder)
        enc = tokenizer(texts, truncation=True, max_length=128, padding=True, return_tensors="np")
        result["shape"] = list(enc["input_ids"].shape)

        def feeds_for(session, enc=enc):
            zeros = np.zeros_like(enc["input_ids"])
            return {i.name: (enc[i.name] if i.name in enc else zeros).astype(np.int64) for i in session.get_inputs()}

        for int8 in (False, True) if args.int8 else (False,):
            key = f"{name} {'int8' if int8 else 'fp32'}"
            r = result["models"][key] = profile(Path(folder), feeds_for, int8=int8, threads=args.threads,
                                                repeats=args.repeats)  # fmt: skip
            top = ", ".join(f"{op} {v['ms']:.1f}" for op, v in list(r["ops"].items())[:6])
            print(f"{key}: median {r['median_ms']:.1f} ms; {top}")
    Path(args.json).write_text(json.dumps(result, indent=2))
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
