"""Deploy a classifier where people serve models: ONNX export, parity check, dynamic int8, ONNX Runtime.

An ONNX folder holds ``model.onnx`` (fp32), optionally ``model.int8.onnx``, the tokenizer, a
``config.json`` of the *base* architecture (label names; no remote code needed) and
``blockswap_onnx.json`` (opset, parity, accuracy). ``OnnxClassifier`` runs it; ``blockswap predict``
and ``evaluate`` accept such a folder like a PyTorch one.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from transformers import PretrainedConfig, PreTrainedModel

from . import arch, export
from .arch import forward_inputs
from .errors import DeployError, MissingDependency
from .files import atomic_dir, write_json

ONNX_FILE, INT8_FILE, META_FILE = "model.onnx", "model.int8.onnx", "blockswap_onnx.json"
OPSET = 18
PARITY_TOLERANCE = 1e-4


def require_onnx() -> None:
    """Refuse in one line when the optional ONNX dependencies are missing."""
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError as e:
        raise MissingDependency(
            f"ONNX export needs the 'onnx' extra ({e.name} is missing): pip install 'blockswap[onnx]'"
        ) from None


def is_onnx_folder(path: str | os.PathLike) -> bool:
    return (Path(path) / ONNX_FILE).is_file()


def _input_names(model: PreTrainedModel) -> list[str]:
    probe = {"input_ids": 0, "attention_mask": 0, "token_type_ids": 0}
    return list(forward_inputs(model, probe))


@contextlib.contextmanager
def _quiet():
    """The exporter and quantiser print progress, warnings and log lines that say nothing to a user."""
    loggers = [logging.getLogger(), logging.getLogger("torch.onnx")]
    levels = [lg.level for lg in loggers]
    try:
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def _export_graph(model: PreTrainedModel, tokenizer, path: Path, opset: int) -> None:
    """torch.onnx (dynamo) export with dynamic batch and sequence axes; logits as the one output."""
    names = _input_names(model)
    sample = tokenizer(["a short one", "a somewhat longer example sentence, padded"], padding=True, return_tensors="pt")
    kwargs = {n: sample[n] if n in sample else torch.zeros_like(sample["input_ids"]) for n in names}
    batch, seq = torch.export.Dim("batch"), torch.export.Dim("sequence")

    class Logits(torch.nn.Module):  # one tensor out, keyword inputs in the model's own order
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, input_ids, attention_mask, token_type_ids=None):
            extra = {} if token_type_ids is None else {"token_type_ids": token_type_ids}
            return self.inner(input_ids=input_ids, attention_mask=attention_mask, **extra).logits

    with _quiet():
        program = torch.onnx.export(
            Logits(model.eval()).eval(), (), kwargs=kwargs, dynamo=True, opset_version=opset, verbose=False,
            dynamic_shapes={n: {0: batch, 1: seq} for n in names}, input_names=names, output_names=["logits"],
        )  # fmt: skip
        program.save(str(path))


def _base_config(model: PreTrainedModel) -> dict:
    """config.json of the base architecture: what ONNX Runtime users read (labels), no remote code."""
    cfg = model.config.to_dict()
    meta = cfg.get(export.META_KEY) or {}
    if meta.get("substituted"):
        cfg["model_type"] = meta["base_model_type"]
    for key in ("auto_map", "architectures"):
        cfg.pop(key, None)
    return cfg


def optimise_graph(path: Path) -> dict[str, int]:
    """ONNX Runtime's transformer fusions (bias+GELU, skip+LayerNorm, ...) in place; returns what was fused.

    The fusions are pattern matches: what a graph does not match stays as it was, substitutes included
    (their attention is written with plain matmuls). Parity is checked on the result.
    """
    from onnxruntime.transformers import optimizer

    with _quiet():
        try:
            opt = optimizer.optimize_model(str(path), model_type="bert", num_heads=0, hidden_size=0, opt_level=1)
        except Exception:  # noqa: BLE001 - a fusion pass that trips on an unfamiliar graph (ModernBERT) leaves it unfused
            return {}
        opt.save_model_to_file(str(path))
    return {k: v for k, v in opt.get_fused_operator_statistics().items() if v}


def quantize_int8(src: Path, dst: Path) -> None:
    """Dynamic int8 quantisation of the weights of MatMul/Gemm (ONNX Runtime)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with _quiet():
        quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8)


@dataclass
class OnnxClassifier:
    """An exported classifier in ONNX Runtime: ``logits(batch)`` like a PyTorch model's forward."""

    session: object
    config: PretrainedConfig
    input_names: list[str]

    @classmethod
    def load(cls, folder: str | os.PathLike, *, int8: bool = False, threads: int | None = None) -> OnnxClassifier:
        require_onnx()
        import onnxruntime as ort
        from transformers import AutoConfig

        folder = Path(folder)
        path = folder / (INT8_FILE if int8 else ONNX_FILE)
        if not path.is_file():
            raise DeployError(f"{path} does not exist; export with `blockswap export {folder} --onnx ...`")
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
        session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        names = [i.name for i in session.get_inputs()]
        return cls(session, AutoConfig.from_pretrained(folder), names)

    def logits(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """(B, C) float logits for a tokenised batch ``{input_ids, attention_mask, ...}`` of (B, S)."""
        feed = {}
        for n in self.input_names:
            value = batch[n] if n in batch else torch.zeros_like(batch["input_ids"])
            feed[n] = value.cpu().numpy().astype(np.int64)
        return torch.from_numpy(self.session.run(["logits"], feed)[0]).float()


def parity(model: PreTrainedModel, onnx_model: OnnxClassifier, batches: list[dict]) -> dict:
    """Largest |logit difference| and argmax agreement between PyTorch and ONNX Runtime on ``batches``."""
    worst, agree, n, shapes = 0.0, 0, 0, []
    with torch.inference_mode():
        for b in batches:
            ref = model(**forward_inputs(model, b)).logits.float()
            got = onnx_model.logits(b)
            worst = max(worst, (ref - got).abs().max().item())
            agree += int((ref.argmax(-1) == got.argmax(-1)).sum())
            n += len(ref)
            shapes.append(list(b["input_ids"].shape))
    passed = worst <= PARITY_TOLERANCE and agree == n
    return {"max_abs_logit_diff": worst, "argmax_agreement": agree / max(n, 1), "n": n, "shapes": shapes,
            "tolerance": PARITY_TOLERANCE, "passed": passed}  # fmt: skip


def parity_batches(tokenizer, texts: list[str], *, max_length: int = 128) -> list[dict]:
    """Real sentences at batch sizes 1, 7 and 32, short to long, plus joined ones up to ``max_length`` tokens."""
    texts = sorted(texts, key=len)
    long_texts = [" ".join(texts[i::7]) for i in range(7)]  # several sentences each: reaches max_length
    shortest_word = min(texts[0].split() or [texts[0]], key=len)  # [CLS] word [SEP]: 3 tokens
    groups = [
        [shortest_word],
        texts[:1],
        texts[-1:],
        texts[:: max(1, len(texts) // 7)][:7],
        texts[-32:],
        long_texts,
        long_texts[:1],
    ]

    def enc(group):
        out = tokenizer(group, truncation=True, max_length=max_length, padding=True, return_tensors="pt")
        return dict(out)

    return [enc(g) for g in groups if g]


def export_onnx(
    model: PreTrainedModel, tokenizer, out: str | os.PathLike, *, check_texts: list[str], int8: bool, opset: int = OPSET
) -> dict:
    """Export ``model`` to ``out`` (atomically), check parity, optionally quantise; returns the metadata.

    Raises DeployError *after* writing the folder (marked failed) when parity fails.
    """
    require_onnx()
    if arch.is_token_model(model):
        raise DeployError("ONNX export covers sequence classifiers; a token classifier stays a PyTorch folder for now")
    out = Path(out)
    longest = min(128, getattr(model.config, "max_position_embeddings", 130) - 2)  # RoBERTa offsets by 2
    batches = parity_batches(tokenizer, check_texts, max_length=longest)
    with atomic_dir(out) as tmp:
        _export_graph(model, tokenizer, tmp / ONNX_FILE, opset)
        tokenizer.save_pretrained(tmp)
        (tmp / "config.json").write_text(json.dumps(_base_config(model), indent=2, sort_keys=True, default=str))
        plain = (tmp / ONNX_FILE).read_bytes()
        fused = optimise_graph(tmp / ONNX_FILE)
        check = parity(model, OnnxClassifier.load(tmp), batches)
        if not check["passed"] and fused:  # keep the fusions only where they keep parity
            (tmp / ONNX_FILE).write_bytes(plain)
            fused, check = {}, parity(model, OnnxClassifier.load(tmp), batches)
        if int8:
            quantize_int8(tmp / ONNX_FILE, tmp / INT8_FILE)
        meta = {"opset": opset, "ort_fusions": fused, "files": sorted(p.name for p in tmp.iterdir()), "parity": check}
        meta["bytes"] = {f: (tmp / f).stat().st_size for f in (ONNX_FILE, INT8_FILE) if (tmp / f).is_file()}
        write_json(tmp / META_FILE, meta)
    if not check["passed"]:
        raise DeployError(
            f"ONNX parity failed for {out}: max |Δlogit| {check['max_abs_logit_diff']:.2e} "
            f"(tolerance {PARITY_TOLERANCE:g}), argmax agreement {check['argmax_agreement']:.4f}; "
            f"the export is kept but marked failed in {out / META_FILE}"
        )
    return meta


def accuracy_report(model: PreTrainedModel, folder: Path, loader, *, int8: bool) -> dict:
    """The task's main metric (``metric``: accuracy, Pearson) in PyTorch, ONNX fp32 and (with ``int8``) ONNX int8,
    and, for classifiers, int8's argmax agreement with fp32. Keys ``torch_<metric>``, ``onnx_fp32_<metric>``, ...
    """
    from .evaluate import metrics, predict

    logits, labels = predict(model, loader)
    main = metrics(logits, labels, logits.shape[-1])
    name = main["metric"]
    out = {"metric": name, f"torch_{name}": main["score"], "n": len(labels)}
    fp32, _ = predict(OnnxClassifier.load(folder), loader)
    out[f"onnx_fp32_{name}"] = metrics(fp32, labels, logits.shape[-1])["score"]
    if int8:
        q, _ = predict(OnnxClassifier.load(folder, int8=True), loader)
        out[f"onnx_int8_{name}"] = metrics(q, labels, logits.shape[-1])["score"]
        if logits.shape[-1] > 1:
            out["int8_argmax_agreement_with_fp32"] = (q.argmax(-1) == fp32.argmax(-1)).double().mean().item()
    return out


def export_checked(model: PreTrainedModel, tokenizer, out: Path, *, dsd, max_length: int, int8: bool) -> dict:
    """Export, check parity on the test sentences of ``dsd``, evaluate every runtime on its test split."""
    from datasets import DatasetDict

    from .loaders import loader, tokenize

    meta = export_onnx(model, tokenizer, out, check_texts=list(dsd["test"]["text"]), int8=int8)
    test = tokenize(DatasetDict(test=dsd["test"]), tokenizer, max_length)["test"]
    meta["test"] = accuracy_report(model, out, loader(test, tokenizer, batch_size=64, shuffle=False), int8=int8)
    write_json(out / META_FILE, meta)
    return meta
