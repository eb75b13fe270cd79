"""The stages around the curve: teacher, importance, block-wise KD, recovery, evaluation, vocab, export, summary.

Each stage is ``fn(state)``, reads the artifacts of earlier stages and writes its own (see recipe.py).
"""

from __future__ import annotations

import time

import torch
from accelerate.utils import set_seed
from transformers import PreTrainedModel

from .. import arch, deploy, distill, embed, export, importance, measure
from ..data import load_source
from ..errors import RunError, StopRuleUnsatisfied
from ..evaluate import kept_interval, logits_fn, per_example
from ..substitute import make_compact, save_substitutes
from ..train import StepBudget, default_base_model, train_teacher
from ..vocab import prune_and_measure
from . import budget as time_budget
from .curve import RELAX, key_rows, other_metrics
from .state import RunState


def load_teacher(source: str, num_labels: int, task: str = "classification") -> PreTrainedModel:
    """A frozen, evaluation-mode classifier from a folder or hub id; refuses non-classifiers."""
    model = export.load_classifier(source)
    if model.config.num_labels < num_labels:
        raise RunError(f"the teacher's head has {model.config.num_labels} labels but the data has {num_labels}")
    if (task == "token") != arch.is_token_model(model):
        head = "a token classifier" if arch.is_token_model(model) else "a sequence classifier"
        raise RunError(f"the data is a {task} task but the teacher is {head}; give a matching teacher or --task")
    if (num_labels == 1) != (model.config.num_labels == 1):
        task, head = ("regression", "a classifier") if num_labels == 1 else ("classification", "a regression head")
        raise RunError(f"the data is a {task} task but the teacher has {head}; give a matching teacher or --task")
    model.requires_grad_(False)
    return model


def teacher(state: RunState) -> None:
    """teacher.json: the given teacher's fp32 metrics, or fine-tune one into RUN/teacher."""
    cfg = state.cfg
    if state.teacher is not None:
        state.place(state.teacher)  # measured where the students will be: the test pass prices --time-budget's reserve
        source = cfg.run.teacher or embed.default_teacher()  # no --teacher: the embedding task's packaged default
        metrics = {"source": source, "validation": state.evaluate(state.teacher, "validation")}
        started = time.perf_counter()
        metrics["test"] = state.evaluate(state.teacher, "test")
        metrics["test_seconds"] = round(time.perf_counter() - started, 2)  # what --time-budget reserves per evaluation
    else:
        base = cfg.finetune.model or default_base_model()
        model, metrics = train_teacher(
            base, state.data, cfg.finetune, seed=cfg.run.seed, accelerator=state.accelerator, log=state.log
        )
        state.save_model(model, "teacher")
        metrics["source"] = str(state.path("teacher"))
        state.teacher = load_teacher(metrics["source"], len(state.data.label_names), state.data.task)
    val, test, metric = metrics["validation"]["score"], metrics["test"]["score"], metrics["test"]["metric"]
    state.log(f"teacher: validation {metric} {val:.4f}, test {test:.4f}")
    state.write("teacher.json", metrics)


def block_importance(state: RunState) -> None:
    """importance.json: every signal's scores per block, combined, and the order (least important first)."""
    cfg = state.cfg.importance
    batches = state.first_batches("validation", cfg.importance_batches, batch_size=32, seed=1)
    state.place(state.teacher)  # on a GPU run, ranked there (and kept there for block-wise KD)
    with state.accelerator.autocast():  # a ranking: the training precision suffices, and bf16 halves it on CPU
        result = importance.rank(
            state.teacher, batches, cfg.signals, probe_steps=cfg.probe_steps, seed=state.cfg.run.seed
        )
    state.log(f"importance order (least important first): {result['order']}")
    state.write("importance.json", result)


def blockwise(state: RunState) -> None:
    """substitutes.safetensors + blockwise.json: every block's substitute, distilled on its hidden states."""
    cfg, started = state.cfg, time.perf_counter()
    set_seed(cfg.run.seed)
    subs = {i: make_compact(state.teacher, cfg.compact, i) for i in range(arch.num_blocks(state.teacher))}
    if cfg.distill.substitute_init == "linear":
        distill.init_linear(state.teacher, subs, state.first_batches("train", 20, batch_size=64, seed=2))
    loader = state.train_loader(cfg.run.seed)
    planned = distill.steps_for(cfg.distill.blockwise_epochs, loader)
    deadline, plan = time_budget.blockwise_deadline(
        state, planned, distill.steps_for(cfg.distill.recovery_epochs, loader) if cfg.distill.recovery_epochs else 0
    )
    if plan and plan["seconds_left"] < plan["evaluation_reserve"]:  # said now: the user may stop and ask for more
        over = plan["time_budget"] - plan["seconds_left"] + plan["evaluation_reserve"]
        left = f"{plan['seconds_left']:.0f} s left" if plan["seconds_left"] > 0 else "already spent"
        state.log(
            f"--time-budget {plan['time_budget']:g} s: {left}, and about {plan['evaluation_reserve']:.0f} s of "
            f"evaluations and measurements to come: the run will end over its budget (near {over:.0f} s), with "
            "training cut to the steps that measure its pace"
        )
    steps = StepBudget(planned, deadline, slack=0.3)  # epoch 2 reads the teacher cache; recovery absorbs an overrun
    history = distill.blockwise(
        state.teacher, subs, loader, cfg.distill, accelerator=state.accelerator, cache=state.teacher_cache, budget=steps
    )
    save_substitutes(subs, state.path("substitutes.safetensors"))
    budget = {"steps": steps.total, "batch_size": cfg.distill.batch_size}
    if plan:
        budget.update(planned_steps=planned, time_budget=plan)
        _log_cut(state, "block-wise distillation", steps.total, planned, plan)
    budget["seconds"] = time.perf_counter() - started
    c = state.teacher_cache
    cache = {"texts": len(c.rows), "mib": round(c.bytes / 2**20, 1), "batches_served": c.hits,
             "batches_partly_served": c.partial, "enabled": c.enabled}  # fmt: skip
    state.log(
        f"teacher cache: {cache['texts']} texts, {cache['mib']} MiB, {c.hits} of {c.hits + c.misses} batches served"
        + (f" ({c.partial} more in part: the teacher ran on their uncached texts only)" if c.partial else "")
    )
    state.write(
        "blockwise.json",
        {"mse_by_quarter": {str(k): v for k, v in history.items()}, "budget": budget, "teacher_cache": cache},
    )


def _log_cut(state: RunState, what: str, steps: int, planned: int, plan: dict) -> None:
    if steps < planned:
        state.log(
            f"--time-budget {plan['time_budget']:g} s: {what} took {steps} of its {planned} steps ({plan['seconds_left']:.0f} s "
            f"were left, {plan['evaluation_reserve']:.0f} s reserved for the evaluations and measurements to come)"
        )


def recovery(state: RunState) -> None:
    """recovery.json + RUN/model_recovered (+ RUN/model_last_recovered; + the key points' students with
    ``recover_key``): the final and other curve students distilled end to end with every weight trainable (the
    substitutes only with ``recovery_freeze_kept``).

    KL(T) + alpha CE + recovery_beta MSE at every block's output, AdamW at recovery_lr with warm-up and
    linear decay over recovery_epochs: the budget a DistilBERT-style student would get. The stop rule
    ``recovered`` recovers the curve's last student first and makes it the final one (RUN/model_recovered) when
    its validation kept reaches min_kept; otherwise (and under ``curve``) the curve's chosen student is the final
    one. Each student's entry (keyed by its curve step) has its budget, validation before/after and kept on test
    with its paired interval; the equal-budget baselines add its steps to theirs.
    """
    curve, run_cfg, cfg = state.read("curve.json"), state.cfg.run, state.cfg.distill
    chosen, last = curve["chosen_step"], curve["rows"][-1]["step"]
    teacher_val = state.teacher_point("validation")  # once: under bf16 it is an evaluation
    students, final = {}, chosen
    if run_cfg.stop_rule == "recovered" and last != chosen and _worth_trying(state, curve, last):
        # the curve saved the last student as RUN/model_last
        after = time_budget.recoveries_planned(state.cfg) - 1  # should it fail, the fallback gets what is left
        entry, student = _recover(state, curve, "model_last", last, teacher_val, after=after)
        passed = entry["kept_validation_after"] >= run_cfg.min_kept
        entry["folder"] = "model_recovered" if passed else "model_last_recovered"
        state.save_model(student, entry["folder"])
        students[str(last)], final = entry, last if passed else chosen
        low, high = entry["kept_validation_after_ci95"]
        state.log(
            f"stop rule 'recovered': the last step's student keeps {entry['kept_validation_after']:.4f} [{low:.3f}, "
            f"{high:.3f}] of the teacher's validation score over {entry['n_validation']} texts after recovery, "
            f"{'>=' if passed else '<'} --min-kept {run_cfg.min_kept}: "
            + (f"the final student is step {final}" if final is not None else "and no curve step kept it before")
        )
    if final is None:  # no curve step kept --min-kept before recovery (curve.rescued_by_recovery), nor the last after
        _unsatisfied(state, curve, students[str(last)])
    wanted = [chosen] if final == chosen else []
    if cfg.recover_last or cfg.recover_key:
        wanted.append(last)
    wanted += [r["step"] for r in key_rows(curve["rows"][1:])] if cfg.recover_key else []
    todo = [step for step in dict.fromkeys(wanted) if str(step) not in students]  # in order, once each
    for i, step in enumerate(todo):
        source = "model" if step == chosen else "model_last" if step == last else f"model_step{step}"  # the curve's
        target = "model_recovered" if step == final else "model_last_recovered" if step == last else None
        entry, student = _recover(state, curve, source, step, teacher_val, after=len(todo) - i - 1)
        entry["folder"] = target or f"model_step{step}_recovered"
        state.save_model(student, entry["folder"])
        students[str(step)] = entry
    kept = students[str(final)]["kept_validation_after"]
    if kept < run_cfg.min_kept:  # it passed before recovery: recovery does not always lift validation
        state.log(
            f"note: the final student (step {final}) keeps {kept:.4f} on validation after recovery, below --min-kept "
            f"{run_cfg.min_kept} (it kept {curve['rows'][final]['kept']:.4f} before)"
        )
    state.write(
        "recovery.json",
        {"metric": curve["metric"], "stop_rule": run_cfg.stop_rule, "chosen_step": final,
         "curve_chosen_step": chosen, "students": students},
    )  # fmt: skip


def _unsatisfied(state: RunState, curve: dict, last: dict) -> None:
    """Ends a run whose curve kept --min-kept at no step and whose last student, recovered (``last``, its entry), does
    not either: its curve goes back to curve.unsatisfied.json, where a --resume with a relaxed stop rule starts again
    (run.state.STOP_RULE_FIELDS may change until curve.json exists). The curve let it through only when in reach
    (curve.rescued_by_recovery), so ``_worth_trying`` tried it even under --time-budget."""
    best = max(r["kept"] for r in curve["rows"][1:])
    state.write("curve.unsatisfied.json", {**curve, "recovered_last": last})
    state.path("curve.json").unlink()
    raise StopRuleUnsatisfied(
        f"no step keeps >= {state.cfg.run.min_kept} of the teacher's {curve['metric']}: best {best:.4f} before "
        f"recovery, the last step {curve['rows'][-1]['kept']:.4f} before and {last['kept_validation_after']:.4f} after "
        f"recovery (RUN/{last['folder']}); the curve is in "
        f"{state.path('curve.csv')}; {RELAX}"
    )


def _worth_trying(state: RunState, curve: dict, last: int) -> bool:
    """Whether the stop rule recovers the last step's student first: always, but under --time-budget not when a
    recovery would almost surely leave it below --min-kept (its time then goes to the curve's choice)."""
    kept = curve["rows"][last]["kept"]
    if not time_budget.hopeless(state.cfg, kept):
        return True
    state.log(
        f"--time-budget: the last step's student keeps {kept:.4f} on validation before recovery, more than "
        f"{time_budget.LIKELY_RECOVERY_LIFT} below --min-kept {state.cfg.run.min_kept} (what a recovery adds one time "
        f"in ten): not recovered, the time goes to step {curve['chosen_step']}"
    )
    return False


def _recover(
    state: RunState, curve: dict, source: str, step: int, teacher_val: dict, *, after: int
) -> tuple[dict, PreTrainedModel]:
    """One curve student (RUN/``source``, curve step ``step``) recovered: its recovery.json entry and the model;
    ``teacher_val``: the teacher's validation metrics in the training precision (``state.teacher_point``);
    ``after``: recoveries that may follow it (what is left of --time-budget is shared out equally)."""
    set_seed(state.cfg.run.seed)
    student, served = export.load(state.path(source)), state.teacher_cache.hits
    deadline, plan = time_budget.recovery_deadline(state, after)
    budget = distill.recover(
        student, state.teacher, state.train_loader(state.cfg.run.seed + 1000), state.cfg.distill,
        accelerator=state.accelerator, cache=state.teacher_cache, deadline=deadline,
    )  # fmt: skip
    if plan:
        budget["time_budget"] = plan
        _log_cut(state, f"recovery of step {step}", budget["steps"], budget["planned_steps"], plan)
    budget["teacher_cache_batches"] = state.teacher_cache.hits - served  # batches with no teacher forward
    row, val, test = curve["rows"][step], *(state.evaluate_point(student, s) for s in ("validation", "test"))
    ci = kept_interval(state.teacher_test(), test, seed=step)
    val_ci = kept_interval(teacher_val, val, seed=step)  # what the stop rule reads, and its noise
    state.log(
        f"recovery of step {step}: {budget['steps']} steps, validation {val['metric']} {row['score']:.4f} -> "
        f"{val['score']:.4f}, kept on test {row['kept_test']:.4f} -> {ci['kept']:.4f} "
        f"[{ci['ci95'][0]:.3f}, {ci['ci95'][1]:.3f}]"
    )
    entry = {
        "substituted": row["substituted"], **budget, "validation_before": row["score"],
        "validation_after": val["score"], "kept_validation_after": val["score"] / curve["teacher_validation_score"],
        "kept_validation_after_ci95": val_ci["ci95"], "n_validation": val_ci["n"],
        "test_score_before": row["test_score"], "kept_test_before": row["kept_test"], "test_score": test["score"],
        "kept_test": ci["kept"], "kept_test_ci95": ci["ci95"], "test_metrics": other_metrics(test),
        "test_per_example": per_example(test),
    }  # fmt: skip
    return entry, student


def recovered_steps(state: RunState) -> dict[int, int]:
    """Recovery optimiser steps spent per curve step (empty without a recovery stage)."""
    if not state.path("recovery.json").is_file():
        return {}
    return {int(step): s["steps"] for step, s in state.read("recovery.json").get("students", {}).items()}


def final_step(state: RunState) -> int:
    """The curve step of the final student: the recovery stage's choice when it ran, else the curve's."""
    if state.path("recovery.json").is_file():
        return state.read("recovery.json").get("chosen_step", state.read("curve.json")["chosen_step"])
    return state.read("curve.json")["chosen_step"]


def evaluation(state: RunState) -> None:
    """evaluation.json: teacher and chosen student on the test split (fp32), with their costs."""
    student, teacher = (
        state.place(export.load(export.final_student(state.out))),
        state.place(state.teacher),
    )  # measured alike
    teacher_cost, student_cost = state.cost(teacher, (1, 32)), state.cost(student, (1, 32))
    teacher_test = state.teacher_test()  # the same fp32 evaluation, already done
    result = {
        "teacher": {"test": teacher_test, **teacher_cost.as_dict()},
        "student": {"test": state.evaluate(student, "test"), **student_cost.as_dict()},
    }
    t_test, s_test = result["teacher"]["test"], result["student"]["test"]
    ci = kept_interval(t_test, s_test)
    result["kept"], result["kept_ci95"], result["n_test"] = ci["kept"], ci["ci95"], ci["n"]
    result["student_source"] = str(export.final_student(state.out))
    result.update(student_cost.cut(teacher_cost))
    if state.data.task == "embedding" and state.data.label_names:
        result["probe"] = {name: _probe(state, m) for name, m in (("teacher", state.teacher), ("student", student))}
        state.log(f"probe accuracy: teacher {result['probe']['teacher']:.4f}, student {result['probe']['student']:.4f}")
    if state.sts is not None:  # fp32, like the rest of this stage
        sts = state.sts
        result["sts"] = {"dataset": sts.source, "split": sts.split, "pairs": len(sts.scores), "metric": "spearman"}
        result["sts"].update({name: sts.spearman(m) for name, m in (("teacher", state.teacher), ("student", student))})
        state.log(
            f"STS Spearman ({sts.source}): teacher {result['sts']['teacher']:.4f}, student {result['sts']['student']:.4f}"
        )
    state.write("evaluation.json", result)


@torch.no_grad()
def _probe(state: RunState, model) -> float:
    """Test accuracy of a logistic-regression probe on ``model``'s embeddings of (up to 2,000) training texts."""
    parts, forward = {}, logits_fn(model)  # on the model's device, back on the CPU
    for split in ("train", "test"):
        x, y = [], []
        for batch in state.data.loader(split, shuffle=split == "train", seed=state.cfg.run.seed):  # a random subset
            x.append(forward(batch))
            y.append(batch["class_label"])
            if split == "train" and sum(len(t) for t in y) >= embed.PROBE_TRAIN_TEXTS:
                break
        parts[split] = torch.cat(x), torch.cat(y)
    return embed.probe_accuracy(*parts["train"], *parts["test"], seed=state.cfg.run.seed)


def prune_vocab(state: RunState) -> None:
    """vocab.json + RUN/model_vocab: the chosen student with only the tokens of the training texts."""
    cfg = state.cfg.data
    student = export.load(export.final_student(state.out))
    pruned, stats = prune_and_measure(student, state.data.tokenizer, load_source(cfg), max_length=cfg.max_length)
    if state.accelerator.is_main_process:
        export.save(pruned, state.path("model_vocab"), tokenizer=state.data.tokenizer)
    state.log(
        f"vocabulary {stats['vocab_before']} -> {stats['vocab_after']} tokens: test {stats['metric']} "
        f"{stats['test_score_before']:.4f} -> {stats['test_score_after']:.4f}"
    )
    state.write("vocab.json", stats)


EXPORT_SESSIONS = 3


def onnx_export(state: RunState) -> None:
    """export.json + RUN/onnx/{teacher,student}: ONNX fp32 + int8, parity-checked, test accuracy per runtime."""
    deploy.require_onnx()
    dsd, cfg = load_source(state.cfg.data), state.cfg.data
    final = state.path("model_vocab") if state.path("model_vocab").is_dir() else export.final_student(state.out)
    models = {
        "teacher": (state.teacher, state.data.tokenizer),
        "student": (export.load(final), export.load_tokenizer(final)),
    }
    result = {}
    # 3 sessions per model and precision, 7 calls each: about the time of 20 calls in one, less one session's draw
    repeats = -(-max(20, state.cfg.run.latency_repeats) // EXPORT_SESSIONS)
    setup = {"threads": torch.get_num_threads(), "repeats": repeats, "warmup": 2, "sessions": EXPORT_SESSIONS}
    for name, (model, tokenizer) in models.items():
        out = state.path("onnx") / name
        result[name] = deploy.export_checked(
            model, tokenizer, out, dsd=dsd, max_length=cfg.max_length, int8=True, int8_scales=state.cfg.run.int8_scales
        )
        state.log(f"onnx {name}: parity max |Δlogit| {result[name]['parity']['max_abs_logit_diff']:.1e}")
    exports = {
        name: (state.path("onnx") / name, _latency_batches(state, m, tok, dsd)) for name, (m, tok) in models.items()
    }
    for name, latency in deploy.ort_latency(exports, **setup).items():  # teacher and student in the same rounds
        result[name]["latency"] = latency
    result["student_source"], result["latency_setup"] = str(final), setup
    state.write("export.json", result)


def _latency_batches(state: RunState, model, tokenizer, dsd) -> dict[str, dict]:
    """Batch 1 and 32 at the run's measurement length (the eager latency's inputs) and the 32 longer-half test
    sentences padded to their longest (``b32_real``)."""
    seq = state.cfg.run.eval_seq_len
    real = tokenizer(
        deploy.latency_texts(list(dsd["test"]["text"])),
        truncation=True,
        max_length=state.cfg.data.max_length,
        padding=True,
        return_tensors="pt",
    )
    return {
        "b1": measure.dummy_batch(model, 1, seq),
        "b32": measure.dummy_batch(model, 32, seq),
        "b32_real": dict(real),
    }


def baselines_ahead(state: RunState) -> list[dict]:
    """The saved equal-budget baseline students that keep more on test than the substitution path's student at
    the same curve point, by more than the paired 95 % interval: where the user is better served by them."""
    if not state.path("baselines.json").is_file():
        return []
    ahead = []
    for name, rows in state.read("baselines.json").items():
        for b in rows if name != "descriptions" else []:
            adv = b.get("blockswap_advantage")
            if b.get("folder") and adv and adv["ci95"][1] < 0:
                ahead.append({"baseline": name, "step": b["step"], "folder": b["folder"], "gmacs_cut": b["gmacs_cut"],
                              "kept_test": b["kept_test"], "blockswap_advantage": adv})  # fmt: skip
    return ahead


def summary(state: RunState) -> None:
    """summary.json: the task's main metric for teacher and chosen student, kept, cuts, speed-up, stage times."""
    teacher_metrics, curve, ev = state.read("teacher.json"), state.read("curve.json"), state.read("evaluation.json")
    step = final_step(state)
    chosen = curve["rows"][step]
    rec_file = state.path("recovery.json")
    rec = (state.read("recovery.json").get("students", {}) if rec_file.is_file() else {}).get(str(step))
    recovered, kept_val = (rec["steps"], rec["kept_validation_after"]) if rec else (0, chosen["kept"])
    state.write(
        "summary.json",
        {
            "metric": ev["teacher"]["test"]["metric"],
            "teacher_test_score": ev["teacher"]["test"]["score"],
            "teacher_validation_score": teacher_metrics["validation"]["score"],
            "chosen_step": step,
            "curve_chosen_step": curve["chosen_step"],  # before recovery; differs when the last step passed after it
            "stop_rule": state.cfg.run.stop_rule if rec_file.is_file() else "curve",
            "chosen_blocks": chosen["substituted"],
            "chosen_dropped": chosen.get("dropped", []),  # --drop-blocks: removed outright
            "student_test_score": ev["student"]["test"]["score"],
            "kept_test": ev["kept"],
            "kept_test_ci95": ev["kept_ci95"],
            "n_test": ev["n_test"],
            "kept_validation": kept_val,
            "recovery_steps": recovered,
            "params_cut": ev["params_cut"],
            "gmacs_cut": ev["gmacs_cut"],
            "speedup_b1": ev["speedup_b1"],
            "speedup_b32": ev["speedup_b32"],
            **{k: ev[k] for k in ("probe", "sts") if k in ev},  # embedding task: probe accuracy, STS Spearman
            "baselines_ahead": baselines_ahead(state),
            **({"time_budget": tb} if (tb := time_budget.summary(state)) else {}),
            "seconds_per_stage": {
                **state.timings,
                "total_this_invocation": round(time.perf_counter() - state.started, 2),
            },
            # the seconds above depend on these as much as on the recipe (1.5x between two 2-core CPUs)
            "training_precision": "fp32"
            if state.accelerator.mixed_precision == "no"
            else state.accelerator.mixed_precision,
            "host": measure.machine(),
        },
    )
