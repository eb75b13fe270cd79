"""Latency where users run models: eager PyTorch fp32, ONNX Runtime fp32 and ONNX Runtime dynamic int8.

    .venv/bin/python benchmarks/deploy.py RUN_DIR [--repeats 20] [--threads 2] [--json FILE]

For the run's teacher, its chosen student (RUN/model) and its most compressed student (RUN/model_last,
when the curve went further than the chosen step): batch 1 and 32 at sequence 128, and 32 real test
sentences (dynamic padding). The same thread count for torch and ONNX Runtime; warm-up, repeats,
median and p10-p90. Exports each model with `blockswap export` machinery (parity-checked, test
accuracy per runtime) into RUN_DIR/bench_onnx/ unless already there. Speed-ups are quoted against the
teacher *in the same runtime* and, separately, against the eager fp32 teacher (end to end).
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


def _runner(name: str, folder: Path, onnx_dir: Path, threads: int):
    if name == "eager_fp32":
        model = export.load_classifier(str(folder))
        return lambda b: model(**forward_inputs(model, b))
    return deploy.OnnxClassifier.load(onnx_dir, int8=name == "ort_int8", threads=threads).logits


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--int8-scales", default="auto", choices=["auto", "per-tensor", "per-channel"])
    parser.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "deploy.json"))
    args = parser.parse_args()
    run = Path(args.run_dir)
    torch.set_num_threads(args.threads)
    transformers.utils.logging.disable_progress_bar()
    data_cfg = DataConfig(**yaml.safe_load((run / "config.yaml").read_text())["data"])  # only the data section
    dsd = load_source(data_cfg, log=lambda *_: None)
    folders = {"teacher": Path(json.loads((run / "teacher.json").read_text())["source"]), "chosen": run / "model"}
    if (run / "model_last").is_dir():  # the curve's last (most compressed) step, when it is not the chosen one
        folders["last"] = run / "model_last"
    result: dict = {"run_dir": str(run), "threads": args.threads, "repeats": args.repeats, "warmup": args.warmup,
                    "host": measure.machine(), "models": {}, "cases": {}}  # fmt: skip
    texts = sorted(dsd["test"]["text"], key=len)[len(dsd["test"]) // 2 :][::-1]  # a batch of typical-to-long sentences
    for name, folder in folders.items():
        onnx_dir = run / "bench_onnx" / name
        if not (onnx_dir / deploy.META_FILE).is_file():
            model = export.load_classifier(str(folder))
            deploy.export_checked(
                model,
                export.load_tokenizer(folder),
                onnx_dir,
                dsd=dsd,
                max_length=data_cfg.max_length,
                int8=True,
                int8_scales=args.int8_scales,
            )
        meta = json.loads((onnx_dir / deploy.META_FILE).read_text())
        model = export.load_classifier(str(folder))
        result["models"][name] = {
            "folder": str(folder), "substituted": (getattr(model.config, "blockswap", None) or {}).get("substituted", []), "params": measure.count_params(model)["total"], "parity": meta["parity"],
            "test": meta["test"], "bytes": {**meta["bytes"], "model.safetensors": (folder / "model.safetensors").stat().st_size},
        }  # fmt: skip
    tok = export.load_tokenizer(folders["teacher"])
    cases = {"b1_s128": (None, 1, 128), "b32_s128": (None, 32, 128), "b32_real": (texts, 32, data_cfg.max_length)}
    for case, (src, n, seq) in cases.items():
        batch = _inputs(tok, src, n, seq)
        row = {"batch": list(batch["input_ids"].shape)}
        for name, folder in folders.items():
            model = export.load_classifier(str(folder))
            row[name] = {
                "gmacs": measure.count_macs(
                    model, batch=batch["input_ids"].shape[0], seq_len=batch["input_ids"].shape[1]
                )["gmacs"]
            }
            for rt in RUNTIMES:
                fn = _runner(rt, folder, run / "bench_onnx" / name, args.threads)
                with torch.inference_mode():
                    row[name][rt] = measure.spread(
                        measure.wall_times(
                            lambda fn=fn, batch=batch: fn(batch), repeats=args.repeats, warmup=args.warmup
                        )
                    )
        teacher = row["teacher"]
        for name in folders:
            if name == "teacher":
                continue
            s = row[name]
            s["macs_ratio"] = teacher["gmacs"] / s["gmacs"]
            for rt in RUNTIMES:
                s[f"speedup_{rt}"] = teacher[rt]["median_ms"] / s[rt]["median_ms"]
                s[f"speedup_{rt}_over_macs_ratio"] = s[f"speedup_{rt}"] / s["macs_ratio"]
                s[f"speedup_{rt}_vs_eager_fp32_teacher"] = teacher["eager_fp32"]["median_ms"] / s[rt]["median_ms"]
        result["cases"][case] = row
        print(case, {n: {rt: round(row[n][rt]["median_ms"], 1) for rt in RUNTIMES} for n in folders})
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
