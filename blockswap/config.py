"""One source of configuration: frozen dataclasses with help text, loaded from YAML and CLI flags.

Lists and weightings are real YAML values (``baselines: [magnitude, random]``,
``signals: {drop_one: 1, influence: 1}``); on the command line they are written
``--baselines magnitude,random`` and ``--signals drop_one=1,influence=1`` and parsed once, here.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from .compact import CompactSpec
from .errors import ConfigError


def _help(text: str, **kw) -> Any:
    return field(metadata={"help": text}, **kw)


def _positive(section: str, **values: float | int | None) -> None:
    for name, value in values.items():
        if value is not None and value <= 0:
            raise ConfigError(f"{section}.{name} must be positive, got {value}")


def _names(value: Any, what: str) -> tuple[str, ...]:
    """A list given as YAML sequence or comma string -> tuple of names ('none' = empty)."""
    if isinstance(value, str):
        value = value.split(",")
    if not isinstance(value, (list, tuple)):
        raise ConfigError(f"{what} must be a list of names, got {value!r}")
    return tuple(n.strip() for n in map(str, value) if n.strip() and n.strip() != "none")


def _weights(value: Any, what: str) -> dict[str, float]:
    """A weighting given as YAML mapping or ``name=weight,...`` string -> {name: weight}."""
    if isinstance(value, str):
        pairs = [item.partition("=") for item in filter(None, (p.strip() for p in value.split(",")))]
        value = {name.strip(): (w.strip() or 1) for name, _, w in pairs}
    if not isinstance(value, dict):
        raise ConfigError(f"{what} must map names to weights, got {value!r}")
    out = {}
    for name, w in value.items():
        try:
            out[str(name)] = float(w)
        except (TypeError, ValueError):
            raise ConfigError(f"{what}: weight for {name!r} is not a number: {w!r}") from None
    return out


def _known(names, known, what: str) -> None:
    for n in names:
        if n not in known:
            raise ConfigError(f"unknown {what} {n!r}; use {', '.join(known)}")


@dataclass(frozen=True)
class DataConfig:
    """Where the labelled text comes from and how it is tokenised."""

    dataset: str = _help(
        "'snippets' (offline default), 'amazon', 'nyt', 'tweets' (packaged too), a hub dataset name, or a "
        ".csv/.tsv/.jsonl/.parquet file; several joined by '+' (e.g. snippets+amazon+nyt+tweets) are one dataset, "
        "split by split",
        default="snippets",
    )
    dataset_config: str | None = _help("hub dataset configuration (e.g. sst2 for glue)", default=None)
    text_column: str | None = _help("text column (auto: text, sentence, review)", default=None)
    label_column: str | None = _help("label column (auto: label, labels)", default=None)
    text_pair_column: str | None = _help(
        "second text of sentence-pair tasks (NLI, paraphrase); auto when no --text-column is given and the data "
        "has sentence1/sentence2, question1/question2, premise/hypothesis or question/sentence",
        default=None,
    )
    task: str = _help(
        "classification, regression (one float label per text: Pearson/Spearman, KD by squared error), token "
        "(a tag per word: NER-style, entity F1), embedding (compress a sentence-transformers teacher: its "
        "embeddings are the target, labels only feed a probe) or auto (token with tokens + tags/ner_tags "
        "columns, regression when the labels are non-integer numbers)",
        default="auto",
    )
    max_length: int = _help("tokeniser truncation length", default=64)
    val_fraction: float = _help("validation share carved out when the source has none", default=0.1)
    test_fraction: float = _help("test share carved out when the source has none", default=0.1)
    split_seed: int = _help("seed of the deterministic stratified split", default=13)
    max_train_examples: int | None = _help("use at most this many training examples", default=None)
    max_eval_examples: int | None = _help("use at most this many validation/test examples", default=None)

    def __post_init__(self) -> None:
        _positive("data", max_length=self.max_length, max_train_examples=self.max_train_examples)
        _positive("data", max_eval_examples=self.max_eval_examples)
        if self.task not in ("auto", "classification", "regression", "token", "embedding"):
            raise ConfigError(
                f"data.task {self.task!r} unknown; use auto, classification, regression, token or embedding"
            )
        for name in ("val_fraction", "test_fraction"):
            if not 0 < getattr(self, name) < 0.5:
                raise ConfigError(f"data.{name} must be in (0, 0.5), got {getattr(self, name)}")


@dataclass(frozen=True)
class FinetuneConfig:
    """Teacher fine-tuning."""

    model: str | None = _help("base encoder: hub id or folder (default: packaged all-MiniLM-L6-v2)", default=None)
    epochs: int = _help("fine-tuning epochs", default=1)
    batch_size: int = _help("fine-tuning batch size", default=32)
    lr: float = _help("fine-tuning peak learning rate", default=1e-4)
    warmup_ratio: float = _help("share of steps with linear warm-up", default=0.1)
    weight_decay: float = _help("AdamW weight decay", default=0.01)
    max_steps: int | None = _help("stop fine-tuning after this many steps", default=None)

    def __post_init__(self) -> None:
        _positive("finetune", epochs=self.epochs, batch_size=self.batch_size, lr=self.lr, max_steps=self.max_steps)


@dataclass(frozen=True)
class ImportanceConfig:
    """Block-importance signals and how they are combined."""

    signals: dict[str, float] = _help(
        "signal=weight list; signals: drop_one, influence, grad_act, softmax_weight, scale",
        default_factory=lambda: {
            "drop_one": 1.0,
            "influence": 1.0,
            "grad_act": 1.0,
            "softmax_weight": 1.0,
            "scale": 1.0,
        },
    )
    importance_batches: int = _help("validation batches used by each signal", default=16)
    probe_steps: int = _help("training steps of the learned probes (softmax_weight, scale)", default=60)

    def __post_init__(self) -> None:
        from .importance import SIGNALS  # the registry is the one list of names

        _positive("importance", importance_batches=self.importance_batches, probe_steps=self.probe_steps)
        object.__setattr__(self, "signals", _weights(self.signals, "importance.signals"))
        _known(self.signals, SIGNALS, "importance signal")
        if not self.signals or sum(self.signals.values()) <= 0:
            raise ConfigError("importance.signals must give at least one signal a positive weight")


BLOCKWISE_INPUTS = ("auto", "teacher", "cascade", "alternate")


@dataclass(frozen=True)
class DistillConfig:
    """Block-wise and end-to-end knowledge distillation."""

    batch_size: int = _help("distillation batch size", default=32)
    substitute_init: str = _help(
        "'linear': substitutes start from the best rank-h linear fit of their block; 'random'", default="linear"
    )
    blockwise_epochs: float = _help(
        "epochs of block-wise hidden-state distillation (all substitutes at once)", default=2.0
    )
    blockwise_lr: float = _help("learning rate of block-wise distillation", default=2e-3)
    blockwise_inputs: str = _help(
        "what each substitute is fed in block-wise distillation: 'teacher', its block's input in the teacher; "
        "'cascade', the output of the previous block's substitute where that block is substituted too (detached: "
        "each substitute still learns from its own block's output only), as in a student with both substituted; "
        "'alternate', the one and the other on alternate steps (embedding task, three seeds: the four-block and "
        "every-block students' mean cosine +0.005-0.006 and +0.015 after recovery; the default classifier: no gain; "
        "docs/results.md); 'auto': alternate for --task embedding, teacher otherwise",
        default="auto",
    )
    e2e_steps: int = _help(
        "end-to-end distillation steps after each substitution (default 0: in benchmarks/ablation.py 30 steps per "
        "swap bought nothing over the block-wise substitutes as they are; recovery trains the chosen student)",
        default=0,
    )
    temperature: float = _help("softmax temperature of the logit KL", default=2.0)
    alpha: float = _help("weight of label cross-entropy", default=0.5)
    beta: float = _help("weight of hidden-state MSE at substituted block boundaries", default=1.0)
    lr_substitute: float = _help("end-to-end learning rate of substitutes", default=1e-4)
    lr_kept: float = _help("end-to-end learning rate of kept original weights", default=3e-5)
    freeze_kept: bool = _help(
        "freeze kept original weights during end-to-end distillation (layer dropping always trains them)",
        default=True,
    )
    freeze_embeddings: bool = _help("freeze the embeddings during end-to-end distillation", default=False)
    recovery_epochs: float = _help(
        "after the curve: epochs of end-to-end KD of the chosen student with every weight trainable (0: off; "
        "benchmarks/ablation.py: 1 epoch lifted kept on test from 0.985 to 0.991 at -46.8 %% GMACs)",
        default=1.0,
    )
    recovery_lr: float = _help("learning rate of every weight during recovery", default=5e-5)
    recovery_beta: float = _help("recovery: weight of hidden-state MSE at every block's output", default=1.0)
    recovery_freeze_kept: bool = _help(
        "recovery trains the substitutes only; the original weights (kept blocks, embeddings, head) stay frozen",
        default=False,
    )
    similarity_weight: float = _help(
        "embedding task: weight of the in-batch similarity KL (teacher vs student softmax over each text's cosine "
        "similarities to the batch, temperature 0.05) beside squared error + (1 - cosine)",
        default=0.0,
    )
    recover_last: bool = _help(
        "recovery also trains the last curve step's student (RUN/model_last_recovered), so both of the suite's "
        "points compare after recovery",
        default=False,
    )
    recover_key: bool = _help(
        "recovery also trains the students at the suite's key points, whatever the stop rule chose: the curve step "
        "nearest a 50 % GMACs cut (RUN/model_step<k>_recovered unless it is the chosen one) and the last step",
        default=False,
    )
    teacher_cache_gb: float = _help(
        "memory (GiB) for the frozen teacher's outputs on the training texts (fp16 hidden states, logits), reused "
        "by block-wise epochs after the first, recovery and the equal-budget baselines instead of re-running the "
        "teacher; texts beyond it are recomputed (0: off)",
        default=2.0,
    )

    def __post_init__(self) -> None:
        _positive("distill", batch_size=self.batch_size, blockwise_lr=self.blockwise_lr, temperature=self.temperature)
        _positive("distill", lr_substitute=self.lr_substitute, lr_kept=self.lr_kept)
        _positive("distill", recovery_lr=self.recovery_lr)
        for name in ("blockwise_epochs", "e2e_steps", "alpha", "beta", "recovery_epochs", "recovery_beta",
                     "similarity_weight", "teacher_cache_gb"):  # fmt: skip
            if getattr(self, name) < 0:
                raise ConfigError(f"distill.{name} must be >= 0, got {getattr(self, name)}")
        if self.blockwise_inputs not in BLOCKWISE_INPUTS:
            raise ConfigError(
                f"distill.blockwise_inputs {self.blockwise_inputs!r} unknown; use {', '.join(BLOCKWISE_INPUTS)}"
            )
        if self.substitute_init not in ("linear", "random"):
            raise ConfigError(f"distill.substitute_init {self.substitute_init!r} unknown; use linear or random")


@dataclass(frozen=True)
class RunConfig:
    """The compression run: stop rules, baselines, measurement, devices."""

    teacher: str | None = _help("fine-tuned teacher folder or hub id (default: fine-tune one)", default=None)
    min_kept: float = _help(
        "the chosen student keeps at least this fraction of the teacher's validation score (see --stop-rule)",
        default=0.97,
    )
    stop_rule: str = _help(
        "'recovered': the curve's last (most compressed) student if, after recovery, it keeps --min-kept on "
        "validation, else the last curve step that kept it before recovery, recovered (one recovery more when the "
        "last fails; when no step kept it, exit 2); 'curve': the last curve step keeping --min-kept before "
        "recovery. Without recovery: 'curve'",
        default="recovered",
    )
    target_gmacs_cut: float | None = _help("stop once this fraction of GMACs is cut", default=None)
    max_blocks: int | None = _help("at most this many curve steps (blocks substituted or dropped)", default=None)
    drop_blocks: int = _help(
        "hybrid students: the curve's first K steps drop the K least important blocks (as layer removal does) "
        "instead of substituting them (their end-to-end steps train the kept weights, as layer dropping does); the "
        "later steps substitute the rest. Dropping is cheaper than a substitute and, at high cuts, loses less than "
        "substituting one more block",
        default=0,
    )
    full_curve: bool = _help(
        "continue the curve to the last block after the stop rule fails (the chosen model still obeys it)", default=True
    )
    rerank: bool = _help("re-rank importance on the current student before each step", default=False)
    baselines: tuple[str, ...] = _help(
        "baselines to run beside the curve: magnitude, random, drop (short budget), distil and thesis (equal "
        "budget, slow; benchmarks/suite.py runs them) (or 'none')",
        default=("magnitude", "random"),
    )
    baseline_points: str = _help(
        "curve steps the baselines are measured at (the cumulative 'drop' always takes every step): all, or key "
        "(the step nearest a 50 %% GMACs cut and the last step)",
        default="key",
    )
    seed: int = _help("random seed of training", default=0)
    arch: str | None = _help("built-in architecture of the teacher, for --dry-run without downloads", default=None)
    baseline_arch: str | None = _help("built-in architecture to report --dry-run cuts against", default=None)
    eval_seq_len: int = _help("sequence length at which GMACs and latency are measured", default=128)
    latency_repeats: int = _help("timed forward passes per latency measurement (after 2 warm-up passes)", default=5)
    mixed_precision: str = _help(
        "mixed precision of training, importance and curve/baseline points (teacher and final evaluation are "
        "fp32): auto (bf16 where the device computes it natively), no, fp16, bf16",
        default="auto",
    )
    cpu: bool = _help("force the CPU even when an accelerator is present", default=False)
    prune_vocab: bool = _help(
        "after the curve, keep only the word embeddings of the tokens the training texts use: RUN/model_vocab",
        default=False,
    )
    export: str = _help(
        "'onnx': export teacher and chosen student to RUN/onnx (fp32 + dynamic int8, parity-checked); 'none'",
        default="none",
    )
    int8_scales: str = _help(
        "weight scales of the int8 export: auto (per-tensor for classifiers: fastest; per-channel for "
        "sentence-embedding models: keeps their neighbours), per-tensor, per-channel",
        default="auto",
    )
    eval_dataset: str | None = _help(
        "--task embedding: a semantic-similarity set (hub id, e.g. sentence-transformers/stsb, or a .csv/.tsv/.jsonl "
        "file with sentence1, sentence2 and score columns): Spearman of the embeddings' cosine similarities with "
        "its scores, for the teacher, every curve step and the student",
        default=None,
    )
    eval_split: str = _help("split of a hub --eval-dataset", default="test")
    embedding_metric: str = _help(
        "--task embedding: the main metric, which kept and the stop rule read: recall@10 (of the teacher's ten "
        "nearest neighbours among the held-out texts) or mean_cosine (to the teacher's embeddings)",
        default="recall@10",
    )
    time_budget: float | None = _help(
        "wall-clock seconds for the whole run (e.g. 600): block-wise distillation and recovery end early, at the "
        "pace they measure, so that the run ends within it (the teacher and the evaluations are not shortened); "
        "blockwise.json, recovery.json, the summary and the report say what was cut",
        default=None,
    )

    def __post_init__(self) -> None:
        from .baselines import BASELINES  # the registry is the one list of names

        if not 0 < self.min_kept <= 1:
            raise ConfigError(f"--min-kept must be in (0, 1], got {self.min_kept}")
        if self.target_gmacs_cut is not None and not 0 < self.target_gmacs_cut < 1:
            raise ConfigError(f"--target-gmacs-cut must be in (0, 1), got {self.target_gmacs_cut}")
        _positive("run", max_blocks=self.max_blocks, eval_seq_len=self.eval_seq_len)
        _positive("run", latency_repeats=self.latency_repeats)
        if self.drop_blocks < 0:
            raise ConfigError(f"--drop-blocks must be >= 0, got {self.drop_blocks}")
        if self.mixed_precision not in ("auto", "no", "fp16", "bf16"):
            raise ConfigError(f"--mixed-precision must be auto, no, fp16 or bf16, got {self.mixed_precision!r}")
        if self.stop_rule not in ("recovered", "curve"):
            raise ConfigError(f"--stop-rule must be recovered or curve, got {self.stop_rule!r}")
        if self.baseline_points not in ("all", "key"):
            raise ConfigError(f"--baseline-points must be all or key, got {self.baseline_points!r}")
        from .embed import METRICS

        if self.embedding_metric not in METRICS:
            raise ConfigError(f"--embedding-metric must be one of {', '.join(METRICS)}, got {self.embedding_metric!r}")
        if self.export not in ("none", "onnx"):
            raise ConfigError(f"--export must be none or onnx, got {self.export!r}")
        if self.int8_scales not in ("auto", "per-tensor", "per-channel"):
            raise ConfigError(f"--int8-scales must be auto, per-tensor or per-channel, got {self.int8_scales!r}")
        object.__setattr__(self, "baselines", _names(self.baselines, "run.baselines"))
        _known(self.baselines, BASELINES, "baseline")
        if self.time_budget is not None:
            _positive("run", time_budget=self.time_budget)
            unbounded = [name for name in ("distil", "thesis") if name in self.baselines]
            if unbounded:
                raise ConfigError(
                    f"--time-budget does not bound the {' and '.join(unbounded)} baseline(s), which train as long as "
                    "the substitution path again; run them without --time-budget (benchmarks/suite.py)"
                )


@dataclass(frozen=True)
class Config:
    """Everything a run needs; written next to the results as config.yaml."""

    compact: CompactSpec = field(default_factory=CompactSpec)
    data: DataConfig = field(default_factory=DataConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    importance: ImportanceConfig = field(default_factory=ImportanceConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def __post_init__(self) -> None:  # block-wise inputs depend on the task: resolved here (the shape: TASK_COMPACT)
        if self.distill.blockwise_inputs == "auto":
            feeds = "alternate" if self.data.task == "embedding" else "teacher"
            object.__setattr__(self, "distill", dataclasses.replace(self.distill, blockwise_inputs=feeds))


SECTIONS: dict[str, type] = {
    "compact": CompactSpec,
    "data": DataConfig,
    "finetune": FinetuneConfig,
    "importance": ImportanceConfig,
    "distill": DistillConfig,
    "run": RunConfig,
}


def _build(section: str, values: dict[str, Any]) -> Any:
    cls = SECTIONS[section]
    names = {f.name for f in fields(cls)}
    unknown = set(values) - names
    if unknown:
        raise ConfigError(f"unknown key(s) in section {section!r}: {', '.join(sorted(unknown))}")
    try:
        return cls(**values)
    except ConfigError:
        raise
    except (TypeError, ValueError) as e:  # CompactSpec validates itself (torch-only module): ValueError
        raise ConfigError(f"section {section!r}: {e}") from None


# The substitute shape a task starts from, under whatever the YAML or the flags give (docs/results.md, "Sentence-
# embedding models": the 192-wide single GELU layer keeps more of the teacher's embedding at a larger cut than 128 x 2).
# Applied where the given keys are known (build_config: the CLI, config files); a Config built by hand keeps its spec.
TASK_COMPACT: dict[str, dict[str, Any]] = {
    "embedding": {"hidden": 192, "layers": 1, "heads": 2, "ffn": 384, "activation": "gelu"},
}


def build_config(data: dict[str, Any] | None = None, overrides: dict[str, dict[str, Any]] | None = None) -> Config:
    """Config from nested dicts (YAML shape), with ``overrides`` applied on top of the task's substitute shape."""
    data = dict(data or {})
    unknown = set(data) - set(SECTIONS)
    if unknown:
        raise ConfigError(f"unknown config section(s): {', '.join(sorted(unknown))}; use {', '.join(SECTIONS)}")
    merged = {s: {**(data.get(s) or {}), **((overrides or {}).get(s) or {})} for s in SECTIONS}
    for s, v in merged.items():
        if not isinstance(v, dict):
            raise ConfigError(f"config section {s!r} must be a mapping")
    merged["compact"] = {**TASK_COMPACT.get(merged["data"].get("task"), {}), **merged["compact"]}
    return Config(**{s: _build(s, v) for s, v in merged.items()})


def load_config(path: str | Path | None = None, overrides: dict[str, dict[str, Any]] | None = None) -> Config:
    """Load a YAML config file (or the defaults) and apply overrides."""
    data: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file {p} does not exist")
        try:
            data = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"config file {p} is not valid YAML: {str(e).splitlines()[0]}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"config file {p} must hold a mapping of sections")
    return build_config(data, overrides)


def to_dict(config: Config) -> dict[str, Any]:
    """Plain YAML-safe values (tuples become lists)."""
    out = dataclasses.asdict(config)
    out["run"]["baselines"] = list(config.run.baselines)
    return out


def dump_config(config: Config) -> str:
    return yaml.safe_dump(to_dict(config), sort_keys=False)
