"""Several ONNX exports timed in one process, interleaved: the same-runtime comparison that separate runs cannot give.

    .venv/bin/python benchmarks/ort_compare.py REF=ONNX_DIR NAME=ONNX_DIR [NAME=ONNX_DIR ...]
        [--sessions 3] [--repeats 20] [--threads 2] [--json FILE]

Each ONNX_DIR is an export folder (`blockswap export`, a run's RUN/onnx/<name> or `benchmarks/deploy.py`'s
RUN/bench_onnx/<name>); REF (the first, e.g. the teacher) is what the others' speed-ups are quoted against.
ONNX Runtime fp32 and int8, 32 longer-half test sentences of the packaged snippets (padded to their longest)
and 32 x 128 random ids, through `deploy.ort_latency`: one session of every export and precision open at a time, all of them and
both batches in the same shuffled rounds, the sessions one draw after another, the median of the sessions' medians reported. Why one process: on the 2-core AMD EPYC of
sessions 11-19 a process's sessions of one small int8 model were all slow together in one measurement
(session 19: 42.4-43.2 ms in one process, 31.6-32.3 ms in another, same file, same batch), so numbers from
separate processes can differ by a third for no reason in the models.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from blockswap import deploy, export, measure  # noqa: E402
from blockswap.config import DataConfig  # noqa: E402
from blockswap.data import load_source  # noqa: E402


def batches(tokenizer) -> dict[str, dict]:
    """``b32_real``: the 32 longer-half test sentences of the snippets; ``b32_s128``: 32 x 128 random ids."""
    dsd = load_source(DataConfig(dataset="snippets"), log=lambda *_: None)
    texts = deploy.latency_texts(list(dsd["test"]["text"]))
    enc = tokenizer(texts, truncation=True, max_length=64, padding=True, return_tensors="pt")
    ids = torch.randint(1000, 2000, (32, 128), generator=torch.Generator().manual_seed(0))
    return {
        "b32_real": {k: enc[k] for k in ("input_ids", "attention_mask")},
        "b32_s128": {"input_ids": ids, "attention_mask": torch.ones_like(ids)},
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("exports", nargs="+", help="NAME=ONNX_DIR; the first is the reference")
    parser.add_argument("--sessions", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=20, help="timed calls per session")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "ort_compare.json"))
    args = parser.parse_args()
    folders = dict(item.split("=", 1) for item in args.exports)
    if len(folders) < 2 or any(not (Path(f) / "model.onnx").is_file() for f in folders.values()):
        sys.exit("give at least two NAME=ONNX_DIR, each a folder holding model.onnx (e.g. RUN/onnx/student)")
    torch.set_num_threads(args.threads)
    cases = batches(export.load_tokenizer(next(iter(folders.values()))))
    for batch in cases.values():  # the exports take token type ids; all zeros for single sentences
        batch["token_type_ids"] = torch.zeros_like(batch["input_ids"])
    timed = deploy.ort_latency(
        {name: (Path(folder), cases) for name, folder in folders.items()},
        threads=args.threads, repeats=args.repeats, sessions=args.sessions,
    )  # fmt: skip
    ref = next(iter(folders))
    speedups = {
        name: {case: {rt: timed[ref][case][rt]["median_ms"] / timed[name][case][rt]["median_ms"]
                      for rt in timed[name][case]} for case in cases}
        for name in folders if name != ref
    }  # fmt: skip
    for case in cases:
        for rt in ("ort_fp32", "ort_int8"):
            print(case, rt, *(f"{n} {timed[n][case][rt]['median_ms']:.1f} ms" for n in folders if rt in timed[n][case]))
    result = {"exports": folders, "reference": ref, "sessions": args.sessions, "repeats": args.repeats,
              "threads": args.threads, "host": measure.machine(), "latency": timed, "speedup_over_reference": speedups}  # fmt: skip
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
