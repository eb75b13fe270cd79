"""One source of configuration: frozen dataclasses with help text, loaded from YAML and CLI flags."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A configuration value a user gave is invalid."""


def _help(text: str, **kw) -> Any:
    return field(metadata={"help": text}, **kw)


def _positive(section: str, **values: float | int | None) -> None:
    for name, value in values.items():
        if value is not None and value <= 0:
            raise ConfigError(f"{section}.{name} must be positive, got {value}")


@dataclass(frozen=True)
class CompactConfig:
    """Shape of the compact substitute block."""

    hidden: int = _help("width of the small encoder (hidden -> this -> hidden)", default=128)
    layers: int = _help("transformer layers inside the substitute", default=2)
    heads: int = _help("attention heads inside the substitute", default=2)
    ffn: int | None = _help("feed-forward width inside the substitute (default 4 x hidden)", default=None)
    dropout: float = _help(
        "dropout inside the substitute (0: it underfits its block, and dropout is slow on CPU)", default=0.0
    )
    activation: str = _help("feed-forward activation: gelu, relu, silu, tanh", default="gelu")
    init: str = _help("'linear': start from the best rank-h linear fit of the block; 'random'", default="linear")
    norm: str = _help(
        "'none' (the thesis's block) or 'post': end with a LayerNorm initialised from the block's own", default="none"
    )

    def __post_init__(self) -> None:
        _positive("compact", hidden=self.hidden, heads=self.heads, ffn=self.ffn)
        if self.layers < 0:
            raise ConfigError(f"compact.layers must be >= 0, got {self.layers}")
        if self.hidden % self.heads:
            raise ConfigError(f"compact hidden size {self.hidden} is not divisible by {self.heads} heads")
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"compact.dropout must be in [0, 1), got {self.dropout}")
        if self.activation not in ("gelu", "relu", "silu", "tanh"):
            raise ConfigError(f"compact.activation {self.activation!r} unknown; use gelu, relu, silu or tanh")
        if self.norm not in ("post", "none"):
            raise ConfigError(f"compact.norm {self.norm!r} unknown; use post or none")
        if self.init not in ("linear", "random"):
            raise ConfigError(f"compact.init {self.init!r} unknown; use linear or random")

    @property
    def ffn_size(self) -> int:
        return self.ffn if self.ffn is not None else 4 * self.hidden


@dataclass(frozen=True)
class DataConfig:
    """Where the labelled text comes from and how it is tokenised."""

    dataset: str = _help(
        "'snippets' (offline default), a hub dataset name, or a .csv/.tsv/.jsonl/.parquet file", default="snippets"
    )
    dataset_config: str | None = _help("hub dataset configuration (e.g. sst2 for glue)", default=None)
    text_column: str | None = _help("text column (auto: text, sentence, review)", default=None)
    label_column: str | None = _help("label column (auto: label, labels)", default=None)
    max_length: int = _help("tokeniser truncation length", default=64)
    val_fraction: float = _help("validation share carved out when the source has none", default=0.1)
    test_fraction: float = _help("test share carved out when the source has none", default=0.1)
    split_seed: int = _help("seed of the deterministic stratified split", default=13)
    max_train_examples: int | None = _help("use at most this many training examples", default=None)
    max_eval_examples: int | None = _help("use at most this many validation/test examples", default=None)

    def __post_init__(self) -> None:
        _positive("data", max_length=self.max_length, max_train_examples=self.max_train_examples)
        _positive("data", max_eval_examples=self.max_eval_examples)
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

    signals: str = _help(
        "signal=weight list; signals: drop_one, influence, grad_act, softmax_weight, scale",
        default="drop_one=1,influence=1,grad_act=1,softmax_weight=1,scale=1",
    )
    importance_batches: int = _help("validation batches used by each signal", default=16)
    probe_steps: int = _help("training steps of the learned probes (softmax_weight, scale)", default=60)

    def __post_init__(self) -> None:
        _positive("importance", importance_batches=self.importance_batches, probe_steps=self.probe_steps)
        self.weight_map()

    def weight_map(self) -> dict[str, float]:
        known = ("drop_one", "influence", "grad_act", "softmax_weight", "scale")
        out: dict[str, float] = {}
        for item in filter(None, (p.strip() for p in self.signals.split(","))):
            name, _, value = item.partition("=")
            if name not in known:
                raise ConfigError(f"unknown importance signal {name!r}; use {', '.join(known)}")
            try:
                out[name] = float(value or 1)
            except ValueError:
                raise ConfigError(f"importance weight for {name!r} is not a number: {value!r}") from None
        if not out or sum(out.values()) <= 0:
            raise ConfigError("importance.signals must give at least one signal a positive weight")
        return out


@dataclass(frozen=True)
class DistillConfig:
    """Block-wise and end-to-end knowledge distillation."""

    batch_size: int = _help("distillation batch size", default=32)
    blockwise_epochs: float = _help(
        "epochs of block-wise hidden-state distillation (all substitutes at once)", default=2.0
    )
    blockwise_lr: float = _help("learning rate of block-wise distillation", default=2e-3)
    e2e_steps: int = _help("end-to-end distillation steps after each substitution", default=30)
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

    def __post_init__(self) -> None:
        _positive("distill", batch_size=self.batch_size, blockwise_lr=self.blockwise_lr, temperature=self.temperature)
        _positive("distill", lr_substitute=self.lr_substitute, lr_kept=self.lr_kept)
        for name in ("blockwise_epochs", "e2e_steps", "alpha", "beta"):
            if getattr(self, name) < 0:
                raise ConfigError(f"distill.{name} must be >= 0, got {getattr(self, name)}")


@dataclass(frozen=True)
class RunConfig:
    """The compression run: stop rules, baselines, devices."""

    teacher: str | None = _help("fine-tuned teacher folder or hub id (default: fine-tune one)", default=None)
    min_kept: float = _help(
        "choose the last step keeping at least this fraction of the teacher's validation accuracy", default=0.97
    )
    target_gmacs_cut: float | None = _help("stop once this fraction of GMACs is cut", default=None)
    max_blocks: int | None = _help("substitute at most this many blocks", default=None)
    full_curve: bool = _help(
        "continue the curve to the last block after the stop rule fails (the chosen model still obeys it)", default=True
    )
    rerank: bool = _help("re-rank importance on the current student before each step", default=False)
    baselines: str = _help(
        "baselines to run beside the curve: magnitude, random, drop (or 'none')", default="magnitude,random,drop"
    )
    seed: int = _help("random seed of training", default=0)
    arch: str | None = _help("built-in architecture of the teacher, for --dry-run without downloads", default=None)
    baseline_arch: str | None = _help("built-in architecture to report --dry-run cuts against", default=None)
    eval_seq_len: int = _help("sequence length at which GMACs and latency are measured", default=128)
    mixed_precision: str = _help(
        "mixed precision of training, importance and curve/baseline points (teacher and final evaluation are "
        "fp32): auto (bf16 where the device computes it natively), no, fp16, bf16",
        default="auto",
    )
    cpu: bool = _help("force the CPU even when an accelerator is present", default=False)

    def __post_init__(self) -> None:
        if not 0 < self.min_kept <= 1:
            raise ConfigError(f"--min-kept must be in (0, 1], got {self.min_kept}")
        if self.target_gmacs_cut is not None and not 0 < self.target_gmacs_cut < 1:
            raise ConfigError(f"--target-gmacs-cut must be in (0, 1), got {self.target_gmacs_cut}")
        _positive("run", max_blocks=self.max_blocks, eval_seq_len=self.eval_seq_len)
        if self.mixed_precision not in ("auto", "no", "fp16", "bf16"):
            raise ConfigError(f"--mixed-precision must be auto, no, fp16 or bf16, got {self.mixed_precision!r}")
        self.baseline_names()

    def baseline_names(self) -> tuple[str, ...]:
        names = tuple(n.strip() for n in self.baselines.split(",") if n.strip() and n.strip() != "none")
        for n in names:
            if n not in ("magnitude", "random", "drop"):
                raise ConfigError(f"unknown baseline {n!r}; use magnitude, random, drop or none")
        return names


@dataclass(frozen=True)
class Config:
    """Everything a run needs; written next to the results as config.yaml."""

    compact: CompactConfig = field(default_factory=CompactConfig)
    data: DataConfig = field(default_factory=DataConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    importance: ImportanceConfig = field(default_factory=ImportanceConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    run: RunConfig = field(default_factory=RunConfig)


SECTIONS = {f.name: f.type for f in fields(Config)}
_CLASSES = {
    "compact": CompactConfig,
    "data": DataConfig,
    "finetune": FinetuneConfig,
    "importance": ImportanceConfig,
    "distill": DistillConfig,
    "run": RunConfig,
}
# CLI flag prefix per section: --compact-hidden, --batch-size for distill is --distill-batch-size.
CLI_PREFIX = {"compact": "compact-", "data": "", "finetune": "finetune-", "importance": "", "distill": "", "run": ""}


def cli_flags() -> dict[str, tuple[str, dataclasses.Field]]:
    """Map ``--flag-name`` -> (section, field) for every configuration field."""
    out: dict[str, tuple[str, dataclasses.Field]] = {}
    for section, cls in _CLASSES.items():
        for f in fields(cls):
            prefix = CLI_PREFIX[section]
            name = "--" + prefix + f.name.replace("_", "-")
            if name in out or (section == "distill" and f.name == "batch_size"):
                name = f"--{section}-{f.name.replace('_', '-')}"
            assert name not in out, name
            out[name] = (section, f)
    return out


def _build(section: str, values: dict[str, Any]) -> Any:
    cls = _CLASSES[section]
    names = {f.name for f in fields(cls)}
    unknown = set(values) - names
    if unknown:
        raise ConfigError(f"unknown key(s) in section {section!r}: {', '.join(sorted(unknown))}")
    try:
        return cls(**values)
    except TypeError as e:
        raise ConfigError(f"section {section!r}: {e}") from None


def build_config(data: dict[str, Any] | None = None, overrides: dict[str, dict[str, Any]] | None = None) -> Config:
    """Config from nested dicts (YAML shape), with ``overrides`` applied on top."""
    data = dict(data or {})
    unknown = set(data) - set(_CLASSES)
    if unknown:
        raise ConfigError(f"unknown config section(s): {', '.join(sorted(unknown))}; use {', '.join(_CLASSES)}")
    merged = {s: {**(data.get(s) or {}), **((overrides or {}).get(s) or {})} for s in _CLASSES}
    for s, v in merged.items():
        if not isinstance(v, dict):
            raise ConfigError(f"config section {s!r} must be a mapping")
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
    return dataclasses.asdict(config)


def dump_config(config: Config) -> str:
    return yaml.safe_dump(to_dict(config), sort_keys=False)
