"""Latency where users run models: eager PyTorch fp32, ONNX Runtime fp32 and ONNX Runtime dynamic int8.

    .venv/bin/python benchmarks/deploy.py RUN_DIR [--repeats 20] [--sessions 3] [--threads 2] [--unfused] [--json FILE]

For the run's teacher, its final student (``chosen``: RUN/model_recovered, or RUN/model for a run without
recovery; before session 19 this was RUN/model, the curve's choice before recovery) and its most compressed
student (``last``: RUN/model_last_recovered or RUN/model_last, when it is not the final one): batch 1 and 32 at
sequence 128, and 32 real test sentences (dynamic padding). The same thread count for torch and ONNX Runtime;
every (model, runtime) is loaded in ``--sessions`` independent sessions (one ONNX Runtime session can stay
slower than another for its life), every (model, runtime, session) timed ``--repeats`` times in shuffled rounds
of short warm bursts, so drifts of a shared machine fall on all alike; the median of the sessions' medians and
the medians of their p10-p90. Exports each model with `blockswap export` machinery (parity-checked, test
accuracy per runtime) into RUN_DIR/bench_onnx/ unless already there; with ``--unfused`` also without
the fused attention operator (RUN_DIR/bench_onnx_unfused/, runtimes ``ort_*_unfused``). Speed-ups are
quoted against the teacher *in the same runtime* and, separately, against the eager fp32 teacher.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import transformers
import yaml

from blockswap import deploy, export, measure
from blockswap.arch import forward_inputs
from blockswap.config import DataConfig
from blockswap.data import load_source

ROOT = Path(__file__).resolve().parents[1]
RUNTIMES = ("eager_fp32", "ort_fp32", "ort_int8")


def _inputs(tokenizer, texts, n, seq):
    if texts is None:
        g = torch.Generator().manual_seed(0)
        ids = torch.randint(1000, 2000, (n, seq), generator=g)
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "token_type_ids": torch.zeros_like(ids)}
    enc = tokenizer(texts[:n], truncation=True, max_length=seq, padding=True, return_tensors="pt")
    return {k: enc[k] for k in ("input_ids", "attention_mask")} | {"token_type_ids": torch.zeros_like(enc["input_ids"])}


def _runner(runtime: str, name: str, folder: Path, run: Path, threads: int):
    """One batch in ``runtime``: eager_fp32, or ort_{fp32,int8}[_unfused] (the export in RUN/bench_onnx[_unfused])."""
    if runtime == "eager_fp32":
        model = export.load_classifier(str(folder))
        return lambda b: model(**forward_inputs(model, b))
    variant = "_unfused" if runtime.endswith("_unfused") else ""
    return deploy.OnnxClassifier.load(
        run / f"bench_onnx{variant}" / name, int8="int8" in runtime, threads=threads
    ).logits


def _substituted(folder: Path) -> list[int]:
    return (json.loads((folder / "config.json").read_text()).get("blockswap") or {}).get("substituted", [])


def _export(name: str, folder: Path, onnx_dir: Path, *, dsd, data_cfg, scales: str, fused: bool) -> dict:
    """Export ``folder`` unless ``onnx_dir`` holds an export of the same kind; returns its metadata."""
    meta_file = onnx_dir / deploy.META_FILE
    meta = json.loads(meta_file.read_text()) if meta_file.is_file() else {}
    if "attention_fused" not in meta or (not fused and meta["attention_fused"]):  # absent: made before fusion existed
        model = export.load_classifier(str(folder))
        meta = deploy.export_checked(
            model, export.load_tokenizer(folder), onnx_dir, dsd=dsd, max_length=data_cfg.max_length, int8=True,
            int8_scales=scales, fuse_attention=fused,
        )  # fmt: skip
    return meta


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir")
    parser.add_argument("--repeats", type=int, default=20, help="timed calls per session")
    parser.add_argument("--sessions", type=int, default=3, help="independent sessions per model and runtime")
    parser.add_argument("--warmup", type=int, default=2, help="untimed calls before each burst of timed ones")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--int8-scales", default="auto", choices=["auto", "per-tensor", "per-channel"])
    parser.add_argument("--unfused", action="store_true", help="also time exports without the fused attention op")
    parser.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "deploy.json"))
    args = parser.parse_args()
    run = Path(args.run_dir)
    torch.set_num_threads(args.threads)
    transformers.utils.logging.disable_progress_bar()
    data_cfg = DataConfig(**yaml.safe_load((run / "config.yaml").read_text())["data"])  # only the data section
    dsd = load_source(data_cfg, log=lambda *_: None)
    final = export.final_student(run)  # what the run delivers
    folders = {"teacher": Path(json.loads((run / "teacher.json").read_text())["source"]), "chosen": final}
    last = next((run / n for n in ("model_last_recovered", "model_last") if (run / n).is_dir()), None)
    if last is not None and _substituted(last) != _substituted(final):  # the curve's most compressed student
        folders["last"] = last
    runtimes = RUNTIMES + (("ort_fp32_unfused", "ort_int8_unfused") if args.unfused else ())
    result: dict = {"run_dir": str(run), "threads": args.threads, "repeats": args.repeats, "sessions": args.sessions, "warmup": args.warmup,
                    "timing": f"measure.session_rounds: one session of each model and runtime open at a time; shuffled rounds, each runner {args.warmup} untimed + up to {measure.ROUND_ROBIN_BURST} timed calls",
                    "host": measure.machine(), "models": {}, "cases": {}}  # fmt: skip
    texts = deploy.latency_texts(list(dsd["test"]["text"]))  # a batch of typical-to-long sentences, as a run's report
    for name, folder in folders.items():
        variants = {"": True, **({"_unfused": False} if args.unfused else {})}
        metas = {v: _export(name, folder, run / f"bench_onnx{v}" / name, dsd=dsd, data_cfg=data_cfg,
                            scales=args.int8_scales, fused=fused) for v, fused in variants.items()}  # fmt: skip
        meta = metas[""]
        model = export.load_classifier(str(folder))
        result["models"][name] = {
            "folder": str(folder), "substituted": (getattr(model.config, "blockswap", None) or {}).get("substituted", []), "params": measure.count_params(model)["total"], "parity": meta["parity"],
            "attention_fused": meta["attention_fused"], "test": meta["test"], "bytes": {**meta["bytes"], "model.safetensors": (folder / "model.safetensors").stat().st_size},
            **({"unfused": {k: metas["_unfused"][k] for k in ("attention_fused", "parity", "test")}} if args.unfused else {}),
        }  # fmt: skip
    tok = export.load_tokenizer(folders["teacher"])
    cases = {"b1_s128": (None, 1, 128), "b32_s128": (None, 32, 128), "b32_real": (texts, 32, data_cfg.max_length)}
    batches = {case: _inputs(tok, src, n, seq) for case, (src, n, seq) in cases.items()}

    def open_draw(k: int) -> dict:  # one session (or eager model) of each model and runtime, for every case
        runners = {
            (name, rt): _runner(rt, name, folder, run, args.threads)
            for name, folder in folders.items()
            for rt in runtimes
        }
        return {(name, rt, case): (lambda fn=fn, b=b: fn(b)) for (name, rt), fn in runners.items() for case, b in batches.items()}  # fmt: skip

    with torch.inference_mode():
        timed = measure.by_session(
            measure.session_rounds(open_draw, sessions=args.sessions, repeats=args.repeats, warmup=args.warmup)
        )
    models = {name: export.load_classifier(str(folder)) for name, folder in folders.items()}  # MACs per shape
    for case, batch in batches.items():
        n = batch["input_ids"].shape[0]
        row = {"batch": list(batch["input_ids"].shape)}
        for name, model in models.items():
            macs = measure.count_macs(model, batch=n, seq_len=batch["input_ids"].shape[1])
            row[name] = {"gmacs": macs["gmacs"], **{rt: timed[(name, rt, case)] for rt in runtimes}}
        teacher = row["teacher"]
        for name in folders:
            if name == "teacher":
                continue
            s = row[name]
            s["macs_ratio"] = teacher["gmacs"] / s["gmacs"]
            for rt in runtimes:
                s[f"speedup_{rt}"] = teacher[rt]["median_ms"] / s[rt]["median_ms"]
                s[f"speedup_{rt}_over_macs_ratio"] = s[f"speedup_{rt}"] / s["macs_ratio"]
                s[f"speedup_{rt}_vs_eager_fp32_teacher"] = teacher["eager_fp32"]["median_ms"] / s[rt]["median_ms"]
        result["cases"][case] = row
        print(case, {n: {rt: round(row[n][rt]["median_ms"], 1) for rt in runtimes} for n in folders})
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
