"""Which dynamic int8 quantisation keeps the model: one scale per weight tensor or one per output channel.

    .venv/bin/python benchmarks/int8_modes.py NAME=MODEL_DIR [NAME=MODEL_DIR ...] [--dataset snippets]
        [--json benchmarks/results/int8_modes.json]

Each MODEL_DIR is a PyTorch folder blockswap can load: a classifier or a sentence-transformers folder. It
is exported once (`blockswap export`'s fp32 graph, parity-checked), then quantised with ONNX Runtime's
``quantize_dynamic`` (int8 weights) per tensor and per channel, and each int8 model is compared with the
PyTorch model on the dataset's test split: a classifier's accuracy and its argmax agreement with fp32, an
embedding model's mean cosine to PyTorch's embeddings and recall@10 of PyTorch's nearest neighbours.
Accuracy only, no timings (`benchmarks/deploy.py` times the exported models).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MODES = {"per_tensor": "per-tensor", "per_channel": "per-channel"}


def compare(folder: Path, dataset: str) -> dict:
    from datasets import DatasetDict

    from blockswap import deploy, embed, export
    from blockswap.config import DataConfig
    from blockswap.data import load_source
    from blockswap.loaders import loader, tokenize

    is_emb = embed.is_sentence_transformers_folder(folder)
    model = export.load(folder) if is_emb else export.load_classifier(folder)
    tokenizer = export.load_tokenizer(folder)
    cfg = DataConfig(dataset=dataset)
    dsd = load_source(cfg)
    texts = list(dsd["test"]["text"])
    out = {"folder": str(folder), "task": "embedding" if is_emb else "classification"}
    with tempfile.TemporaryDirectory() as tmp:
        onnx_dir = Path(tmp) / "onnx"
        meta = deploy.export_onnx(model, tokenizer, onnx_dir, check_texts=texts, int8=False)
        out["parity_fp32"] = meta["parity"]["max_abs_logit_diff"]
        for mode, scales in MODES.items():
            deploy.quantize_int8(onnx_dir / deploy.ONNX_FILE, onnx_dir / deploy.INT8_FILE, scales=scales)
            if is_emb:
                report = deploy.embedding_report(
                    model, onnx_dir, tokenizer, texts, max_length=cfg.max_length, int8=True
                )
            else:
                test = tokenize(DatasetDict(test=dsd["test"]), tokenizer, cfg.max_length)["test"]
                report = deploy.accuracy_report(
                    model, onnx_dir, loader(test, tokenizer, batch_size=64, shuffle=False), int8=True
                )
            out[mode] = report
            print(folder.name, mode, {k: round(v, 4) for k, v in report.items() if isinstance(v, float)}, flush=True)
    return out


def main() -> int:
    from blockswap.measure import machine

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+", help="NAME=MODEL_DIR")
    parser.add_argument("--dataset", default="snippets")
    parser.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "int8_modes.json"))
    args = parser.parse_args()
    result = {
        "command": " ".join(["benchmarks/int8_modes.py", *sys.argv[1:]]),
        "host": machine(),  # without VNNI in cpu_flags, u8 x s8 products can saturate (ONNX Runtime's docs)
        "dataset": args.dataset,
        "models": {},
    }
    for item in args.models:
        name, _, folder = item.partition("=")
        result["models"][name] = compare(Path(folder), args.dataset)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
