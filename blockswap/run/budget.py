"""``--time-budget``: the deadlines by which the training stages end so that the whole run fits.

Only block-wise distillation and recovery are shortened; the teacher, importance, the curve's evaluations and
the baselines' are not. Each training stage gets a deadline when it starts, from what is left of the budget less a
reserve for the work still to come: every evaluation, latency measurement, end-to-end step, probe and the report,
counted in tokens through the teacher and priced at the teacher's fp32 pass over the test split on the run's device
(timed in the teacher stage), and the ONNX export, which runs on the CPU whatever the device, priced at the
teacher's pace there on one thread (its serial part) and on all of them; 10 % more is reserved than that. Block-wise
distillation gets its planned steps' share of the training time left; each recovery an equal share, with the
recoveries still to come, of what remains when it starts (and the stop rule skips a
recovery that would almost surely fail it: ``hopeless``). The loops measure their own pace (``train.StepBudget``),
so the deadlines hold on a machine of any speed. Where the stages it cannot shorten take longer than the budget,
the run ends late and says so (``summary``).
"""

from __future__ import annotations

import copy
import time

import torch

from .. import arch, measure
from ..baselines import prunable
from ..config import Config
from ..embed import PROBE_TRAIN_TEXTS
from ..evaluate import predict
from .state import RunState

# The work after a training stage is counted in tokens through the teacher, priced at the teacher's fp32 pass over
# the test split (timed in the teacher stage): an evaluation costs its split's tokens, and work whose size does not
# follow the data (latency at fixed shapes, the curve's end-to-end steps, the probe, the report) its own. The export
# runs on the CPU, also on a GPU run, and much of it on one core: it is priced at the teacher's pace on the CPU, on one
# thread and on all of torch's (``_cpu_paces``).
STUDENT = 0.75  # a student's forward against the teacher's: the default's curve steps averaged 0.72 (MiniLM, fp32)
PRUNE_WEIGHTS_PER_TOKEN = 2000  # global top-k over the prunable weights: 1.2-1.4 s a point for MiniLM (14 M)
REPORT_TOKENS = 10_000  # summary, plots and report: 1.3-1.4 s after the default here (8,000 tokens), and the exit
# The export of teacher and student (ONNX, graph optimisation, int8, parity, test passes and latency rounds in ONNX
# Runtime): EXPORT_SERIAL_TOKENS at the one-thread pace (the work more threads do not speed up: tracing, graph
# optimisation, quantisation) and EXPORT_TOKENS at the pace on every thread (parity, test passes, latency rounds).
# Measured on 2 cores for MiniLM: the stage took 87.1 s (the teacher's pass 1.61e-4 s a token), of which the exports
# themselves 2 x 20.0 s on 2 threads and 2 x 23.1 s on one (the pass 1.78e-4 and 3.07e-4 s a token): 15.6 s each of
# serial work. Predicted 86 s there, 138 s on one core (measured 143.2 s); the session-24 H200 host took 42.5 s,
# where one price for it all (575,000 tokens at every thread's pace) had reserved about 20 s.
EXPORT_SERIAL_TOKENS = 100_000
EXPORT_TOKENS = 350_000


def _tokens(data, split: str) -> int:
    return sum(len(ids) for ids in data.splits[split]["input_ids"])


def work_after(state: RunState, stage: str, *, recoveries: int = 0) -> float:
    """What the run does on its device after ``stage``'s training (``blockwise`` or ``recovery``), in tokens through
    the teacher; ``recoveries``: recoveries still to come after that stage's own. The export is not counted here
    (``reserve``)."""
    cfg, data = state.cfg, state.data
    n = arch.num_blocks(state.teacher)
    steps = min(cfg.run.max_blocks or n, n)
    val, test = _tokens(data, "validation"), _tokens(data, "test")
    train_len = _tokens(data, "train") / max(len(data.splits["train"]), 1)

    def latency(*batches: int) -> float:
        return (measure.LATENCY_WARMUP + cfg.run.latency_repeats) * sum(batches) * cfg.run.eval_seq_len

    def distil(optimiser_steps: int) -> float:  # forward and backward of a student (the teacher cached)
        teacher = 0.0 if cfg.distill.teacher_cache_gb > 0 else 1.0
        return optimiser_steps * cfg.distill.batch_size * train_len * (3 * STUDENT + teacher)

    sts = state.sts.tokens if state.sts is not None else 0
    point = STUDENT * (val + test + sts)  # a student on validation and test (and the STS pairs)
    curve = latency(1) + steps * (point + STUDENT * latency(1) + distil(cfg.distill.e2e_steps))
    evaluation = STUDENT * test + (1 + STUDENT) * (latency(1, 32) + sts)
    if data.task == "embedding" and data.label_names:  # the probe embeds training texts and the test split
        evaluation += (1 + STUDENT) * (min(PROBE_TRAIN_TEXTS, len(data.splits["train"])) * train_len + test)
    points = steps if cfg.run.baseline_points == "all" else min(2, steps)
    baselines = 0.0
    for name in cfg.run.baselines:  # the ones --time-budget runs beside: no equal-budget training
        if name in ("magnitude", "random"):  # each point: prune the teacher, then validation
            baselines += points * (val + sum(w.numel() for w in prunable(state.teacher)) / PRUNE_WEIGHTS_PER_TOKEN)
        elif name == "drop":
            baselines += steps * (val + distil(cfg.distill.e2e_steps))
    later = (
        recoveries * point
        + evaluation
        + (STUDENT * (3 * len(data.tokenizer) + test) if cfg.run.prune_vocab else 0)  # each token alone, then test
        + baselines
        + REPORT_TOKENS
    )
    if stage == "blockwise":
        return curve + recoveries_planned(cfg) * point + later
    return point + later  # this recovery's student on validation and test


# Recovery lifted validation kept by 0.024 or more for one student in ten (85 students of the suites of sessions
# 11-19; median +0.010): a student further than that below --min-kept before recovery will almost surely fail it.
LIKELY_RECOVERY_LIFT = 0.024


def out_of_reach(cfg: Config, kept_before: float) -> bool:
    """Whether a student keeping ``kept_before`` on validation will almost surely keep less than --min-kept after
    recovery."""
    return kept_before + LIKELY_RECOVERY_LIFT < cfg.run.min_kept


def hopeless(cfg: Config, kept_before: float) -> bool:
    """Under --time-budget: a recovery of a student keeping ``kept_before`` on validation is not worth its share of
    the time, since it will almost surely end below --min-kept (without a budget the stop rule tries it anyway)."""
    return cfg.run.time_budget is not None and out_of_reach(cfg, kept_before)


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


# The work after training varies from run to run more than its price does: the default's took 7 % more than reserved
# in one run (129.9 s against 121.1, the export and the baselines each ~7 s over) and 5 % less in another.
MARGIN = 1.1


def reserve(state: RunState, stage: str, *, recoveries: int = 0) -> tuple[float, float]:
    """Seconds of work after ``stage``'s training, with the ``MARGIN``: ``work_after`` at the device's pace, and the
    export (0 without one) at the CPU's."""
    export = 0.0
    if state.cfg.run.export == "onnx":
        one, every = _cpu_paces(state)
        export = EXPORT_SERIAL_TOKENS * one + EXPORT_TOKENS * every
    return MARGIN * _token_seconds(state) * work_after(state, stage, recoveries=recoveries), MARGIN * export


def _token_seconds(state: RunState) -> float:
    """Seconds per token of the teacher's fp32 pass over the test split on the run's device (timed in the teacher
    stage; timed now for a teacher.json written by a blockswap that did not record it)."""
    seconds = state.read("teacher.json").get("test_seconds")
    if seconds is None:
        started = time.perf_counter()
        state.evaluate(state.teacher, "test")
        seconds = time.perf_counter() - started
    return seconds / max(_tokens(state.data, "test"), 1)


CPU_SAMPLE = 4  # the CPU's paces are timed on every 4th test batch, after the first of them once untimed


def _cpu_paces(state: RunState) -> tuple[float, float]:
    """Seconds per token of the teacher's fp32 pass on the CPU, on one thread and on all of torch's, timed once on a
    CPU copy of the teacher (the teacher stays where it is); on a CPU run the second is the device's price."""
    if state.cpu_paces is None:
        every = _token_seconds(state) if state.accelerator.device.type == "cpu" else _time_on_cpu(state)
        state.cpu_paces = (_time_on_cpu(state, threads=1), every)
    return state.cpu_paces


def _time_on_cpu(state: RunState, *, threads: int | None = None) -> float:
    """Seconds per token of a CPU copy of the teacher over every ``CPU_SAMPLE``-th test batch (on ``threads`` threads
    of torch's intra-op pool when given; the pool is restored after). On 2 cores this came within 4 % of the whole
    test pass on one thread and 6-28 % above it on two."""
    batches = list(state.data.loader("test"))[::CPU_SAMPLE]
    teacher, before = copy.deepcopy(state.teacher).to("cpu"), torch.get_num_threads()
    torch.set_num_threads(threads or before)
    try:
        predict(teacher, batches[:1])  # one-off costs (the thread pool, first-call allocations) left out
        started = time.perf_counter()
        predict(teacher, batches)
        seconds = time.perf_counter() - started
    finally:
        torch.set_num_threads(before)
    return seconds / max(sum(int(b["attention_mask"].sum()) for b in batches), 1)


def blockwise_deadline(state: RunState, planned_steps: int, recovery_steps: int) -> tuple[float | None, dict]:
    """The ``time.monotonic()`` by which block-wise distillation ends, and what it was computed from."""
    if state.cfg.run.time_budget is None:
        return None, {}
    cfg, after = state.cfg, reserve(state, "blockwise")  # first: it may time the CPU's paces
    left = seconds_left(state)
    recovery = recoveries_planned(cfg) * recovery_steps
    share = planned_steps / (planned_steps + recovery)  # a recovery step costs about a block-wise one
    seconds = max(0.0, left - sum(after)) * share
    return time.monotonic() + seconds, _plan(cfg.run.time_budget, left, after, seconds)


def recovery_deadline(state: RunState, recoveries: int) -> tuple[float | None, dict]:
    """The ``time.monotonic()`` by which the recovery starting now ends, ``recoveries`` more coming after it."""
    if state.cfg.run.time_budget is None:
        return None, {}
    after = reserve(state, "recovery", recoveries=recoveries)  # first: it may time the CPU's paces
    left = seconds_left(state)
    seconds = max(0.0, left - sum(after)) / (1 + recoveries)
    return time.monotonic() + seconds, _plan(state.cfg.run.time_budget, left, after, seconds)


def _plan(budget: float, left: float, reserve: tuple[float, float], seconds: float) -> dict:
    return {
        "time_budget": budget,
        "seconds_left": round(left, 1),
        "evaluation_reserve": round(sum(reserve), 1),  # the export's share included
        **({"export_reserve": round(reserve[1], 1)} if reserve[1] else {}),
        "training_seconds": round(seconds, 1),
    }


def summary(state: RunState) -> dict | None:
    """summary.json's ``time_budget``: the budget, the steps each training stage planned and took (``recovery``: the
    final student's), the seconds taken up to the summary and those spent training, and whether the run stayed
    within it (``over``: the stages it does not shorten took longer). None without --time-budget."""
    if state.cfg.run.time_budget is None:
        return None
    blockwise = state.read("blockwise.json")["budget"]
    out = {
        "seconds": state.cfg.run.time_budget,
        "blockwise": {"steps": blockwise["steps"], "planned_steps": blockwise.get("planned_steps", blockwise["steps"])},
    }
    training = blockwise["seconds"]
    if state.path("recovery.json").is_file():
        rec = state.read("recovery.json")
        entry = rec["students"][str(rec["chosen_step"])]
        out["recovery"] = {"steps": entry["steps"], "planned_steps": entry.get("planned_steps", entry["steps"])}
        training += sum(student["seconds"] for student in rec["students"].values())
    out["cut"] = any(v["steps"] < v["planned_steps"] for v in out.values() if isinstance(v, dict))
    out["seconds_taken"] = round(state.cfg.run.time_budget - seconds_left(state), 1)
    out["training_seconds"] = round(training, 1)
    out["over"] = out["seconds_taken"] > state.cfg.run.time_budget
    return out
