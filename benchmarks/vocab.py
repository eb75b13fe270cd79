"""What vocabulary pruning costs: the test metric of trained models before and after, over runs and seeds.

    .venv/bin/python benchmarks/vocab.py DATASET=MODEL_DIR [DATASET=MODEL_DIR ...]
        [--candidates K] [--json benchmarks/results/vocab.json]

Each MODEL_DIR is a classifier folder (a run's ``model_recovered``, ``model_last_recovered``, ...) trained on
DATASET (a packaged set or anything ``--dataset`` takes), or a sentence-transformers folder. Its vocabulary is
pruned to DATASET's training texts exactly as ``blockswap prune-vocab`` does, and the test split is scored before
and after (with the paired interval of ``kept`` = after / before); a sentence encoder by recall@10 of the
unpruned model's neighbours (1 before), so its "points lost" are points of that recall. The summary pools the
points lost over every model given, per kind of model (the folder's name) and per dataset, since one model's test
split is too small to tell 0.3 points from noise; and the test texts whose correctness changed (either way), a far
less noisy count. ``--candidates 1`` maps each dropped token to the most similar kept row (cosine) alone, as
blockswap did before the model's answer chose among the most similar.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def measure(folder: Path, dataset: str, candidates: int) -> dict:
    from blockswap import embed, export
    from blockswap.config import DataConfig
    from blockswap.data import load_source
    from blockswap.vocab import prune_and_measure

    cfg = DataConfig(dataset=dataset)
    t0 = time.perf_counter()
    model = export.load(folder) if embed.is_sentence_transformers_folder(folder) else export.load_classifier(folder)
    _, stats = prune_and_measure(
        model, export.load_tokenizer(folder), load_source(cfg), max_length=cfg.max_length, candidates=candidates
    )
    stats.update(folder=str(folder), dataset=dataset, seconds=time.perf_counter() - t0)
    stats["points_lost"] = 100 * (stats["test_score_before"] - stats["test_score_after"])
    return stats


def summarise(results: list[dict]) -> dict:
    """Mean points lost and mean embedding cut: over everything, per kind of model (the folder's name), per
    dataset, and per dataset and kind."""
    groups: dict[str, list[dict]] = {"all": results}
    for r in results:
        kind = Path(r["folder"]).name
        for name in (kind, r["dataset"], f"{r['dataset']} {kind}"):
            groups.setdefault(name, []).append(r)
    return {
        name: {
            "models": len(rows),
            "mean_points_lost": statistics.fmean(r["points_lost"] for r in rows),
            "sd_points_lost": statistics.stdev([r["points_lost"] for r in rows]) if len(rows) > 1 else None,
            "mean_word_embedding_cut": statistics.fmean(r["word_embedding_cut"] for r in rows),
            # far less noisy than the points lost: texts flipped either way, not only their balance
            "mean_test_texts_correctness_changed": statistics.fmean(c)
            if (c := [r["test_texts_correctness_changed"] for r in rows if "test_texts_correctness_changed" in r])
            else None,
            "test_sentences": sum(r["n_test"] for r in rows),
        }
        for name, rows in groups.items()
    }


def main() -> int:
    from blockswap import vocab
    from blockswap.measure import machine

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+", help="DATASET=MODEL_DIR")
    parser.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "vocab.json"))
    parser.add_argument(
        "--candidates", type=int, default=None, help="kept rows a dropped token's row is chosen among (1: the nearest)"
    )
    args = parser.parse_args()
    if args.candidates is not None and args.candidates < 1:
        parser.error("--candidates must be at least 1")
    results = []
    for item in args.models:
        dataset, _, folder = item.partition("=")
        if not folder:
            parser.error(f"{item!r}: give DATASET=MODEL_DIR")
        results.append(measure(Path(folder), dataset, args.candidates or vocab.CANDIDATES))
        r = results[-1]
        print(
            f"{dataset} {folder}: {r['vocab_before']} -> {r['vocab_after']} tokens, {r['metric']} "
            f"{r['test_score_before']:.4f} -> {r['test_score_after']:.4f} ({-r['points_lost']:+.2f} points)",
            flush=True,
        )
    out = {
        "command": " ".join(["benchmarks/vocab.py", *sys.argv[1:]]),
        "host": machine(),
        "method": "kept rows of the training texts' tokens; each dropped token reads "
        + (results[0]["dropped_rows"] if results else "")
        + "; tokenizer unchanged (blockswap.vocab)",
        "summary": summarise(results),
        "models": results,
    }
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(out, indent=1))
    for name, s in out["summary"].items():
        print(f"{name}: {s['models']} models, mean {-s['mean_points_lost']:+.2f} points (sd {s['sd_points_lost']})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
