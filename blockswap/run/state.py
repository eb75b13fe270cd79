"""What the stages of a run share: config, run folder, accelerator, data, teacher; artifact I/O."""

from __future__ import annotations

import gc
import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import yaml
from accelerate import Accelerator
from transformers import PreTrainedModel

from .. import export, files, measure
from ..config import Config, dump_config, to_dict
from ..embed import StsSet
from ..errors import RunError
from ..evaluate import PER_EXAMPLE, evaluate
from ..loaders import TaskData
from ..teacher_cache import TeacherCache

RUN_MARKER = "run.json"
# the run's fields the stop rule reads: they may change on --resume until the curve is complete (curve.json), so that
# a curve no step of which satisfied the rule (curve.unsatisfied.json) is resumed with a relaxed rule, not re-run
STOP_RULE_FIELDS = ("min_kept", "target_gmacs_cut", "max_blocks", "full_curve", "stop_rule")


@dataclass
class RunState:
    """One invocation of `blockswap run`. ``teacher`` is None only until the teacher stage has run."""

    cfg: Config
    out: Path
    accelerator: Accelerator
    data: TaskData
    teacher: PreTrainedModel | None = None
    log: Callable[[str], None] = print
    timings: dict[str, float] = field(default_factory=dict)  # seconds per stage, kept across --resume
    started: float = field(default_factory=time.perf_counter)  # when this invocation began
    spent_before: float = 0.0  # seconds of the stages that earlier invocations (--resume) ran
    sts: StsSet | None = None  # --eval-dataset (embedding task): pairs scored for similarity
    cpu_paces: tuple[float, float] | None = None  # --time-budget --export: the teacher's CPU pace, 1 and all threads
    _cache: TeacherCache | None = None

    @property
    def teacher_cache(self) -> TeacherCache:
        """The teacher's outputs on the training texts, shared by every stage of this invocation."""
        if self._cache is None:
            self._cache = TeacherCache(int(self.cfg.distill.teacher_cache_gb * 2**30))
        return self._cache

    def release_teacher_cache(self) -> None:
        """Free the teacher cache's memory once no stage left reads it (a later read would start an empty one)."""
        if self._cache is not None:
            self._cache = None
            gc.collect()

    def path(self, name: str) -> Path:
        return self.out / name

    def read(self, name: str):
        return files.read_json(self.out / name)

    def write(self, name: str, obj) -> None:
        files.write_json(self.out / name, obj)

    def train_loader(self, seed: int):
        """Shuffled, length-bucketed training batches at the distillation batch size."""
        return self.data.loader("train", shuffle=True, batch_size=self.cfg.distill.batch_size, seed=seed)

    def first_batches(self, split: str, n: int, *, batch_size: int, seed: int) -> list[dict[str, torch.Tensor]]:
        """The first ``n`` shuffled batches of a split (only those are collated)."""
        return list(itertools.islice(self.data.loader(split, shuffle=True, batch_size=batch_size, seed=seed), n))

    def evaluate_point(self, model: PreTrainedModel, split: str) -> dict:
        """A curve or baseline point, evaluated in the training precision.

        On a bf16 CPU this halves the 50-odd evaluations of a run; the teacher's own curve row is
        evaluated the same way, so ``kept`` compares like with like. teacher.json and the final
        evaluation stage are fp32.
        """
        with self.accelerator.autocast():
            return self.evaluate(model, split)

    def evaluate(self, model: PreTrainedModel, split: str) -> dict:
        """``model``'s metrics on ``split``, the main one the run's (an embedding task's ``--embedding-metric``)."""
        return evaluate(model, self.data.loader(split), embedding_metric=self.cfg.run.embedding_metric)

    def teacher_point(self, split: str) -> dict:
        """The teacher as a curve point: teacher.json's fp32 metrics when training runs in fp32 (they are the
        same numbers; two evaluations saved), else evaluated in the training precision like every point."""
        if self.accelerator.mixed_precision == "no":
            metrics = self.teacher_test() if split == "test" else self.read("teacher.json")[split]
            if "score" in metrics:
                return metrics
        return self.evaluate_point(self.teacher, split)

    def teacher_test(self) -> dict:
        """The teacher's fp32 test metrics from teacher.json, with per-example results (re-evaluated for a
        teacher.json written by a blockswap that did not record them)."""
        test = self.read("teacher.json")["test"]
        per_example = any(k in test for k in (*PER_EXAMPLE, "preds"))
        return test if per_example and "score" in test else self.evaluate(self.teacher, "test")

    def place(self, model: PreTrainedModel) -> PreTrainedModel:
        """``model`` moved (in place) to the run's device, where the teacher trains and is measured."""
        return model.to(self.accelerator.device)

    def cost(self, model: PreTrainedModel, latency_batches: tuple[int, ...] = (1,)) -> measure.Cost:
        """Parameters, GMACs and latency at the run's measurement sequence length."""
        return measure.cost(
            model,
            seq_len=self.cfg.run.eval_seq_len,
            latency_batches=latency_batches,
            repeats=self.cfg.run.latency_repeats,
        )

    def save_model(self, model: PreTrainedModel, name: str) -> None:
        """Save a model folder (with the tokenizer) from the main process; every process waits."""
        if self.accelerator.is_main_process:
            export.save(model, self.out / name, tokenizer=self.data.tokenizer)
        self.accelerator.wait_for_everyone()


def check_run_dir(out: Path, *, resume: bool, config: Config) -> None:
    """Refuse a folder that is not this run; a folder holding only a failed start counts as empty."""
    if out.exists() and not out.is_dir():
        raise RunError(f"--out {out} exists and is not a folder; choose a new run folder")
    contents = {p.name for p in out.iterdir()} if out.is_dir() else set()
    if not contents or contents <= {RUN_MARKER, "config.yaml"}:
        return
    if RUN_MARKER not in contents:
        raise RunError(f"--out {out} exists and is not a blockswap run; choose a new folder")
    if not resume:
        raise RunError(f"--out {out} already holds a run; pass --resume to continue it, or choose a new folder")
    saved = out / "config.yaml"
    if saved.is_file() and saved.read_text() != dump_config(config):
        if (out / "curve.json").is_file() or not _differs_in_stop_rule_only(saved, config):
            raise RunError(
                f"the config differs from {saved} ({_differences(saved, config)}); resume with the same flags (the "
                "stop rule's may change until the curve is complete; a default changed since the run began needs "
                "its saved value as a flag) or start a new run"
            )


def _differences(saved: Path, config: Config, most: int = 3) -> str:
    """``section.key saved -> now`` for the first ``most`` keys whose values differ."""
    old, new = yaml.safe_load(saved.read_text()) or {}, to_dict(config)
    diffs = [
        f"{section}.{key} {(old.get(section) or {}).get(key)!r} -> {value!r}"
        for section, values in new.items()
        for key, value in values.items()
        if (old.get(section) or {}).get(key) != value
    ]
    return "; ".join(diffs[:most]) + (f"; {len(diffs) - most} more" if len(diffs) > most else "")


def _differs_in_stop_rule_only(saved: Path, config: Config) -> bool:
    old, new = yaml.safe_load(saved.read_text()), to_dict(config)
    for fields in (old, new):
        for name in STOP_RULE_FIELDS:
            fields.get("run", {}).pop(name, None)
    return old == new


def create_run_dir(out: Path, config: Config) -> None:
    """The run folder with its marker and resolved config (called once the run has started well)."""
    out.mkdir(parents=True, exist_ok=True)
    if not (out / RUN_MARKER).is_file():
        files.write_json(out / RUN_MARKER, {"tool": "blockswap", "created": time.strftime("%Y-%m-%dT%H:%M:%S")})
    files.write_text(out / "config.yaml", dump_config(config))
