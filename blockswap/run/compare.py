"""The baselines stage: cheaper alternatives at every curve step's cut, on the same data.

Each baseline is a runner ``fn(state, rows, teacher_val) -> one row per curve step``; the names and
descriptions are ``blockswap.baselines.BASELINES``.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from collections.abc import Callable

from .. import arch, baselines, distill, measure
from .state import RunState


def _row(state: RunState, r: dict, model, teacher_val: float, **extra) -> dict:
    """Validation only: ``kept`` (the curve's criterion) is what the baselines are compared on."""
    v = state.evaluate_point(model, "validation")
    row = {"step": r["step"], "substituted": r["substituted"], "params_cut": r["params_cut"]}
    return {**row, "accuracy": v["accuracy"], "kept": v["accuracy"] / teacher_val, **extra}


def _pruning(prune: Callable) -> Callable:
    def run(state: RunState, rows: list[dict], teacher_val: float) -> list[dict]:
        out = []
        for r in rows:
            sparsity = baselines.sparsity_for_cut(state.teacher, r["params_cut"])
            out.append(_row(state, r, prune(state, sparsity), teacher_val, sparsity=sparsity))
        return out

    return run


def _drop(state: RunState, rows: list[dict], teacher_val: float) -> list[dict]:
    """The same blocks as the curve, dropped cumulatively, with the same distillation budget per step."""
    teacher = state.teacher
    dropped = copy.deepcopy(teacher)
    dropped.requires_grad_(True)
    teacher_params = measure.count_params(teacher)["total"]
    drop_cfg = dataclasses.replace(state.cfg.distill, freeze_kept=False)  # no substitutes: the kept blocks adapt
    out = []
    for r in rows:
        t0 = time.perf_counter()
        arch.blocks(dropped)[r["block"]] = arch.IdentityBlock(arch.spec_for(dropped.config).returns_tuple)
        distill.end_to_end(
            dropped, teacher, state.train_loader(state.cfg.run.seed + r["step"]), drop_cfg,
            steps=state.cfg.distill.e2e_steps, accelerator=state.accelerator, desc=f"drop {r['substituted']}",
        )  # fmt: skip
        row = _row(state, r, dropped, teacher_val)
        row["params_cut"] = measure.cut(teacher_params, measure.count_params(dropped)["total"])
        row["distill_seconds"] = time.perf_counter() - t0
        out.append(row)
    return out


RUNNERS: dict[str, Callable[[RunState, list[dict], float], list[dict]]] = {
    "magnitude": _pruning(lambda state, s: baselines.magnitude_prune(state.teacher, s)),
    "random": _pruning(lambda state, s: baselines.random_prune(state.teacher, s, seed=state.cfg.run.seed)),
    "drop": _drop,
}


def baselines_stage(state: RunState) -> None:
    """baselines.json: each configured baseline at every curve step, with its description."""
    curve = state.read("curve.json")
    rows, teacher_val = curve["rows"][1:], curve["teacher_validation_accuracy"]
    out = {name: RUNNERS[name](state, rows, teacher_val) for name in state.cfg.run.baselines}
    out["descriptions"] = {name: baselines.BASELINES[name] for name in state.cfg.run.baselines}
    state.write("baselines.json", out)
