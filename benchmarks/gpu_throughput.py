"""GPU throughput of a classifier vs students of it, the compact attention fused and explicit (eager PyTorch).

    python benchmarks/gpu_throughput.py CLASSIFIER_DIR [--blocks 2,3,4] [--json FILE]

The students are the classifier with ``--blocks`` substituted, and with every block substituted, by compact
blocks of the default shape with random weights (speed does not depend on the weights). Sequence 128, half of
each batch padded to 64 tokens; batches 1, 32, 256 and 1024 in fp32 and under bf16 autocast; 3 warm-up calls,
median of 10 (ms). Each student is timed with its attention as one ``scaled_dot_product_attention`` call (the
default on a GPU) and as explicit matmuls (``_explicit``, the CPU's form). Needs CUDA.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from blockswap import arch, export
from blockswap.compact import attention_kernel
from blockswap.measure import count_macs
from blockswap.substitute import substitute

ROOT = Path(__file__).resolve().parents[1]


def timed(model, ids: torch.Tensor, mask: torch.Tensor, *, warmup: int = 3, repeats: int = 10) -> float:
    for _ in range(warmup):
        model(input_ids=ids, attention_mask=mask)
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        model(input_ids=ids, attention_mask=mask)
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return round(sorted(times)[repeats // 2] * 1e3, 2)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("classifier")
    parser.add_argument("--blocks", default="2,3,4", help="the substituted blocks of the first student")
    parser.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "gpu_throughput.json"))
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("gpu_throughput.py needs a CUDA GPU")
    teacher = export.load_classifier(args.classifier).eval()
    blocks = [int(b) for b in args.blocks.split(",")]
    n = arch.num_blocks(teacher)
    models = {
        "teacher": teacher,
        f"blocks_{args.blocks}": substitute(teacher, blocks),
        "every": substitute(teacher, range(n)),
    }
    gmacs = {name: count_macs(m)["gmacs"] for name, m in models.items()}
    models = {name: m.cuda().eval() for name, m in models.items()}
    ms = {}
    for dtype in ("fp32", "bf16"):
        for b in (1, 32, 256, 1024):
            ids = torch.randint(1000, 20000, (b, 128), device="cuda")
            mask = torch.ones_like(ids)
            mask[: b // 2, 64:] = 0
            row = {}
            with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=dtype == "bf16"):
                for name, m in models.items():
                    row[name] = timed(m, ids, mask)
                    if name != "teacher":
                        with attention_kernel("explicit"):
                            row[name + "_explicit"] = timed(m, ids, mask)
            ms[f"{dtype} b{b}"] = row
            print(dtype, b, row, flush=True)
    result = {
        "device": torch.cuda.get_device_name(0),
        "torch": torch.__version__,
        "seq_len": 128,
        "gmacs": gmacs,
        "ms": ms,
    }
    Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
