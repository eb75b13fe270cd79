"""`blockswap run`: the recipe (an ordered list of stages) and the loop that runs it.

Every stage reads the artifacts of the stages before it and writes one artifact atomically;
`--resume` skips stages whose artifact exists, so an interrupted run continues at the first missing
one. Adding a stage is one entry in RECIPE.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from accelerate.utils import set_seed

from .. import arch, embed, export, report
from ..config import Config
from ..errors import ConfigError, RunError
from ..loaders import prepare, prepare_embedding
from ..substitute import check_drop_blocks
from ..train import default_base_model, make_accelerator
from . import stages
from .compare import CACHE_USERS, baselines_stage
from .curve import substitution_curve
from .state import RunState, check_run_dir, create_run_dir


@dataclass(frozen=True)
class Stage:
    """One step of the recipe: ``run(state)`` writes ``artifact``, reading the artifacts in ``reads``."""

    name: str
    artifact: str
    run: Callable[[RunState], None]
    reads: tuple[str, ...] = ()
    enabled: Callable[[Config], bool] = lambda cfg: True
    always: bool = False  # re-run on every invocation (cheap summaries of the others)
    uses_cache: Callable[[Config], bool] = lambda cfg: False  # reads the teacher's outputs on the training texts


# fmt: off
RECIPE: tuple[Stage, ...] = (
    Stage("teacher", "teacher.json", stages.teacher),
    Stage("importance", "importance.json", stages.block_importance, reads=("teacher.json",)),
    Stage("blockwise", "blockwise.json", stages.blockwise, reads=("teacher.json",), uses_cache=lambda c: True),
    Stage("curve", "curve.json", substitution_curve, reads=("importance.json", "blockwise.json"), uses_cache=lambda c: c.distill.e2e_steps > 0),
    Stage("recovery", "recovery.json", stages.recovery, reads=("curve.json",), enabled=lambda c: c.distill.recovery_epochs > 0, uses_cache=lambda c: True),
    Stage("evaluation", "evaluation.json", stages.evaluation, reads=("teacher.json", "curve.json")),
    Stage("vocab", "vocab.json", stages.prune_vocab, reads=("curve.json",), enabled=lambda c: c.run.prune_vocab),
    Stage("export", "export.json", stages.onnx_export, reads=("curve.json",), enabled=lambda c: c.run.export == "onnx"),
    Stage("baselines", "baselines.json", baselines_stage, reads=("curve.json",), enabled=lambda c: bool(c.run.baselines), uses_cache=lambda c: bool(CACHE_USERS & set(c.run.baselines))),
    Stage("summary", "summary.json", stages.summary, reads=("teacher.json", "curve.json", "evaluation.json"), always=True),
    Stage("report", "report.md", lambda s: report.render(s.out), always=True),
)
# fmt: on


def _check_embedding_options(cfg: Config) -> None:
    """What the embedding task does not offer, refused before anything loads."""
    if "thesis" in cfg.run.baselines:
        raise ConfigError("the thesis baseline trains on labels, which the embedding task does not use; drop it")


def _check_classifier_options(cfg: Config) -> None:
    """What only the embedding task offers, refused before anything loads."""
    if cfg.run.eval_dataset is not None:
        raise ConfigError("--eval-dataset scores sentence embeddings; it needs --task embedding")


def _check_drop_blocks(cfg: Config, teacher) -> None:
    """--drop-blocks against the teacher's blocks (the base model's config when the run fine-tunes one)."""
    if teacher is None:
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(cfg.finetune.model or default_base_model())
        n = getattr(config, "num_hidden_layers", None) or config.n_layers
    else:
        n = arch.num_blocks(teacher)
    check_drop_blocks(cfg.run.drop_blocks, n)


def _start(cfg: Config, out: Path, *, resume: bool, log: Callable[[str], None], started: float) -> RunState:
    """Validate the folder, load data and teacher; only then create the folder (a failed start leaves none)."""
    accelerator, precision = make_accelerator(cpu=cfg.run.cpu, mixed_precision=cfg.run.mixed_precision)
    check_run_dir(out, resume=resume, config=cfg)
    log(f"training precision: {'fp32' if precision == 'no' else precision} (teacher and final evaluation fp32)")
    set_seed(cfg.run.seed)
    if cfg.data.task == "embedding":  # the teacher is used as it is: its embeddings are the data's targets
        _check_embedding_options(cfg)
        teacher = embed.load_teacher(cfg.run.teacher or embed.default_teacher()).to(accelerator.device)
        sts = None
        if cfg.run.eval_dataset is not None:  # read (and refused if unusable) before the folder exists
            sts = embed.StsSet.build(
                cfg.run.eval_dataset, cfg.run.eval_split, teacher.st[0].tokenizer, max_length=cfg.data.max_length
            )
            log(f"--eval-dataset {cfg.run.eval_dataset}: {len(sts.scores)} scored pairs")
        data = prepare_embedding(cfg.data, teacher, log=log)
        state = RunState(
            cfg=cfg, out=out, accelerator=accelerator, data=data, log=log, teacher=teacher, sts=sts, started=started
        )
    else:
        _check_classifier_options(cfg)
        data = prepare(
            cfg.data, export.load_tokenizer(cfg.run.teacher or cfg.finetune.model or default_base_model()), log=log
        )
        state = RunState(cfg=cfg, out=out, accelerator=accelerator, data=data, log=log, started=started)
        source = state.read("teacher.json")["source"] if state.path("teacher.json").is_file() else cfg.run.teacher
        if source is not None:
            state.teacher = stages.load_teacher(source, len(data.label_names), data.task)
    if cfg.run.drop_blocks:
        _check_drop_blocks(cfg, state.teacher)
    accelerator.wait_for_everyone()  # every process has validated before the main one creates anything
    if accelerator.is_main_process:
        create_run_dir(out, cfg)
    accelerator.wait_for_everyone()
    if state.path("timings.json").is_file():
        state.timings = state.read("timings.json")
        state.spent_before = sum(state.timings.values())
    return state


def run_pipeline(
    cfg: Config, out: Path, *, resume: bool = False, log: Callable[[str], None] = print, started: float | None = None
) -> dict:
    """Run every enabled stage of RECIPE into ``out``; returns the summary. ``started``: the ``perf_counter()`` at
    which the command began (default: now), from which --time-budget counts."""
    started = time.perf_counter() if started is None else started
    state = _start(cfg, out, resume=resume, log=log, started=started)
    for i, stage in enumerate(RECIPE):
        if not any(s.enabled(cfg) and s.uses_cache(cfg) for s in RECIPE[i:]):
            # nothing left reads the teacher cache (up to --teacher-cache-gb): its memory goes to the export and the rest
            state.release_teacher_cache()
        if not stage.enabled(cfg):
            continue
        if state.path(stage.artifact).exists() and not stage.always:
            log(f"[{stage.name}] {stage.artifact} exists: skipped")
            continue
        missing = [name for name in stage.reads if not state.path(name).exists()]
        if missing:
            raise RunError(f"stage {stage.name} needs {', '.join(missing)} in {out}; re-run without deleting them")
        if not stage.always:
            log(f"[{stage.name}] running")
        started = time.perf_counter()
        stage.run(state)
        state.accelerator.wait_for_everyone()  # every process sees the artifact before the next stage
        if not stage.always:
            state.timings[stage.name] = round(time.perf_counter() - started, 2)
            state.write("timings.json", state.timings)
    return state.read("summary.json")
