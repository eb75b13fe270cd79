"""What the benchmarks that work on a finished `blockswap run` folder load from it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, NamedTuple


class FinishedRun(NamedTuple):
    cfg: Any  # blockswap.config.Config, as the run wrote it
    accelerator: Any
    precision: str
    teacher: Any  # the run's teacher, frozen
    data: Any  # its tokenised splits (blockswap.loaders.TaskData)


def open_run(run: Path) -> FinishedRun:
    """The run's config, an accelerator with its precision, its teacher and its data splits (unpack in order)."""
    import yaml

    from blockswap import export
    from blockswap.config import build_config
    from blockswap.loaders import prepare
    from blockswap.train import make_accelerator

    cfg = build_config(yaml.safe_load((run / "config.yaml").read_text()))
    accelerator, precision = make_accelerator(cpu=cfg.run.cpu, mixed_precision=cfg.run.mixed_precision)
    source = json.loads((run / "teacher.json").read_text())["source"]
    if cfg.data.task == "embedding":  # the sentence encoder as it is; its embeddings are the data's targets
        from blockswap import embed
        from blockswap.loaders import prepare_embedding

        teacher = embed.load_teacher(source)
        return FinishedRun(
            cfg, accelerator, precision, teacher, prepare_embedding(cfg.data, teacher, log=lambda *_: None)
        )
    data = prepare(cfg.data, export.load_tokenizer(source), log=lambda *_: None)
    teacher = export.load_classifier(source).requires_grad_(False)
    return FinishedRun(cfg, accelerator, precision, teacher, data)
