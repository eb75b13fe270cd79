"""Block-wise distillation with a teacher cache too small for every training text: whole-batch vs partial serving.

    .venv/bin/python benchmarks/teacher_cache.py RUN_DIR [--gb 0.6] [--epochs 2] [--json FILE]

Uses a finished classifier run's teacher, data, substitute shape and block-wise config. Trains the
block-wise substitutes (linear-fit start, as the run) three times: with a cache of ``--gb`` GiB that
serves a batch only when every text is cached (the behaviour before partial serving), with the same cache
serving batches in part (the teacher runs on the uncached texts only), and with no cache. Reports wall
seconds, texts the teacher ran on, batches served whole / in part, and the final block-wise MSE of each.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import sys
import time
from pathlib import Path

import transformers
from accelerate.utils import set_seed
from finished_run import open_run  # benchmarks/finished_run.py

from blockswap import arch, distill
from blockswap.substitute import make_compact
from blockswap.teacher_cache import TeacherCache

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir")
    parser.add_argument("--gb", type=float, default=0.6)
    parser.add_argument("--epochs", type=float, default=2.0)
    parser.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "teacher_cache.json"))
    args = parser.parse_args()
    transformers.utils.logging.disable_progress_bar()
    run = Path(args.run_dir)
    cfg, accelerator, precision, teacher, data = open_run(run)
    dcfg = dataclasses.replace(cfg.distill, blockwise_epochs=args.epochs)
    texts = {"n": 0}  # texts the teacher's first block ran on (the masks' identity forwards replace the blocks)
    arch.blocks(teacher)[0].register_forward_pre_hook(
        lambda m, a, kw: texts.__setitem__("n", texts["n"] + (a[0] if a else kw["hidden_states"]).shape[0]),
        with_kwargs=True,
    )
    result = {"run_dir": str(run), "precision": precision, "cache_gib": args.gb, "epochs": args.epochs, "modes": {}}
    real_partly = distill._partly_cached
    for mode in ("whole batches only", "partial", "no cache"):
        distill._partly_cached = real_partly if mode == "partial" else (lambda *a, **k: None)
        cache = TeacherCache(int(args.gb * 2**30)) if mode != "no cache" else None
        set_seed(cfg.run.seed)
        subs = {i: make_compact(teacher, cfg.compact, i) for i in range(arch.num_blocks(teacher))}
        distill.init_linear(
            teacher, subs, itertools.islice(data.loader("train", shuffle=True, batch_size=64, seed=2), 20)
        )
        texts["n"] = 0
        loader = data.loader("train", shuffle=True, batch_size=dcfg.batch_size, seed=cfg.run.seed)
        started = time.perf_counter()
        history = distill.blockwise(teacher, subs, loader, dcfg, accelerator=accelerator, cache=cache)
        row = {
            "seconds": time.perf_counter() - started,
            "teacher_forward_texts": texts["n"],
            "final_mse_mean": sum(h[-1] for h in history.values()) / len(history),
        }
        if cache is not None:
            row.update(cached_texts=len(cache.rows), batches_served=cache.hits, batches_partly_served=cache.partial,
                       batches_not_served=cache.misses - cache.partial)  # fmt: skip
        result["modes"][mode] = row
        print(mode, json.dumps(row), flush=True)
    distill._partly_cached = real_partly
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
