"""The baselines stage: cheaper alternatives at every curve step's cut, on the same data.

Each baseline is a runner ``fn(state, rows, teacher_val) -> one row per curve step``; the names and
descriptions are ``blockswap.baselines.BASELINES``.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from collections.abc import Callable

import torch

from .. import arch, baselines, distill, measure
from ..evaluate import kept_difference, kept_interval, per_example
from ..substitute import drop_blocks, substitute
from .curve import key_rows, other_metrics
from .stages import recovered_steps
from .state import RunState


def _row(state: RunState, r: dict, model, teacher_val: float, **extra) -> dict:
    """``kept`` on validation (the curve's criterion); runners add their own fields (cuts, budget, test split)."""
    v = state.evaluate_point(model, "validation")
    row = {"step": r["step"], "substituted": r["substituted"], "params_cut": r["params_cut"]}
    return {**row, "score": v["score"], "kept": v["score"] / teacher_val, **extra}


def _pruning(prune: Callable) -> Callable:
    def run(state: RunState, rows: list[dict], teacher_val: float) -> list[dict]:
        out = []
        for r in _points(state, rows):
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
        arch.put_block(dropped, r["block"], arch.identity_block(dropped))
        distill.end_to_end(
            dropped, teacher, state.train_loader(state.cfg.run.seed + r["step"]), drop_cfg,
            steps=state.cfg.distill.e2e_steps, accelerator=state.accelerator, desc=f"drop {r['substituted']}",
            cache=state.teacher_cache,
        )  # fmt: skip
        row = _row(state, r, dropped, teacher_val)
        row["params_cut"] = measure.cut(teacher_params, measure.count_params(dropped)["total"])
        row["distill_seconds"] = time.perf_counter() - t0
        out.append(row)
    return out


def _dropped(teacher, blocks: list[int]):
    """The teacher with ``blocks`` removed for real: a plain, shorter model of its class, trained and saved as is."""
    return drop_blocks(teacher, blocks).requires_grad_(True)


def _points(state: RunState, rows: list[dict]) -> list[dict]:
    return rows if state.cfg.run.baseline_points == "all" else key_rows(rows)


def budget_steps(state: RunState, r: dict) -> int:
    """Optimiser steps the substitution path spent on curve row ``r``'s student: block-wise + the curve's
    end-to-end steps up to it + its recovery, when the recovery stage trained it."""
    return r["train_steps"] + recovered_steps(state).get(r["step"], 0)


def _substitution_test(state: RunState, r: dict) -> tuple[str, dict | None]:
    """The substitution path's student at curve row ``r`` on test, per example: the recovered one when the
    recovery stage trained it (the one whose budget the baseline gets), else the curve's."""
    if state.path("recovery.json").is_file():
        rec = state.read("recovery.json").get("students", {}).get(str(r["step"]))
        if rec is not None:
            return "recovered", rec.get("test_per_example")
    return "curve", r.get("test_per_example")


def _budgeted(state, r, student, teacher_val, teacher_test, seconds: float, **extra) -> dict:
    """A budgeted baseline's row: kept on validation and on test (paired interval), its budget beside it, and
    how far the substitution path's student at the same point is above it (paired on the same test examples)."""
    test = state.evaluate_point(student, "test")
    ci = kept_interval(teacher_test, test, seed=r["step"])
    which, ours = _substitution_test(state, r)
    if ours is not None:
        d = kept_difference(teacher_test, ours, test, seed=r["step"])
        extra["blockswap_advantage"] = {"kept_test": d["difference"], "ci95": d["ci95"], "student": which}
    return _row(
        state, r, student, teacher_val, train_steps=budget_steps(state, r), train_batch=state.cfg.distill.batch_size,
        train_seconds=seconds, test_score=test["score"], kept_test=ci["kept"], kept_test_ci95=ci["ci95"], **extra,
        test_metrics=other_metrics(test), test_per_example=per_example(test),
    )  # fmt: skip


def _thesis(state: RunState, rows: list[dict], teacher_val: float) -> list[dict]:
    """The seed thesis's procedure at the curve's points: the same blocks (and dropped ones) and substitute shape,
    random initialisation, every weight trained on the task's labels only for the substitution path's budget."""
    teacher, cfg = state.teacher, state.cfg
    ce = dataclasses.replace(cfg.distill, freeze_kept=False, lr_kept=cfg.distill.recovery_lr)
    teacher_test, out = state.teacher_test(), []
    for r in _points(state, rows):
        torch.manual_seed(cfg.run.seed + 3000 + r["step"])
        student = substitute(teacher, r["substituted"], cfg.compact, dropped=r.get("dropped", [])).requires_grad_(True)
        started = time.perf_counter()
        distill.end_to_end(
            student, teacher, state.train_loader(cfg.run.seed + 3000 + r["step"]), ce, steps=budget_steps(state, r),
            accelerator=state.accelerator, desc=f"thesis procedure, blocks {r['substituted']}", labels_only=True,
        )  # fmt: skip
        seconds = time.perf_counter() - started
        params_cut = measure.cut(measure.count_params(teacher)["total"], measure.count_params(student)["total"])
        out.append(_budgeted(
            state, r, student, teacher_val, teacher_test, seconds, gmacs_cut=r["gmacs_cut"], params_cut=params_cut
        ))  # fmt: skip
    return out


def _distil(state: RunState, rows: list[dict], teacher_val: float) -> list[dict]:
    """DistilBERT-style: drop the least important blocks (the run's importance order), train every remaining
    weight by KD for the optimiser steps x batch the substitution path spent to reach each curve point,
    at the number of dropped blocks whose GMACs cut is nearest that point's."""
    teacher, cfg = state.teacher, state.cfg
    order, seq = state.read("importance.json")["order"], cfg.run.eval_seq_len
    teacher_macs = measure.count_macs(teacher, seq_len=seq)["macs"]
    cuts = {k: measure.cut(teacher_macs, measure.count_macs(_dropped(teacher, order[:k]), seq_len=seq)["macs"])
            for k in range(1, arch.num_blocks(teacher))}  # fmt: skip
    kd = dataclasses.replace(cfg.distill, freeze_kept=False, lr_kept=cfg.distill.recovery_lr)
    teacher_test, out = state.teacher_test(), []
    for r in _points(state, rows):
        k = min(cuts, key=lambda k: abs(cuts[k] - r["gmacs_cut"]))
        student, started = _dropped(teacher, order[:k]), time.perf_counter()
        distill.end_to_end(
            student, teacher, state.train_loader(cfg.run.seed + 2000 + r["step"]), kd, steps=budget_steps(state, r),
            accelerator=state.accelerator, desc=f"distil without blocks {sorted(order[:k])}",
            cache=state.teacher_cache,
        )  # fmt: skip
        seconds = time.perf_counter() - started
        params_cut = measure.cut(measure.count_params(teacher)["total"], measure.count_params(student)["total"])
        folder = f"distil_step{r['step']}"
        state.save_model(student, folder)
        out.append(_budgeted(
            state, r, student, teacher_val, teacher_test, seconds, dropped=sorted(order[:k]), gmacs_cut=cuts[k],
            params_cut=params_cut, folder=folder,
        ))  # fmt: skip
    return out


RUNNERS: dict[str, Callable[[RunState, list[dict], float], list[dict]]] = {
    "magnitude": _pruning(lambda state, s: baselines.magnitude_prune(state.teacher, s)),
    "random": _pruning(lambda state, s: baselines.random_prune(state.teacher, s, seed=state.cfg.run.seed)),
    "drop": _drop,
    "distil": _distil,
    "thesis": _thesis,
}


CACHE_USERS = frozenset({"drop", "distil"})  # the baselines that distil from the teacher (the thesis's uses labels)


def baselines_stage(state: RunState) -> None:
    """baselines.json: each configured baseline at every curve step, with its description."""
    curve = state.read("curve.json")
    rows, teacher_val = curve["rows"][1:], curve["teacher_validation_score"]
    out = {name: RUNNERS[name](state, rows, teacher_val) for name in state.cfg.run.baselines}
    out["descriptions"] = {name: baselines.BASELINES[name] for name in state.cfg.run.baselines}
    state.write("baselines.json", out)
