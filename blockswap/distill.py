"""Distillation loops: linear initialisation, block-wise hidden-state distillation, end-to-end KD."""

from __future__ import annotations

import dataclasses
import itertools
import math
import time
from collections.abc import Iterable

import torch
from accelerate import Accelerator
from torch import nn
from tqdm.auto import tqdm
from transformers import PreTrainedModel

from . import arch
from .arch import capture_blocks, forward_inputs
from .compact import CompactBlock
from .config import DistillConfig
from .errors import TrainingDiverged
from .losses import distillation_loss, masked_mse, task_loss
from .substitute import block_origins
from .teacher_cache import TeacherCache
from .train import StepBudget, adamw, full_precision, linear_schedule


@torch.no_grad()
def init_linear(
    teacher: PreTrainedModel, substitutes: dict[int, CompactBlock], batches: Iterable[dict[str, torch.Tensor]]
) -> None:
    """Start each substitute as the best rank-h linear approximation of its block's residual.

    down = top-h principal directions of the block input; up = least-squares map from those
    coordinates to (output - input); the inner layers' residual branches start at zero, so the
    substitute's initial function is exactly that linear map. A substitute ending in a LayerNorm
    fits the input of the block's own final LayerNorm instead (which that norm maps to the output).
    Statistics stream over ``batches``.
    """
    teacher.eval()
    device = next(teacher.parameters()).device
    stats: dict[int, dict[str, torch.Tensor]] = {}
    with capture_blocks(teacher, pre_norm=True) as rec:
        for b in batches:
            b = {k: v.to(device) for k, v in b.items()}
            teacher(**forward_inputs(teacher, b))
            m = b["attention_mask"].bool()
            for i in substitutes:
                x = rec[i]["input"][m].double()  # (N, H) real tokens
                target = rec[i]["pre_norm"] if substitutes[i].norm is not None else rec[i]["output"]
                d = target[m].double() - x
                s = stats.setdefault(i, {"n": 0, "sx": 0, "sd": 0, "xx": 0, "xd": 0})
                s["n"] += len(x)
                s["sx"] = s["sx"] + x.sum(0)
                s["sd"] = s["sd"] + d.sum(0)
                s["xx"] = s["xx"] + x.T @ x
                s["xd"] = s["xd"] + x.T @ d
    for i, block in substitutes.items():
        s = stats[i]
        n = s["n"]
        mx, md = s["sx"] / n, s["sd"] / n
        cxx = s["xx"] / n - torch.outer(mx, mx)
        cxd = s["xd"] / n - torch.outer(mx, md)
        evals, evecs = torch.linalg.eigh(cxx)
        h = block.down.out_features
        v = evecs[:, -h:]  # (H, h) top principal directions
        lam = evals[-h:].clamp(min=1e-6)
        up_w = (v.T @ cxd).T / lam  # (H, h): least squares in PCA coordinates
        block.down.weight.copy_(v.T.float())
        block.down.bias.copy_((-v.T @ mx).float())
        block.up.weight.copy_(up_w.float())
        block.up.bias.copy_(md.float())
        for layer in block.layers:
            for lin in (layer.attn.out, layer.fc2):
                lin.weight.zero_()
                lin.bias.zero_()


def steps_for(epochs: float, loader) -> int:
    """Optimiser steps of ``epochs`` passes over ``loader`` (at least one)."""
    return max(1, math.ceil(epochs * len(loader)))


class _Bundle(nn.Module):
    """All substitutes as one module, so one (possibly distributed) forward trains them together."""

    def __init__(self, substitutes: dict[int, CompactBlock]) -> None:
        super().__init__()
        self.blocks = list(substitutes)
        self.subs = nn.ModuleList(substitutes.values())

    def forward(self, inputs: list[torch.Tensor], masks: list, cascade: bool = False) -> list[torch.Tensor]:
        """Each substitute's output for its block's teacher input; with ``cascade``, a substitute whose previous
        block is substituted too is fed that substitute's output instead (detached), as in the student."""
        outs: dict[int, torch.Tensor] = {}
        for i, sub, x, m in zip(self.blocks, self.subs, inputs, masks, strict=True):
            o = sub(outs[i - 1].detach() if cascade and i - 1 in outs else x, m)
            outs[i] = o[0] if isinstance(o, tuple) else o  # MPNet / DeBERTa blocks return (hidden, None)
        return list(outs.values())


def _check(loss: torch.Tensor, what: str, step: int) -> None:
    if not torch.isfinite(loss):
        raise TrainingDiverged(f"{what} loss became {loss.item()} at step {step}")


def blockwise(
    teacher: PreTrainedModel,
    substitutes: dict[int, CompactBlock],
    loader,
    cfg: DistillConfig,
    *,
    accelerator: Accelerator,
    cache: TeacherCache | None = None,
    budget: StepBudget | None = None,
) -> dict[int, list[float]]:
    """Train every substitute at once on masked MSE to its block's output, fed its block's teacher input or, as
    ``cfg.blockwise_inputs`` says, the previous substitute's output (``_Bundle``; ``auto``, which ``Config``
    resolves by task, feeds the teacher's inputs here).

    One teacher forward per batch captures all block inputs/outputs (from ``cache`` once the texts have
    been seen). ``budget``: the steps (default ``blockwise_epochs`` of ``loader``), possibly cut short by a
    deadline; it holds the steps taken afterwards. Returns per-block mean MSE in each quarter of training
    (first and last entries compare).
    """
    teacher.eval()
    substitutes = dict(sorted(substitutes.items()))  # block order: a cascaded input comes from the block before
    modules = _Bundle(substitutes)
    modules.train()
    opt = adamw(modules.parameters(), lr=cfg.blockwise_lr, weight_decay=0.0)
    budget = (budget or StepBudget(steps_for(cfg.blockwise_epochs, loader))).agreed(accelerator)
    sched = linear_schedule(opt, budget, max_warmup=50)
    teacher = teacher.to(accelerator.device)  # frozen: placed, never wrapped for gradient sync
    modules, opt, sched, loader = accelerator.prepare(modules, opt, sched, loader)
    sums = {i: [0.0] * 4 for i in substitutes}
    counts = [0] * 4
    bar = tqdm(
        total=budget.total, desc="block-wise distillation", disable=None if accelerator.is_main_process else True
    )
    batches = itertools.chain.from_iterable(itertools.repeat(loader))
    device = accelerator.device
    step = 0
    while step < budget.total:
        b = {k: v.to(device) for k, v in next(batches).items()}
        inputs, outputs, _, masks = teacher_outputs(teacher, b, accelerator, cache, masks=True)
        cascade = cfg.blockwise_inputs == "cascade" or (cfg.blockwise_inputs == "alternate" and step % 2 == 1)
        preds = modules([inputs[i] for i in substitutes], [masks[i] for i in substitutes], cascade)
        losses = [
            masked_mse(p.float(), outputs[i].float(), b["attention_mask"])
            for p, i in zip(preds, substitutes, strict=True)
        ]
        loss = torch.stack(losses).sum()
        _check(loss, "block-wise", step)
        accelerator.backward(loss)
        opt.step()
        sched.step()
        opt.zero_grad()
        quarter = min(3, step * 4 // budget.total)
        for i, part in zip(substitutes, losses, strict=True):
            sums[i][quarter] += part.item()
        counts[quarter] += 1
        step += 1
        budget.done(step)
        bar.total = budget.total
        bar.update(1)
        bar.set_postfix(mse=f"{loss.item() / len(losses):.4f}")
    bar.close()
    modules.eval()
    return {i: [v / c for v, c in zip(sums[i], counts, strict=True) if c] for i in substitutes}


def _param_groups(student: PreTrainedModel, cfg: DistillConfig) -> list[dict]:
    """Substitutes at lr_substitute; kept blocks and head at lr_kept (or frozen); embeddings optionally frozen."""
    sub_ids = {id(p) for b in arch.blocks(student) if isinstance(b, CompactBlock) for p in b.parameters()}
    emb_ids = {id(p) for p in arch.embeddings(student).parameters()} if cfg.freeze_embeddings else set()
    for p in arch.embeddings(student).parameters() if cfg.freeze_embeddings else ():
        p.requires_grad_(False)
    subs = [p for p in student.parameters() if id(p) in sub_ids]
    kept = [p for p in student.parameters() if id(p) not in sub_ids and id(p) not in emb_ids]
    groups = [{"params": subs, "lr": cfg.lr_substitute}]
    if cfg.freeze_kept:
        for p in kept:
            p.requires_grad_(False)
    else:
        groups.append({"params": kept, "lr": cfg.lr_kept})
    return groups


def teacher_outputs(teacher, b: dict, accelerator, cache: TeacherCache | None, *, masks: bool = False):
    """``(inputs, outputs, logits, masks)`` of the frozen teacher on batch ``b``: each block's input and output
    ``(B, S, H)``, the logits, and (with ``masks``) each block's attention mask, else None.

    Served from ``cache`` when every text of ``b`` is in it (the masks then come from a forward through
    identity blocks); when only some are, the teacher runs on the others alone; otherwise on the whole batch.
    What the teacher computed goes into the cache while its budget lasts.
    """
    got = cache.get(b) if cache is not None else None
    if got is None and cache is not None and cache.enabled and cache.rows:
        got = _partly_cached(teacher, b, accelerator, cache)
    if got is not None:
        hidden, logits = got
        if masks:
            with accelerator.autocast():
                return hidden[:-1], hidden[1:], logits, arch.block_masks(teacher, b)
        return hidden[:-1], hidden[1:], logits, None
    with torch.no_grad(), accelerator.autocast(), capture_blocks(teacher) as rec:
        logits = teacher(**forward_inputs(teacher, b)).logits
    n = len(rec)
    inputs, outputs = [rec[i]["input"] for i in range(n)], [rec[i]["output"] for i in range(n)]
    if cache is not None and cache.enabled:
        if all(torch.equal(inputs[i + 1], outputs[i]) for i in range(n - 1)):  # one residual stream
            cache.put(b, [inputs[0], *outputs], logits)
        else:  # an encoder that transforms between blocks: its block inputs cannot be rebuilt from outputs
            cache.enabled = False
    return inputs, outputs, logits, ([rec[i]["mask"] for i in range(n)] if masks else None)


def _partly_cached(teacher, b: dict, accelerator, cache: TeacherCache):
    """``cache.get`` for a batch some of whose texts are cached: the teacher runs on the missing ones only
    (same padded width). None when none or all are missing, or when their outputs cannot be cached."""
    missing = cache.missing(b)
    size = b["input_ids"].shape[0]
    if not missing or len(missing) == size:
        return None
    index = torch.tensor(missing, device=b["input_ids"].device)
    sub = {k: v.index_select(0, index) if torch.is_tensor(v) and v.dim() and v.shape[0] == size else v
           for k, v in b.items()}  # fmt: skip
    with torch.no_grad(), accelerator.autocast(), capture_blocks(teacher) as rec:
        logits = teacher(**forward_inputs(teacher, sub)).logits
    n = len(rec)
    inputs, outputs = [rec[i]["input"] for i in range(n)], [rec[i]["output"] for i in range(n)]
    if not all(torch.equal(inputs[i + 1], outputs[i]) for i in range(n - 1)):
        return None  # not one residual stream: the whole-batch path switches the cache off
    rows = cache.put(sub, [inputs[0], *outputs], logits)
    return None if rows is None else cache.get(b, fresh=dict(zip(missing, rows, strict=True)))


def matched_blocks(student: PreTrainedModel, every_block: bool) -> list[tuple[int, int]]:
    """(student block, teacher block) pairs whose outputs the hidden-state loss matches: the substitutes', or with
    ``every_block`` every block's but an identity standing in for a dropped one (its output is its input); after
    blocks were removed for real, each block is paired with the teacher block it stands for."""
    origins = block_origins(student)
    return [
        (i, origins[i])
        for i, b in enumerate(arch.blocks(student))
        if isinstance(b, CompactBlock) or (every_block and not isinstance(b, arch.IdentityBlock))
    ]


def _kd_step(student, s_model, t_model, b: dict, pairs: list, cfg: DistillConfig, accelerator, cache=None):
    """One batch's distillation loss: the teacher's logits and block outputs against the student's (``pairs``:
    ``matched_blocks``)."""
    _, t_out, t_logits, _ = teacher_outputs(t_model, b, accelerator, cache)
    with capture_blocks(s_model, detach=False) as s_rec:
        s_logits = student(**forward_inputs(s_model, b)).logits
    return distillation_loss(
        student_logits=s_logits,
        teacher_logits=t_logits.float(),
        labels=b["labels"],
        student_hidden=[s_rec[i]["output"].float() for i, _ in pairs],
        teacher_hidden=[t_out[j].float() for _, j in pairs],
        mask=b["attention_mask"],
        temperature=cfg.temperature,
        alpha=cfg.alpha,
        beta=cfg.beta,
        similarity=cfg.similarity_weight,
    )


def end_to_end(
    student: PreTrainedModel,
    teacher: PreTrainedModel,
    loader,
    cfg: DistillConfig,
    *,
    steps: int,
    accelerator: Accelerator,
    desc: str = "end-to-end distillation",
    match_all_blocks: bool = False,
    labels_only: bool = False,
    cache: TeacherCache | None = None,
    budget: StepBudget | None = None,
) -> list[dict[str, float]]:
    """KD of the assembled student: KL(T) + alpha CE + beta MSE at substituted block outputs (every block's
    output but a dropped one's with ``match_all_blocks``: ``matched_blocks``). With ``labels_only``: the task's
    own loss on the labels, no teacher at all (the seed thesis's procedure).

    Substitutes train at ``lr_substitute``; kept original weights at ``lr_kept`` (or frozen). ``budget``: the
    ``steps``, possibly cut short by a deadline (it holds the steps taken afterwards).
    Returns the loss parts of every 10th step.
    """
    budget = (budget or StepBudget(steps)).agreed(accelerator)
    if budget.total <= 0:
        return []
    teacher.eval()
    # No dropout: the student fits the teacher's function in a few dozen steps, far too few to
    # overfit, and on CPU dropout's random masks were a quarter of a substitute's block-wise step.
    student.eval()
    pairs = matched_blocks(student, match_all_blocks)
    opt = adamw(_param_groups(student, cfg), weight_decay=0.0)
    sched = linear_schedule(opt, budget, max_warmup=20)
    t_model = teacher.to(accelerator.device)  # frozen: placed, never wrapped for gradient sync
    s_model = student
    student, opt, sched, loader = accelerator.prepare(student, opt, sched, loader)
    batches = itertools.chain.from_iterable(itertools.repeat(loader))
    device = accelerator.device
    log: list[dict[str, float]] = []
    bar = tqdm(total=budget.total, desc=desc, disable=None if accelerator.is_main_process else True)
    step = 0
    while step < budget.total:
        b = {k: v.to(device) for k, v in next(batches).items()}
        if labels_only:
            loss = task_loss(student(**forward_inputs(s_model, b)).logits, b["labels"])
            parts = {"ce": loss.item(), "total": loss.item()}
        else:
            loss, parts = _kd_step(student, s_model, t_model, b, pairs, cfg, accelerator, cache)
        _check(loss, "end-to-end", step)
        accelerator.backward(loss)
        opt.step()
        sched.step()
        opt.zero_grad()
        budget.done(step + 1)
        if step % 10 == 0 or step == budget.total - 1:
            log.append({"step": step, **parts})
        step += 1
        bar.total = budget.total
        bar.update(1)
        bar.set_postfix(loss=f"{parts['total']:.4f}")
    bar.close()
    full_precision(accelerator, student).eval()  # evaluated and saved in fp32
    for p in s_model.parameters():
        p.requires_grad_(True)
    return log


def recover(
    student: PreTrainedModel,
    teacher: PreTrainedModel,
    loader,
    cfg: DistillConfig,
    *,
    accelerator: Accelerator,
    cache: TeacherCache | None = None,
    deadline: float | None = None,
) -> dict:
    """Recovery: ``cfg.recovery_epochs`` of end-to-end KD with every weight of ``student`` trainable (in place;
    with ``recovery_freeze_kept`` only the substitutes train, the original weights stay as they are), ended
    early to finish by ``deadline`` (``time.monotonic()``) when one is given.

    KL(T) + alpha CE + ``recovery_beta`` MSE at every block's output, AdamW at ``recovery_lr`` with
    warm-up and linear decay. Returns the budget spent (steps, batch, examples, seconds; the planned steps
    when a deadline cut them) and the loss log.
    """
    budget = StepBudget(steps_for(cfg.recovery_epochs, loader), deadline)
    rcfg = dataclasses.replace(
        cfg, freeze_kept=cfg.recovery_freeze_kept, lr_kept=cfg.recovery_lr, lr_substitute=cfg.recovery_lr,
        beta=cfg.recovery_beta,
    )  # fmt: skip
    student.requires_grad_(True)
    started = time.perf_counter()
    log = end_to_end(
        student, teacher, loader, rcfg, steps=budget.planned, accelerator=accelerator, desc="recovery",
        match_all_blocks=True, cache=cache, budget=budget,
    )  # fmt: skip
    seconds = time.perf_counter() - started
    spent = {"steps": budget.total, "batch_size": cfg.batch_size, "examples": budget.total * cfg.batch_size}
    if deadline is not None:
        spent["planned_steps"] = budget.planned
    return {**spent, "seconds": seconds, "log": log}
