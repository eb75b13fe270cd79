"""State shared by the stages of a run, and atomic artifact writing."""

from __future__ import annotations

import copy
import csv
import io
import itertools
import json
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from accelerate import Accelerator
from safetensors.torch import load_file
from transformers import PreTrainedModel

from . import adapters, data, measure
from .compact import CompactBlock
from .config import Config
from .substitute import make_compact, swap_in


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` via a temporary file and rename: never a half-written artifact."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(tmp, 0o644)  # mkstemp creates 0600; artifacts are meant to be shared
    os.replace(tmp, path)


def write_json(path: Path, obj) -> None:
    write_atomic(path, json.dumps(obj, indent=2, default=float) + "\n")


def read_json(path: Path):
    return json.loads(path.read_text())


@dataclass
class Run:
    """What the stages share: config, folder, accelerator, data and the teacher."""

    cfg: Config
    out: Path
    accelerator: Accelerator
    log: Callable[[str], None] = print
    timings: dict[str, float] = field(default_factory=dict)
    teacher: PreTrainedModel | None = None
    tokenizer: object = None
    tokenized: object = None
    label_names: list[str] = field(default_factory=list)

    def loader(self, split: str, *, shuffle: bool, batch_size: int | None = None, seed: int = 0):
        bs = batch_size or (self.cfg.distill.batch_size if shuffle else 64)
        return data.loader(self.tokenized[split], self.tokenizer, batch_size=bs, shuffle=shuffle, seed=seed)

    def stage(self, name: str, artifact: str, fn: Callable[[], None]) -> None:
        path = self.out / artifact
        if path.exists():
            self.log(f"[{name}] {artifact} exists: skipped")
            return
        self.log(f"[{name}] running")
        t0 = time.perf_counter()
        fn()
        self.accelerator.wait_for_everyone()  # every process sees the artifact before the next stage
        self.timings[name] = round(time.perf_counter() - t0, 2)
        write_json(self.out / "timings.json", self.timings)


def load_substitutes(run: Run) -> dict[int, CompactBlock]:
    tensors = load_file(run.out / "substitutes.safetensors")
    subs = {}
    for i in range(adapters.num_blocks(run.teacher)):
        block = make_compact(run.teacher, run.cfg.compact)
        block.load_state_dict({k.split(".", 1)[1]: v for k, v in tensors.items() if k.split(".", 1)[0] == str(i)})
        subs[i] = block
    return subs


def point_cost(run: Run, model: PreTrainedModel, teacher_cost: dict | None) -> dict:
    """Cost of one curve point: params, GMACs at eval_seq_len, batch-1 latency (cuts vs ``teacher_cost``)."""
    seq = run.cfg.run.eval_seq_len
    params = measure.count_params(model)["total"]
    macs = measure.count_macs(model, batch=1, seq_len=seq)["macs"]
    lat = measure.latency(model, batch=1, seq_len=seq, repeats=5, warmup=2).median_ms
    cost = {"params": params, "gmacs": macs / 1e9, "latency_ms": lat}
    if teacher_cost is not None:
        cost["params_cut"] = measure.cut(teacher_cost["params"], params)
        cost["gmacs_cut"] = measure.cut(teacher_cost["gmacs"], macs / 1e9)
    else:
        cost.update(params_cut=0.0, gmacs_cut=0.0)
    return cost


def curve_csv(rows: list[dict]) -> str:
    keys = ["step", "block", "substituted", "params", "params_cut", "gmacs", "gmacs_cut", "accuracy", "kept"]
    keys += ["test_accuracy", "latency_ms"]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=keys, extrasaction="ignore")
    w.writeheader()
    for r in rows:
        w.writerow({**r, "substituted": " ".join(map(str, r["substituted"]))})
    return buf.getvalue()


def swap(student: PreTrainedModel, index: int, block: CompactBlock, run: Run) -> None:
    swap_in(student, index, copy.deepcopy(block), run.cfg.compact)


def first_batches(run: Run, split: str, n: int, *, batch_size: int, seed: int) -> list[dict[str, torch.Tensor]]:
    """The first ``n`` shuffled batches of a split (only those are collated)."""
    return list(itertools.islice(run.loader(split, shuffle=True, batch_size=batch_size, seed=seed), n))
