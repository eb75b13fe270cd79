"""Stages after block-wise distillation: the substitution curve, final evaluation, baselines, summary."""

from __future__ import annotations

import copy
import dataclasses
import time

from . import adapters, baselines, distill, export, importance, measure
from .evaluate import evaluate
from .runtime import (
    Run,
    curve_csv,
    first_batches,
    load_substitutes,
    point_cost,
    read_json,
    swap,
    write_atomic,
    write_json,
)


class StopRuleUnsatisfied(ValueError):
    """No step of the curve satisfies the stop rule (the curve is still written)."""


def _evaluate_point(run: Run, model, split: str) -> dict:
    """A curve or baseline point, evaluated in the training precision.

    On this CPU bf16 halves the 50-odd evaluations of a run; the teacher's own curve row is
    evaluated the same way, so ``kept`` compares like with like. The final evaluation stage and
    teacher.json are fp32.
    """
    with run.accelerator.autocast():
        return evaluate(model, run.loader(split, shuffle=False))


def _row(run: Run, step: int, block, subs: list[int], model, cost: dict, teacher_val: float | None) -> dict:
    val = _evaluate_point(run, model, "validation")
    test = _evaluate_point(run, model, "test")
    teacher_val = val["accuracy"] if teacher_val is None else teacher_val
    return {
        "step": step,
        "block": block,
        "substituted": list(subs),
        **cost,
        "accuracy": val["accuracy"],
        "kept": val["accuracy"] / teacher_val if teacher_val else 0.0,
        "test_accuracy": test["accuracy"],
        "macro_f1": val["macro_f1"],
    }


def _next_block(run: Run, student, remaining: list[int], order: list[int]) -> int:
    if not run.cfg.run.rerank or len(remaining) == 1:
        return next(i for i in order if i in remaining)
    cheap = {k: v for k, v in run.cfg.importance.weight_map().items() if k in ("drop_one", "influence")} or {
        "drop_one": 1.0
    }
    ranked = importance.rank(
        student,
        first_batches(run, "validation", run.cfg.importance.importance_batches, batch_size=32, seed=1),
        cheap,
        candidates=remaining,
    )
    return ranked["order"][0]


def substitution_curve(run: Run) -> None:
    """For k = 1..K: swap in the next least important block's substitute, distil, evaluate.

    Writes curve.json / curve.csv and saves the chosen model (last step satisfying the rule) to
    RUN/model. Raises StopRuleUnsatisfied (after writing the curve) if no step satisfies it.
    """
    cfg = run.cfg.run
    order = read_json(run.out / "importance.json")["order"]
    subs = load_substitutes(run)
    n = adapters.num_blocks(run.teacher)
    k_max = min(n, cfg.max_blocks or n)
    teacher_cost = point_cost(run, run.teacher, None)
    rows = [_row(run, 0, None, [], run.teacher, teacher_cost, None)]
    teacher_val = rows[0]["accuracy"]
    student = copy.deepcopy(run.teacher)
    student.requires_grad_(True)
    chosen, remaining, done, logs = None, list(range(n)), [], {}
    for k in range(1, k_max + 1):
        block = _next_block(run, student, remaining, order)
        remaining.remove(block)
        done.append(block)
        swap(student, block, subs[block], run)
        logs[k] = distill.end_to_end(
            student, run.teacher, run.loader("train", shuffle=True, seed=cfg.seed + k), run.cfg.distill,
            steps=run.cfg.distill.e2e_steps, accelerator=run.accelerator, desc=f"step {k}: distil with block {block} swapped",
        )  # fmt: skip
        row = _row(run, k, block, sorted(done), student, point_cost(run, student, teacher_cost), teacher_val)
        rows.append(row)
        run.log(
            f"step {k}: block {block} -> kept {row['kept']:.4f} (val {row['accuracy']:.4f}, test {row['test_accuracy']:.4f}), "
            f"params -{row['params_cut']:.1%}, GMACs -{row['gmacs_cut']:.1%}"
        )
        ok = row["kept"] >= cfg.min_kept
        reached = cfg.target_gmacs_cut is not None and row["gmacs_cut"] >= cfg.target_gmacs_cut
        if ok:
            chosen = (k, copy.deepcopy(student))
        if reached or (not ok and not cfg.full_curve):
            break
    result = {"rows": rows, "teacher_validation_accuracy": teacher_val, "order": order, "distill_log": logs}
    result["chosen_step"] = chosen[0] if chosen else None
    target_missed = cfg.target_gmacs_cut is not None and not any(r["gmacs_cut"] >= cfg.target_gmacs_cut for r in rows)
    write_atomic(run.out / "curve.csv", curve_csv(rows))
    if chosen is None or target_missed:
        write_json(run.out / "curve.unsatisfied.json", result)
        why = (
            f"no step reached --target-gmacs-cut {cfg.target_gmacs_cut} (max {max(r['gmacs_cut'] for r in rows):.3f})"
            if target_missed
            else f"no step keeps >= {cfg.min_kept} of the teacher's accuracy (best {max(r['kept'] for r in rows[1:]):.4f})"
        )
        raise StopRuleUnsatisfied(f"{why}; the curve is in {run.out / 'curve.csv'}; relax the stop rule and --resume")
    if run.accelerator.is_main_process:
        export.save(chosen[1], run.out / "model", tokenizer=run.tokenizer)
    run.accelerator.wait_for_everyone()
    write_json(run.out / "curve.json", result)


def _profile(model, seq_len: int) -> dict:
    out = {"params": measure.count_params(model)["total"], "macs": measure.count_macs(model, batch=1, seq_len=seq_len)}
    for batch in (1, 32):
        out[f"latency_b{batch}"] = measure.latency(model, batch=batch, seq_len=seq_len, repeats=5, warmup=2).as_dict()
    return out


def evaluation_stage(run: Run) -> None:
    """Teacher and chosen student on the test split, with parameters, MACs and latency."""
    student = export.load(run.out / "model")
    seq = run.cfg.run.eval_seq_len
    teacher_test = read_json(run.out / "teacher.json")["test"]  # the same fp32 evaluation, already done
    result = {
        "teacher": {"test": teacher_test, **_profile(run.teacher, seq)},
        "student": {"test": evaluate(student, run.loader("test", shuffle=False)), **_profile(student, seq)},
    }
    t, s = result["teacher"], result["student"]
    result["kept"] = s["test"]["accuracy"] / t["test"]["accuracy"]
    result["params_cut"] = measure.cut(t["params"], s["params"])
    result["gmacs_cut"] = measure.cut(t["macs"]["macs"], s["macs"]["macs"])
    for b in (1, 32):
        result[f"speedup_b{b}"] = t[f"latency_b{b}"]["median_ms"] / s[f"latency_b{b}"]["median_ms"]
    write_json(run.out / "evaluation.json", result)


def baselines_stage(run: Run) -> None:
    """Magnitude / random pruning at each curve step's parameter cut; layer dropping of the same blocks."""
    curve = read_json(run.out / "curve.json")
    rows, teacher_val = curve["rows"][1:], curve["teacher_validation_accuracy"]
    names = run.cfg.run.baseline_names()
    out: dict[str, list[dict]] = {n: [] for n in names}
    dropped = copy.deepcopy(run.teacher)
    dropped.requires_grad_(True)
    teacher_params = measure.count_params(run.teacher)["total"]
    drop_cfg = dataclasses.replace(run.cfg.distill, freeze_kept=False)  # no substitutes: the kept blocks adapt
    for r in rows:
        sparsity = baselines.sparsity_for_cut(run.teacher, r["params_cut"])
        if "magnitude" in names:
            pruned = baselines.magnitude_prune(run.teacher, sparsity)
            out["magnitude"].append(_baseline_row(run, r, pruned, teacher_val, sparsity=sparsity))
        if "random" in names:
            pruned = baselines.random_prune(run.teacher, sparsity, seed=run.cfg.run.seed)
            out["random"].append(_baseline_row(run, r, pruned, teacher_val, sparsity=sparsity))
        if "drop" in names:
            # the same blocks as the curve, dropped cumulatively, with the same distillation budget per step
            t0 = time.perf_counter()
            adapters.blocks(dropped)[r["block"]] = adapters.IdentityBlock(
                adapters.spec_for(dropped.config).returns_tuple
            )
            distill.end_to_end(
                dropped, run.teacher, run.loader("train", shuffle=True, seed=run.cfg.run.seed + r["step"]), drop_cfg,
                steps=run.cfg.distill.e2e_steps, accelerator=run.accelerator, desc=f"drop {r['substituted']}",
            )  # fmt: skip
            row = _baseline_row(run, r, dropped, teacher_val)
            row["params_cut"] = measure.cut(teacher_params, measure.count_params(dropped)["total"])
            row["distill_seconds"] = time.perf_counter() - t0
            out["drop"].append(row)
    write_json(run.out / "baselines.json", out)


def _baseline_row(run: Run, r: dict, model, teacher_val: float, **extra) -> dict:
    """Validation only: ``kept`` (the curve's criterion) is what the baselines are compared on."""
    v = _evaluate_point(run, model, "validation")
    return {
        "step": r["step"],
        "substituted": r["substituted"],
        "params_cut": r["params_cut"],
        "accuracy": v["accuracy"],
        "kept": v["accuracy"] / teacher_val,
        **extra,
    }


def summarise(run: Run) -> dict:
    """summary.json: teacher accuracy, chosen step, its accuracy, kept, cuts, speed-up, stage times."""
    teacher = read_json(run.out / "teacher.json")
    curve = read_json(run.out / "curve.json")
    ev = read_json(run.out / "evaluation.json")
    chosen = curve["rows"][curve["chosen_step"]]
    return {
        "teacher_test_accuracy": ev["teacher"]["test"]["accuracy"],
        "teacher_validation_accuracy": teacher["validation"]["accuracy"],
        "chosen_step": curve["chosen_step"],
        "chosen_blocks": chosen["substituted"],
        "student_test_accuracy": ev["student"]["test"]["accuracy"],
        "kept_test": ev["kept"],
        "kept_validation": chosen["kept"],
        "params_cut": ev["params_cut"],
        "gmacs_cut": ev["gmacs_cut"],
        "speedup_b1": ev["speedup_b1"],
        "speedup_b32": ev["speedup_b32"],
        "seconds_per_stage": run.timings,
    }
