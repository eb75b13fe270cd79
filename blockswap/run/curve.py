"""The substitution curve: swap in the next least important block's substitute, distil, evaluate, measure."""

from __future__ import annotations

import copy
import csv
import dataclasses
import io
import time

from .. import arch, distill, importance
from ..config import Config
from ..errors import StopRuleUnsatisfied
from ..evaluate import kept_interval, per_example
from ..files import write_text
from ..substitute import dropped_in_place, load_substitutes, substituted_blocks, swap_in
from .budget import out_of_reach
from .state import RunState

CSV_KEYS = ["step", "block", "substituted", "dropped", "params", "params_cut", "gmacs", "gmacs_cut", "score", "kept"]
CSV_KEYS += ["test_score", "kept_test", "kept_test_low", "kept_test_high", "latency_ms"]


def _row(state: RunState, step: int, block: int | None, model, cost: dict, teacher: dict | None) -> dict:
    """One curve point; ``teacher`` (its validation and test metrics) None means this is the teacher's own row."""
    if teacher is None:  # the teacher's own row
        val, test = state.teacher_point("validation"), state.teacher_point("test")
    else:
        val, test = state.evaluate_point(model, "validation"), state.evaluate_point(model, "test")
    teacher = teacher or {"validation": val, "test": test}
    teacher_val = teacher["validation"]["score"]
    ci = kept_interval(teacher["test"], test, seed=step)
    return {
        "step": step,
        "block": block,
        "substituted": substituted_blocks(model),
        "dropped": dropped_in_place(model),
        **cost,
        "score": val["score"],  # the task's main metric on validation (accuracy, Pearson, ...)
        "kept": val["score"] / teacher_val if teacher_val else 0.0,
        "test_score": test["score"],
        "kept_test": ci["kept"],
        "kept_test_ci95": ci["ci95"],
        "n_test": ci["n"],
        "test_metrics": {**other_metrics(test), **sts_metrics(state, model)},
        "test_per_example": per_example(test),  # what paired comparisons with other students resample
    }, {"validation": val, "test": test}


def sts_metrics(state: RunState, model) -> dict[str, float]:
    """``{"sts_spearman": ...}`` on the run's --eval-dataset, in the training precision like every point; or {}."""
    if state.sts is None:
        return {}
    with state.accelerator.autocast():
        return {"sts_spearman": state.sts.spearman(model)}


_NOT_METRICS = ("score", "seconds", "examples_per_s")  # the main metric has its own column; timings are not metrics


def other_metrics(metrics: dict) -> dict[str, float]:
    """The task's other metrics of an evaluation (macro-F1, Spearman, entity precision, ...)."""
    return {k: v for k, v in metrics.items() if isinstance(v, float) and k not in _NOT_METRICS}


def _next_block(state: RunState, student, remaining: list[int], order: list[int]) -> int:
    """The least important remaining block: from the teacher's order, or re-ranked on the student."""
    if not state.cfg.run.rerank or len(remaining) == 1:
        return next(i for i in order if i in remaining)
    signals = state.cfg.importance.signals
    cheap = {k: v for k, v in signals.items() if k in ("drop_one", "influence")} or {"drop_one": 1.0}
    batches = state.first_batches("validation", state.cfg.importance.importance_batches, batch_size=32, seed=1)
    return importance.rank(student, batches, cheap, candidates=remaining)["order"][0]


def key_rows(rows: list[dict]) -> list[dict]:
    """The curve steps nearest a 50 % GMACs cut and the last step (the suite's comparison points)."""
    near = min(rows, key=lambda r: abs(r["gmacs_cut"] - 0.5))
    return [near] if near is rows[-1] else [near, rows[-1]]


def _point(state: RunState, model, teacher_cost) -> dict:
    c = state.cost(model)
    cut = c.cut(teacher_cost)
    return {
        "params": c.params["total"],
        "gmacs": c.gmacs,
        "latency_ms": c.latency[1].median_ms,
        "params_cut": cut["params_cut"],
        "gmacs_cut": cut["gmacs_cut"],
    }


def substitution_curve(state: RunState) -> None:
    """curve.json / curve.csv and RUN/model: for k = 1..K swap, distil end to end, evaluate, measure.

    The chosen model (RUN/model) is the last step satisfying the stop rule; when that is not the
    curve's last step, the last step's student is saved too (RUN/model_last), and with ``recover_key`` the
    student nearest a 50 % GMACs cut (RUN/model_step<k>) when it is neither. Raises StopRuleUnsatisfied (after
    writing curve.csv and curve.unsatisfied.json) if no step does.
    """
    cfg, teacher = state.cfg.run, state.teacher
    order = state.read("importance.json")["order"]
    subs = load_substitutes(state.path("substitutes.safetensors"), teacher, state.cfg.compact)
    n = arch.num_blocks(teacher)
    teacher_cost = state.cost(teacher)
    first, teacher_metrics = _row(state, 0, None, teacher, _point(state, teacher, teacher_cost), None)
    rows, teacher_val, metric = [first], first["score"], teacher_metrics["validation"]["metric"]
    student = copy.deepcopy(teacher)
    student.requires_grad_(True)
    chosen, remaining, logs, half = None, list(range(n)), {}, None
    budget = dict(state.read("blockwise.json").get("budget") or {"steps": 0, "seconds": 0.0})
    for k in range(1, min(n, cfg.max_blocks or n) + 1):
        block = _next_block(state, student, remaining, order)
        remaining.remove(block)
        dcfg = state.cfg.distill
        if k <= cfg.drop_blocks:  # a hybrid's dropped block: an identity in its place until the student is saved
            arch.put_block(student, block, arch.identity_block(student))
            dcfg = dataclasses.replace(dcfg, freeze_kept=False)  # no substitute takes it up: the kept blocks adapt
        else:
            swap_in(student, block, copy.deepcopy(subs[block]))
        started = time.perf_counter()
        logs[k] = distill.end_to_end(
            student, teacher, state.train_loader(cfg.seed + k), dcfg, steps=state.cfg.distill.e2e_steps,
            accelerator=state.accelerator, cache=state.teacher_cache,
            desc=f"step {k}: distil with block {block} {'dropped' if k <= cfg.drop_blocks else 'swapped'}",
        )  # fmt: skip
        budget["steps"] += state.cfg.distill.e2e_steps
        budget["seconds"] += time.perf_counter() - started
        row, _ = _row(state, k, block, student, _point(state, student, teacher_cost), teacher_metrics)
        # what reaching this point cost: block-wise distillation plus every end-to-end phase so far
        row.update(
            train_steps=budget["steps"], train_batch=state.cfg.distill.batch_size, train_seconds=budget["seconds"]
        )
        rows.append(row)
        state.log(
            f"step {k}: block {block} -> kept {row['kept']:.4f} ({metric} val {row['score']:.4f}, test {row['test_score']:.4f},"
            f" kept on test {row['kept_test']:.4f} [{row['kept_test_ci95'][0]:.3f}, {row['kept_test_ci95'][1]:.3f}]), "
            f"params -{row['params_cut']:.1%}, GMACs -{row['gmacs_cut']:.1%}"
        )
        ok = row["kept"] >= cfg.min_kept
        if ok:
            chosen = (k, copy.deepcopy(student))
        if state.cfg.distill.recover_key and (half is None or abs(row["gmacs_cut"] - 0.5) < half[0]):
            half = (abs(row["gmacs_cut"] - 0.5), k, copy.deepcopy(student))  # the key point, whatever is chosen
        reached = cfg.target_gmacs_cut is not None and row["gmacs_cut"] >= cfg.target_gmacs_cut
        if reached or (not ok and not cfg.full_curve):
            break
    result = {"rows": rows, "metric": metric, "teacher_validation_score": teacher_val, "order": order}
    result["distill_log"] = logs
    result["chosen_step"] = chosen[0] if chosen else None
    write_text(state.path("curve.csv"), _csv(rows))
    _check_stop_rule(state, result)
    state.path("curve.unsatisfied.json").unlink(missing_ok=True)  # a resumed run's earlier, stricter rule
    last = rows[-1]["step"]
    if chosen is not None:
        state.save_model(chosen[1], "model")
    if result["chosen_step"] != last:  # the most compressed student too: to deploy, benchmark or recover it
        state.save_model(student, "model_last")
    if half is not None and half[1] not in (result["chosen_step"], last):
        state.save_model(half[2], f"model_step{half[1]}")
    state.write("curve.json", result)


def rescued_by_recovery(cfg: Config, last_kept: float) -> bool:
    """Whether a curve no step of which keeps --min-kept before recovery goes on to the recovery stage: under the
    stop rule ``recovered`` its last student (keeping ``last_kept`` on validation), recovered, may still keep it (a
    hybrid's untrained dropped block costs more before recovery than a substitute), unless it is out of reach."""
    return cfg.run.stop_rule == "recovered" and cfg.distill.recovery_epochs > 0 and not out_of_reach(cfg, last_kept)


def _check_stop_rule(state: RunState, result: dict) -> None:
    cfg, rows = state.cfg.run, result["rows"]
    target_missed = cfg.target_gmacs_cut is not None and not any(r["gmacs_cut"] >= cfg.target_gmacs_cut for r in rows)
    if result["chosen_step"] is not None and not target_missed:
        return
    best = max(r["kept"] for r in rows[1:])
    if not target_missed and rescued_by_recovery(state.cfg, rows[-1]["kept"]):
        state.log(
            f"no step keeps >= {cfg.min_kept} of the teacher's {result['metric']} before recovery (best {best:.4f}); "
            f"stop rule 'recovered': the last step's student is recovered and taken if it keeps it then"
        )
        return
    state.write("curve.unsatisfied.json", result)
    if target_missed:
        why = f"no step reached --target-gmacs-cut {cfg.target_gmacs_cut} (max {max(r['gmacs_cut'] for r in rows):.3f})"
    else:
        why = f"no step keeps >= {cfg.min_kept} of the teacher's {result['metric']} (best {best:.4f})"
    raise StopRuleUnsatisfied(f"{why}; the curve is in {state.path('curve.csv')}; {RELAX}")


RELAX = "relax the stop rule (--min-kept, --target-gmacs-cut, --max-blocks) and --resume"


def _csv(rows: list[dict]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_KEYS, extrasaction="ignore")
    w.writeheader()
    for r in rows:
        low, high = r["kept_test_ci95"]
        w.writerow(
            {
                **r,
                "substituted": " ".join(map(str, r["substituted"])),
                "dropped": " ".join(map(str, r.get("dropped", []))),
                "kept_test_low": low,
                "kept_test_high": high,
            }
        )
    return buf.getvalue()
