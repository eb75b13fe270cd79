"""``--time-budget``: the deadlines by which the training stages end so that the whole run fits.

Only block-wise distillation and recovery are shortened; the teacher, importance, the curve's evaluations and
the baselines' are not. Each training stage gets a deadline when it starts, from what is left of the budget less a
reserve for the evaluations still to come (each costed as the teacher's fp32 pass over the test split, timed in
the teacher stage: an upper bound, as students are cheaper). Block-wise distillation gets its planned steps'
share of the training time left; each recovery an equal share, with the recoveries still to come, of what remains
when it starts (and the stop rule skips a recovery that would almost surely fail it: ``hopeless``). The loops
measure their own pace (``train.StepBudget``), so the deadlines hold on a machine of any speed.
"""

from __future__ import annotations

import time

from .. import arch
from ..config import Config
from .state import RunState


def evaluations_after(cfg: Config, num_blocks: int, stage: str, *, recoveries: int = 0) -> float:
    """The work the run does after ``stage``'s training (``blockwise`` or ``recovery``), in passes of the teacher
    over the test split; ``recoveries``: recoveries still to come after that stage's own.

    Weights from the offline default in fp32 (its stage times over one such pass, 5.3-5.7 s): a curve step (its student on
    validation and test, cheaper than the teacher, and its latency) 1.5; the evaluation stage (the student on
    test, both models' latency) 2; a pruning baseline's point 1.5; summary and report 1.
    """
    steps = min(cfg.run.max_blocks or num_blocks, num_blocks)
    points = steps if cfg.run.baseline_points == "all" else min(2, steps)
    per_baseline = {"magnitude": points, "random": points, "drop": steps}
    later = (
        2 * recoveries  # each recovered student on validation and test
        + 2  # the evaluation stage
        + 1  # summary and report
        + (2 if cfg.run.prune_vocab else 0)
        + (4 if cfg.run.export == "onnx" else 0)  # parity and int8 accuracy of teacher and student
        + 1.5 * sum(per_baseline.get(name, 0) for name in cfg.run.baselines)
    )
    if stage == "blockwise":
        return 1.5 * steps + 2 * recoveries_planned(cfg) + later
    return 2 + later  # this recovery's student on validation and test


# Recovery lifted validation kept by 0.024 or more for one student in ten (85 students of the suites of sessions
# 11-19; median +0.010): a student further than that below --min-kept before recovery will almost surely fail it.
LIKELY_RECOVERY_LIFT = 0.024


def hopeless(cfg: Config, kept_before: float) -> bool:
    """Under --time-budget: a recovery of a student keeping ``kept_before`` on validation is not worth its share of
    the time, since it will almost surely end below --min-kept (without a budget the stop rule tries it anyway)."""
    return cfg.run.time_budget is not None and kept_before + LIKELY_RECOVERY_LIFT < cfg.run.min_kept


def recoveries_planned(cfg: Config) -> int:
    """Recoveries the run will train (not counting the stop rule's fallback when its last student fails)."""
    if cfg.distill.recovery_epochs <= 0:
        return 0
    return 1 + int(cfg.distill.recover_last or cfg.distill.recover_key) + int(cfg.distill.recover_key)


def seconds_left(state: RunState) -> float | None:
    """What is left of ``--time-budget`` now (None without one): stages of earlier invocations count too."""
    budget = state.cfg.run.time_budget
    if budget is None:
        return None
    return budget - state.spent_before - (time.perf_counter() - state.started)


def _evaluation_seconds(state: RunState) -> float:
    """Seconds of one fp32 pass of the teacher over the test split (timed in the teacher stage; timed now for a
    teacher.json written by a blockswap that did not record it)."""
    seconds = state.read("teacher.json").get("test_seconds")
    if seconds is None:
        started = time.perf_counter()
        state.evaluate(state.teacher, "test")
        seconds = time.perf_counter() - started
    return seconds


def blockwise_deadline(state: RunState, planned_steps: int, recovery_steps: int) -> tuple[float | None, dict]:
    """The ``time.monotonic()`` by which block-wise distillation ends, and what it was computed from."""
    left = seconds_left(state)
    if left is None:
        return None, {}
    cfg = state.cfg
    reserve = _evaluation_seconds(state) * evaluations_after(cfg, arch.num_blocks(state.teacher), "blockwise")
    recovery = recoveries_planned(cfg) * recovery_steps
    share = planned_steps / (planned_steps + recovery)  # a recovery step costs about a block-wise one
    seconds = max(0.0, left - reserve) * share
    return time.monotonic() + seconds, _plan(cfg.run.time_budget, left, reserve, seconds)


def recovery_deadline(state: RunState, recoveries: int) -> tuple[float | None, dict]:
    """The ``time.monotonic()`` by which the recovery starting now ends, ``recoveries`` more coming after it."""
    left = seconds_left(state)
    if left is None:
        return None, {}
    cfg = state.cfg
    evals = evaluations_after(cfg, arch.num_blocks(state.teacher), "recovery", recoveries=recoveries)
    reserve = _evaluation_seconds(state) * evals
    seconds = max(0.0, left - reserve) / (1 + recoveries)
    return time.monotonic() + seconds, _plan(cfg.run.time_budget, left, reserve, seconds)


def _plan(budget: float, left: float, reserve: float, seconds: float) -> dict:
    return {
        "time_budget": budget,
        "seconds_left": round(left, 1),
        "evaluation_reserve": round(reserve, 1),
        "training_seconds": round(seconds, 1),
    }


def summary(state: RunState) -> dict | None:
    """summary.json's ``time_budget``: the budget and the steps each training stage planned and took (None
    without --time-budget). ``recovery`` is the final student's."""
    if state.cfg.run.time_budget is None:
        return None
    blockwise = state.read("blockwise.json")["budget"]
    out = {
        "seconds": state.cfg.run.time_budget,
        "blockwise": {"steps": blockwise["steps"], "planned_steps": blockwise.get("planned_steps", blockwise["steps"])},
    }
    if state.path("recovery.json").is_file():
        rec = state.read("recovery.json")
        entry = rec["students"][str(rec["chosen_step"])]
        out["recovery"] = {"steps": entry["steps"], "planned_steps": entry.get("planned_steps", entry["steps"])}
    out["cut"] = any(v["steps"] < v["planned_steps"] for v in out.values() if isinstance(v, dict))
    return out
