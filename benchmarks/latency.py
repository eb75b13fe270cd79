"""CPU latency of a run's teacher vs its chosen student, next to their MACs ratio.

    .venv/bin/python benchmarks/latency.py RUN_DIR [--repeats 20] [--json FILE]

Batch 1 and 32 at sequence length 128, and batch 32 at the dataset's real lengths (test sentences,
dynamic padding). Warm-up, repeats, median and p10-p90 spread; threads, device and dtype recorded.
Target: speed-up >= 0.9 x MACs ratio at batch 32.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from blockswap import data, export, measure
from blockswap.config import load_config

ROOT = Path(__file__).resolve().parents[1]


def real_batch(run_dir: Path, tokenizer, n: int = 32) -> dict[str, torch.Tensor]:
    cfg = load_config(run_dir / "config.yaml")
    dsd = data.load_source(cfg.data, log=lambda *_: None)
    texts = dsd["test"]["text"][:n]
    return dict(tokenizer(texts, truncation=True, max_length=cfg.data.max_length, padding=True, return_tensors="pt"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "latency.json"))
    args = parser.parse_args()
    run_dir = Path(args.run_dir)
    teacher_src = json.loads((run_dir / "teacher.json").read_text())["source"]
    models = {"teacher": export.load_model(teacher_src).eval(), "student": export.load(run_dir / "model").eval()}
    tok = export.load_tokenizer(run_dir / "model")
    real = real_batch(run_dir, tok)
    result: dict = {"run_dir": str(run_dir), "threads": torch.get_num_threads(), "cases": {}}
    for case, kw in (
        ("b1_s128", {"batch": 1, "seq_len": 128}),
        ("b32_s128", {"batch": 32, "seq_len": 128}),
        ("b32_real", {"inputs": real}),
    ):
        row = {}
        for name, model in models.items():
            lat = measure.latency(model, repeats=args.repeats, warmup=args.warmup, **kw).as_dict()
            inputs = kw.get("inputs")
            b, s = inputs["input_ids"].shape if inputs is not None else (kw["batch"], kw["seq_len"])
            macs = measure.count_macs(model, batch=int(b), seq_len=int(s))["macs"]
            row[name] = {"latency": lat, "gmacs": macs / 1e9}
        row["speedup"] = row["teacher"]["latency"]["median_ms"] / row["student"]["latency"]["median_ms"]
        row["macs_ratio"] = row["teacher"]["gmacs"] / row["student"]["gmacs"]
        row["speedup_over_macs_ratio"] = row["speedup"] / row["macs_ratio"]
        result["cases"][case] = row
        print(f"{case}: teacher {row['teacher']['latency']['median_ms']:.1f} ms, student {row['student']['latency']['median_ms']:.1f} ms, "
              f"speed-up x{row['speedup']:.2f} vs MACs ratio x{row['macs_ratio']:.2f}")  # fmt: skip
    result["target_met_b32"] = result["cases"]["b32_s128"]["speedup_over_macs_ratio"] >= 0.9
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
