"""The recipe behind `blockswap run`: teacher -> importance -> block-wise KD -> curve -> evaluation.

Every stage writes one artifact atomically into the run folder; `--resume` skips stages whose
artifact exists, so an interrupted run continues at the first missing one.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

from accelerate.utils import set_seed
from safetensors.torch import save_file
from transformers import PreTrainedModel

from . import adapters, data, distill, export, importance, report
from .config import Config, dump_config
from .curve import baselines_stage, evaluation_stage, substitution_curve, summarise
from .evaluate import evaluate
from .finetune import build_classifier, default_base_model, finetune
from .optim import make_accelerator
from .runtime import Run, first_batches, read_json, write_atomic, write_json
from .substitute import make_compact

RUN_MARKER = "run.json"


class RunError(ValueError):
    """A run cannot start or finish as asked; the message says why and what to do."""


def prepare_run_dir(out: Path, *, resume: bool, config: Config, create: bool = True) -> None:
    """Validate (and with ``create``, create) the run folder; refuse to overwrite what is not this run."""
    marker = out / RUN_MARKER
    if out.exists() and not out.is_dir():
        raise RunError(f"--out {out} exists and is not a folder; choose a new run folder")
    if out.exists() and any(out.iterdir()):
        if not marker.is_file():
            raise RunError(f"--out {out} exists and is not a blockswap run; choose a new folder")
        if not resume:
            raise RunError(f"--out {out} already holds a run; pass --resume to continue it, or choose a new folder")
        saved = (out / "config.yaml").read_text() if (out / "config.yaml").is_file() else None
        if saved is not None and saved != dump_config(config):
            raise RunError(
                f"the config differs from {out / 'config.yaml'}; resume with the same flags or start a new run"
            )
    if not create:
        return
    out.mkdir(parents=True, exist_ok=True)
    if not marker.is_file():
        write_json(marker, {"tool": "blockswap", "created": time.strftime("%Y-%m-%dT%H:%M:%S")})
    write_atomic(out / "config.yaml", dump_config(config))


def _load_data(run: Run) -> None:
    dsd = data.load_source(run.cfg.data, log=run.log)
    run.label_names = data.label_names(dsd)
    run.tokenized = data.tokenize(dsd, run.tokenizer, run.cfg.data.max_length)


def _teacher_stage(run: Run) -> None:
    """Fine-tune a teacher into RUN/teacher (or check the given one) and record its accuracy."""
    cfg = run.cfg
    if cfg.run.teacher is not None:
        model = _load_teacher(cfg.run.teacher, len(run.label_names))
        history = {"source": cfg.run.teacher}
    else:
        base = cfg.finetune.model or default_base_model()
        model = build_classifier(base, run.label_names)
        set_seed(cfg.run.seed)
        model, history = finetune(
            model,
            run.loader("train", shuffle=True, batch_size=cfg.finetune.batch_size, seed=cfg.run.seed),
            run.loader("validation", shuffle=False),
            cfg.finetune,
            accelerator=run.accelerator,
            log=run.log,
        )
        if run.accelerator.is_main_process:
            export.save(model, run.out / "teacher", tokenizer=run.tokenizer)
        run.accelerator.wait_for_everyone()
        history["source"] = str(run.out / "teacher")
    # fine-tuning already evaluated the returned model on validation (fp32)
    history["validation"] = history.pop("best_validation", None) or evaluate(
        model, run.loader("validation", shuffle=False)
    )
    history["test"] = evaluate(model, run.loader("test", shuffle=False))
    run.log(
        f"teacher: validation accuracy {history['validation']['accuracy']:.4f}, test {history['test']['accuracy']:.4f}"
    )
    write_json(run.out / "teacher.json", history)


def _load_teacher(source: str, num_labels: int) -> PreTrainedModel:
    path = Path(source)
    if path.is_dir() and (path / "config.json").is_file():
        archs = read_json(path / "config.json").get("architectures") or []
        if archs and not any(a.endswith("ForSequenceClassification") for a in archs):
            raise RunError(f"--teacher {source} is not a sequence classifier ({', '.join(archs)}); fine-tune one first")
    model = export.load_model(source)
    if model.config.num_labels < num_labels:
        raise RunError(f"the teacher's head has {model.config.num_labels} labels but the data has {num_labels}")
    return model.eval()


def _importance_stage(run: Run) -> None:
    batches = first_batches(run, "validation", run.cfg.importance.importance_batches, batch_size=32, seed=1)
    with run.accelerator.autocast():  # a ranking: the training precision suffices, and bf16 halves it on CPU
        result = importance.rank(
            run.teacher,
            batches,
            run.cfg.importance.weight_map(),
            probe_steps=run.cfg.importance.probe_steps,
            seed=run.cfg.run.seed,
        )
    run.log(f"importance order (least important first): {result['order']}")
    write_json(run.out / "importance.json", result)


def _blockwise_stage(run: Run) -> None:
    cfg = run.cfg
    set_seed(cfg.run.seed)
    n = adapters.num_blocks(run.teacher)
    subs = {i: make_compact(run.teacher, cfg.compact, i) for i in range(n)}
    if cfg.compact.init == "linear":
        batches = first_batches(run, "train", 20, batch_size=64, seed=2)
        distill.init_linear(run.teacher, subs, batches)
    history = distill.blockwise(
        run.teacher,
        subs,
        run.loader("train", shuffle=True, seed=cfg.run.seed),
        cfg.distill,
        accelerator=run.accelerator,
    )
    tensors = {f"{i}.{k}": v.detach().cpu().contiguous() for i, b in subs.items() for k, v in b.state_dict().items()}
    tmp = run.out / f".substitutes.{os.getpid()}.safetensors"
    save_file(tensors, tmp)
    os.replace(tmp, run.out / "substitutes.safetensors")
    write_json(run.out / "blockwise.json", {"mse_by_quarter": {str(k): v for k, v in history.items()}})


def run_pipeline(cfg: Config, out: Path, *, resume: bool = False, log: Callable[[str], None] = print) -> dict:
    """Run every stage into ``out``; returns the summary."""
    accelerator, precision = make_accelerator(cpu=cfg.run.cpu, mixed_precision=cfg.run.mixed_precision)
    prepare_run_dir(out, resume=resume, config=cfg, create=False)  # every process validates first
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        prepare_run_dir(out, resume=resume, config=cfg)
    accelerator.wait_for_everyone()
    run = Run(cfg=cfg, out=out, accelerator=accelerator, log=log)
    log(f"training precision: {'fp32' if precision == 'no' else precision} (teacher and final evaluation fp32)")
    if (out / "timings.json").is_file():
        run.timings = read_json(out / "timings.json")
    t0 = time.perf_counter()
    set_seed(cfg.run.seed)
    tok_source = cfg.run.teacher or cfg.finetune.model or default_base_model()
    run.tokenizer = export.load_tokenizer(tok_source)
    _load_data(run)
    run.stage("teacher", "teacher.json", lambda: _teacher_stage(run))
    run.teacher = _load_teacher(read_json(out / "teacher.json")["source"], len(run.label_names))
    run.teacher.requires_grad_(False)
    run.stage("importance", "importance.json", lambda: _importance_stage(run))
    run.stage("blockwise", "blockwise.json", lambda: _blockwise_stage(run))
    run.stage("curve", "curve.json", lambda: substitution_curve(run))

    run.stage("evaluation", "evaluation.json", lambda: evaluation_stage(run))
    if cfg.run.baseline_names():
        run.stage("baselines", "baselines.json", lambda: baselines_stage(run))
    run.timings["total_this_invocation"] = round(time.perf_counter() - t0, 2)
    summary = summarise(run)
    write_json(out / "summary.json", summary)
    report.render(out)
    return summary
