"""Same-runtime ONNX Runtime speed-up of every-block students of several substitute shapes, against their MACs ratio.

    .venv/bin/python benchmarks/shapes.py CLASSIFIER_DIR [--shape h128_l2_a2_f512 ...] [--repeats 40] [--sessions 4]
        [--json FILE]

Each shape ``h<width>_l<layers>_a<heads>_f<feed-forward>[_<activation>]`` (activation gelu by default, or relu,
silu, tanh) substitutes every block of the classifier with random weights (speed does not depend on the weights);
teacher and students are exported as `blockswap export` does (fused attention, parity-checked, per-tensor dynamic
int8) into ``--work`` and timed with 2 ONNX Runtime threads on the 32 longer-half test sentences of the snippets
(padded to their longest), all models in shuffled rounds, each model and precision in ``--sessions`` independent sessions, one of each open
at a time (``measure.session_rounds``): one session of a small int8 model can run its element-wise operators 2-3x
slower than another session of the same file for its whole life (measured here, cause not found), so the median
of the sessions' medians is compared (all in one process, which can also be slow as a whole: session 19). Reports per shape: MACs ratio to the teacher at that batch, fp32 and int8
medians and the speed-up over the teacher in the same runtime divided by the MACs ratio (#11's target: >= 0.9).
Accuracy is not measured here: a shape's accuracy needs `blockswap run --compact-hidden ... ` (or
benchmarks/suite.py).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import torch
import transformers

from blockswap import arch, deploy, export, measure
from blockswap.compact import CompactSpec
from blockswap.config import DataConfig
from blockswap.data import load_source
from blockswap.substitute import substitute

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SHAPES = ("h128_l2_a2_f512", "h128_l2_a2_f256", "h128_l1_a2_f512", "h192_l1_a2_f384", "h256_l1_a4_f256")


def parse_shape(text: str) -> CompactSpec:
    m = re.fullmatch(r"h(\d+)_l(\d+)_a(\d+)_f(\d+)(?:_(gelu|relu|silu|tanh))?", text)
    if not m:
        raise SystemExit(
            f"shape {text!r} is not h<width>_l<layers>_a<heads>_f<feed-forward>[_<activation>], e.g. h128_l2_a2_f512_relu"
        )
    hidden, layers, heads, ffn = map(int, m.groups()[:4])
    return CompactSpec(hidden=hidden, layers=layers, heads=heads, ffn=ffn, activation=m.group(5) or "gelu")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("classifier")
    parser.add_argument("--shape", action="append", help=f"repeatable [default: {' '.join(DEFAULT_SHAPES)}]")
    parser.add_argument("--repeats", type=int, default=40)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--sessions", type=int, default=4,
        help="independent ONNX Runtime sessions per model and precision (a session's speed can differ from another's)",
    )  # fmt: skip
    parser.add_argument("--work", default="/tmp/blockswap-shapes", help="folder for the exports (reused if there)")
    parser.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "shapes.json"))
    args = parser.parse_args()
    shapes = {s: parse_shape(s) for s in (args.shape or DEFAULT_SHAPES)}
    torch.set_num_threads(args.threads)
    transformers.utils.logging.disable_progress_bar()
    dsd = load_source(DataConfig(dataset="snippets"), log=lambda *_: None)
    tok = export.load_tokenizer(args.classifier)
    teacher = export.load_classifier(args.classifier).eval()
    n = arch.num_blocks(teacher)
    models = {"teacher": teacher} | {name: substitute(teacher, range(n), spec).eval() for name, spec in shapes.items()}
    work = Path(args.work)
    for name, model in models.items():
        if not (work / name / "model.int8.onnx").is_file():
            deploy.export_checked(model, tok, work / name, dsd=dsd, max_length=64, int8=True)
    texts = deploy.latency_texts(list(dsd["test"]["text"]))
    enc = tok(texts[:32], truncation=True, max_length=64, padding=True, return_tensors="pt")
    batch = {k: enc[k] for k in ("input_ids", "attention_mask")} | {
        "token_type_ids": torch.zeros_like(enc["input_ids"])
    }

    def open_draw(k: int) -> dict:  # one session of each model and precision at a time
        sessions = {
            (name, rt): deploy.OnnxClassifier.load(work / name, int8=rt == "int8", threads=args.threads)
            for name in models
            for rt in ("fp32", "int8")
        }
        return {key: (lambda o=session: o.logits(batch)) for key, session in sessions.items()}

    per_session = measure.session_rounds(open_draw, sessions=args.sessions, repeats=args.repeats, warmup=2)
    timed = measure.by_session(per_session)  # (name, rt): the median of its sessions' medians
    length = batch["input_ids"].shape[1]
    gmacs = {name: measure.count_macs(m, batch=32, seq_len=length)["gmacs"] for name, m in models.items()}
    rows = {}
    for name in models:
        row = {"gmacs": gmacs[name], "macs_ratio": gmacs["teacher"] / gmacs[name]}
        for rt in ("fp32", "int8"):
            row[f"ort_{rt}"] = timed[(name, rt)]
            row[f"speedup_ort_{rt}"] = timed[("teacher", rt)]["median_ms"] / timed[(name, rt)]["median_ms"]
            row[f"speedup_ort_{rt}_over_macs_ratio"] = row[f"speedup_ort_{rt}"] / row["macs_ratio"]
        rows[name] = row
        print(name, f"MACs x{row['macs_ratio']:.2f}", *(f"{rt} {timed[(name, rt)]['median_ms']:.1f} ms "
              f"x{row[f'speedup_ort_{rt}']:.2f} ({row[f'speedup_ort_{rt}_over_macs_ratio']:.2f})" for rt in ("fp32", "int8")))  # fmt: skip
    result = {"classifier": args.classifier, "batch": list(batch["input_ids"].shape), "threads": args.threads,
              "repeats": args.repeats, "sessions": args.sessions, "host": measure.machine(), "models": rows}  # fmt: skip
    Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
