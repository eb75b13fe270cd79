"""Deploy a classifier or a sentence-embedding model where people serve models: ONNX export, parity check,
dynamic int8, ONNX Runtime.

An ONNX folder holds ``model.onnx`` (fp32), optionally ``model.int8.onnx``, the tokenizer, a
``config.json`` of the *base* architecture (label names; no remote code needed) and
``blockswap_onnx.json`` (opset, parity, accuracy). A classifier's graph outputs ``logits``; a
sentence-embedding model's outputs ``sentence_embedding`` — pooling and normalisation inside the graph,
so the session alone gives what ``SentenceTransformer.encode`` gives. ``OnnxClassifier`` runs either;
``blockswap predict`` and ``evaluate`` accept such a folder like a PyTorch one.
"""

from __future__ import annotations

import contextlib
import copy
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

from . import arch, embed, export, ort_attention
from .arch import forward_inputs
from .errors import ConfigError, DeployError, MissingDependency
from .files import atomic_dir, write_json

ONNX_FILE, INT8_FILE, META_FILE = "model.onnx", "model.int8.onnx", "blockswap_onnx.json"
OPSET = 18
PARITY_TOLERANCE = 1e-4
EMBEDDING_OUTPUT = "sentence_embedding"


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


def output_name(model) -> str:
    """The graph's one output: a sentence-embedding model's embedding, else a classifier's logits."""
    return EMBEDDING_OUTPUT if isinstance(model, embed.SentenceEncoder) else "logits"


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


def _export_graph(model: PreTrainedModel, tokenizer, path: Path, opset: int, *, fuse_attention: bool) -> int:
    """torch.onnx (dynamo) export with dynamic batch and sequence axes; logits (or the embedding) as the one output.

    With ``fuse_attention`` each plain or compact attention becomes ONNX Runtime's fused Attention operator
    (``ort_attention``); returns how many attentions were fused."""
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

    fused = ort_attention.fused_attention(model) if fuse_attention else contextlib.nullcontext(({}, 0))
    with _quiet(), fused as (table, attentions):
        program = torch.onnx.export(
            Logits(model.eval()).eval(), (), kwargs=kwargs, dynamo=True, opset_version=opset, verbose=False,
            dynamic_shapes={n: {0: batch, 1: seq} for n in names}, input_names=names,
            output_names=[output_name(model)], custom_translation_table=table or None,
        )  # fmt: skip
        program.save(str(path))
    return attentions


def _base_config(model: PreTrainedModel) -> dict:
    """config.json of the base architecture: what ONNX Runtime users read (labels), no remote code."""
    cfg = model.config.to_dict()
    meta = cfg.get(export.META_KEY) or {}
    if meta.get("substituted") or meta.get("vocab"):
        cfg["model_type"] = meta["base_model_type"]
    for key in ("auto_map", "architectures"):
        cfg.pop(key, None)
    return cfg


# ONNX Runtime fusions left out, here and in every session blockswap opens: SkipLayerNormalization (residual add
# + LayerNorm in one kernel) made the offline default teacher slower, not faster, on a 2-core AVX-512 CPU —
# ORT fp32 356.6 -> 328.8 ms, int8 160.9 -> 143.7 ms without it (32 real sentences; docs/results.md "Deploy").
SLOW_FUSIONS = ("SkipLayerNormFusion",)


def optimise_graph(path: Path) -> dict[str, int]:
    """ONNX Runtime's transformer fusions (bias+GELU, LayerNorm, ...; not ``SLOW_FUSIONS``) in place; returns
    what was fused.

    The fusions are pattern matches: what a graph does not match stays as it was. Parity is checked on the result.
    """
    from onnxruntime.transformers import optimizer
    from onnxruntime.transformers.fusion_options import FusionOptions

    options = FusionOptions("bert")
    options.enable_skip_layer_norm = options.enable_bias_skip_layer_norm = False
    with _quiet():
        try:
            opt = optimizer.optimize_model(
                str(path), model_type="bert", num_heads=0, hidden_size=0, opt_level=1, optimization_options=options
            )
        except Exception:  # noqa: BLE001 - a fusion pass that trips on an unfamiliar graph (ModernBERT) leaves it unfused
            return {}
        opt.save_model_to_file(str(path))
    return {k: v for k, v in opt.get_fused_operator_statistics().items() if v}


INT8_SCALES = ("auto", "per-tensor", "per-channel")


def int8_scales_for(model, scales: str) -> str:
    """The weight-scale granularity ``auto`` resolves to: per channel for sentence-embedding models, per tensor
    for classifiers.

    Measured on a 2-core AVX2 CPU without VNNI (benchmarks/int8_modes.py, benchmarks/deploy.py): per channel
    keeps the packaged all-MiniLM-L6-v2's int8 embeddings of the snippets' 1,057 test texts at a mean cosine of
    0.991 to fp32's instead of 0.957 (recall@10 0.839 instead of 0.689) — what an embedding model is for —
    while for classifiers it moves argmax agreement with fp32 by a sentence or two (teacher 97.6 → 99.0 %,
    every-block student 98.9 → 98.7 %) and costs most of int8's speed on small students (every-block int8 over
    ORT fp32 x1.09 per channel vs x1.40 per tensor; benchmarks/results/deploy_per_channel.json, deploy.json).
    """
    if scales not in INT8_SCALES:
        raise ConfigError(f"--int8-scales must be one of {', '.join(INT8_SCALES)}, got {scales!r}")
    if scales != "auto":
        return scales
    return "per-channel" if isinstance(model, embed.SentenceEncoder) else "per-tensor"


def quantize_int8(src: Path, dst: Path, *, scales: str) -> None:
    """Dynamic int8 quantisation of the weights of MatMul/Gemm (ONNX Runtime); ``scales``: ``per-tensor`` (one
    scale per weight matrix) or ``per-channel`` (one per output column) — see ``int8_scales_for``."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    if scales not in ("per-tensor", "per-channel"):
        raise ValueError(f"scales must be per-tensor or per-channel, got {scales!r}")
    import onnx

    # The exporter's intermediate shape annotations are optional; ONNX Runtime before 1.32 re-infers shapes before
    # quantising and refuses the graph where an annotation (traced at the sample's batch of 2) disagrees with what it
    # infers for the fused Attention operator. The quantiser reads the graph without them.
    graph = onnx.load(str(src))
    del graph.graph.value_info[:]
    with _quiet():
        quantize_dynamic(
            graph, str(dst), weight_type=QuantType.QInt8, per_channel=scales == "per-channel",
            extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},  # the fused Attention's outputs
        )  # fmt: skip


@dataclass
class OnnxClassifier:
    """An exported classifier (or sentence-embedding model) in ONNX Runtime: ``logits(batch)`` like a PyTorch
    model's forward — ``(B, C)`` logits, or ``(B, D)`` embeddings when ``output`` is ``sentence_embedding``."""

    session: object
    config: PretrainedConfig
    input_names: list[str]
    output: str = "logits"
    max_seq_length: int | None = None  # an embedding model's truncation length (its sentence-transformers setting)

    @property
    def is_embedding(self) -> bool:
        return self.output == EMBEDDING_OUTPUT

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
        session = ort.InferenceSession(
            str(path), opts, providers=["CPUExecutionProvider"], disabled_optimizers=list(SLOW_FUSIONS)
        )
        names = [i.name for i in session.get_inputs()]
        meta = json.loads((folder / META_FILE).read_text()) if (folder / META_FILE).is_file() else {}
        output = session.get_outputs()[0].name
        return cls(session, AutoConfig.from_pretrained(folder), names, output, meta.get("max_seq_length"))

    def logits(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """(B, C) float logits (or (B, D) embeddings) for a tokenised batch ``{input_ids, attention_mask, ...}``."""
        feed = {}
        for n in self.input_names:
            value = batch[n] if n in batch else torch.zeros_like(batch["input_ids"])
            feed[n] = value.cpu().numpy().astype(np.int64)
        return torch.from_numpy(self.session.run([self.output], feed)[0]).float()


def latency_texts(texts: list[str], n: int = 32) -> list[str]:
    """The ``b32_real`` latency batch (the run's report and ``benchmarks/deploy.py``): the ``n`` longest of the
    longer half of ``texts``, longest first — typical-to-long sentences."""
    return sorted(texts, key=len)[len(texts) // 2 :][::-1][:n]


def ort_latency(
    exports: dict[str, tuple[Path, dict]], *, threads: int, repeats: int, warmup: int = 2, sessions: int = 1
) -> dict:
    """``{name: {case: {ort_fp32|ort_int8: median and spread (ms), batch shape}}}`` for exports given as
    ``name -> (folder, {case: tokenised batch})``: ``sessions`` independent sessions of each export and precision
    as ``OnnxClassifier`` opens them (``threads`` intra-op threads), each timed ``repeats`` times. One session of
    every export and precision is open at a time, all of them and their batches timed in the same shuffled rounds
    (``measure.session_rounds``); the median of the sessions' medians is reported (``measure.session_summary``: one
    session is one draw of its speed, and the sessions of one process can be slow together)."""
    from . import measure

    def open_draw(k: int) -> dict:
        runners = {}
        for name, (folder, cases) in exports.items():
            for runtime, int8 in (("ort_fp32", False), ("ort_int8", True)):
                if int8 and not (Path(folder) / INT8_FILE).is_file():
                    continue
                session = OnnxClassifier.load(folder, int8=int8, threads=threads)
                for case, batch in cases.items():
                    runners[(name, case, runtime)] = lambda o=session, b=batch: o.logits(b)
        return runners

    timed = measure.by_session(measure.session_rounds(open_draw, sessions=sessions, repeats=repeats, warmup=warmup))
    out: dict = {name: {case: {} for case in cases} for name, (_, cases) in exports.items()}
    for (name, case, runtime), stats in timed.items():
        out[name][case][runtime] = {**stats, "batch": list(exports[name][1][case]["input_ids"].shape)}
    return out


def parity(model: PreTrainedModel, onnx_model: OnnxClassifier, batches: list[dict]) -> dict:
    """Largest |logit difference| and argmax agreement between PyTorch and ONNX Runtime on ``batches``.

    For an embedding model the difference is over every embedding value and argmax does not apply (None).
    """
    worst, agree, n, shapes = 0.0, 0, 0, []
    with torch.inference_mode():
        for b in batches:
            ref = model(**forward_inputs(model, b)).logits.float()
            got = onnx_model.logits(b)
            worst = max(worst, (ref - got).abs().max().item())
            agree += int((ref.argmax(-1) == got.argmax(-1)).sum())
            n += len(ref)
            shapes.append(list(b["input_ids"].shape))
    agreement = None if onnx_model.is_embedding else agree / max(n, 1)
    passed = worst <= PARITY_TOLERANCE and (agreement is None or agree == n)
    return {"max_abs_logit_diff": worst, "argmax_agreement": agreement, "n": n, "shapes": shapes,
            "output": onnx_model.output, "tolerance": PARITY_TOLERANCE, "passed": passed}  # fmt: skip


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


def on_cpu(model: PreTrainedModel) -> PreTrainedModel:
    """``model`` itself when it lies on the CPU, else a CPU copy: the export traces it on the CPU and ONNX Runtime's
    parity check compares with it there."""
    if all(p.device.type == "cpu" for p in model.parameters()):
        return model
    return copy.deepcopy(model).cpu()


def _checked_graph(model, tokenizer, folder: Path, opset: int, batches, *, fuse_attention: bool):
    """Export into ``folder`` (which holds the tokenizer and config), apply ONNX Runtime's fusions, check parity;
    the fusions are dropped again where they break it. Returns (attentions fused, fusions, parity)."""
    path = folder / ONNX_FILE
    attentions = _export_graph(model, tokenizer, path, opset, fuse_attention=fuse_attention)
    plain = path.read_bytes()
    fused = optimise_graph(path)
    check = parity(model, OnnxClassifier.load(folder), batches)
    if not check["passed"] and fused:  # keep the fusions only where they keep parity
        path.write_bytes(plain)
        fused, check = {}, parity(model, OnnxClassifier.load(folder), batches)
    return attentions, fused, check


def export_onnx(
    model: PreTrainedModel,
    tokenizer,
    out: str | os.PathLike,
    *,
    check_texts: list[str],
    int8: bool,
    int8_scales: str = "auto",
    opset: int = OPSET,
    fuse_attention: bool = True,
) -> dict:
    """Export ``model`` to ``out`` (atomically), check parity, optionally quantise (``int8_scales``: see
    ``int8_scales_for``); returns the metadata. ``fuse_attention=False`` leaves attention as plain operators
    (what the export wrote before ``ort_attention``; for comparisons).

    Raises DeployError *after* writing the folder (marked failed) when parity fails.
    """
    require_onnx()
    model = on_cpu(model)
    scales = int8_scales_for(model, int8_scales)
    if arch.is_token_model(model):
        raise DeployError("ONNX export covers sequence classifiers; a token classifier stays a PyTorch folder for now")
    out = Path(out)
    longest = min(128, getattr(model.config, "max_position_embeddings", 130) - 2)  # RoBERTa offsets by 2
    batches = parity_batches(tokenizer, check_texts, max_length=longest)
    with atomic_dir(out) as tmp:
        tokenizer.save_pretrained(tmp)
        (tmp / "config.json").write_text(json.dumps(_base_config(model), indent=2, sort_keys=True, default=str))
        attentions, fused, check = _checked_graph(model, tokenizer, tmp, opset, batches, fuse_attention=fuse_attention)
        if not check["passed"] and attentions:  # the fused attention operator only where it keeps parity
            attentions, fused, check = _checked_graph(model, tokenizer, tmp, opset, batches, fuse_attention=False)
        meta = {"opset": opset, "attention_fused": attentions, "ort_fusions": fused, "parity": check}
        if int8:
            quantize_int8(tmp / ONNX_FILE, tmp / INT8_FILE, scales=scales)
            meta["int8_scales"] = scales
        meta["files"] = sorted(p.name for p in tmp.iterdir())
        if isinstance(model, embed.SentenceEncoder):  # what `encode` truncates to: predict does the same
            meta["task"], meta["max_seq_length"] = "embedding", model.st.max_seq_length
        meta["bytes"] = {f: (tmp / f).stat().st_size for f in (ONNX_FILE, INT8_FILE) if (tmp / f).is_file()}
        write_json(tmp / META_FILE, meta)
    if not check["passed"]:
        agreement = "" if check["argmax_agreement"] is None else f", argmax agreement {check['argmax_agreement']:.4f}"
        raise DeployError(
            f"ONNX parity failed for {out}: max |Δ{check['output']}| {check['max_abs_logit_diff']:.2e} "
            f"(tolerance {PARITY_TOLERANCE:g}){agreement}; the export is kept but marked failed in {out / META_FILE}"
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


def embedding_report(model, folder: Path, tokenizer, texts: list[str], *, max_length: int, int8: bool) -> dict:
    """How far each ONNX runtime's embeddings of ``texts`` are from PyTorch's: mean cosine and recall@10 of
    PyTorch's nearest neighbours among the texts (``onnx_fp32_mean_cosine``, ``onnx_int8_recall@10``, ...)."""
    from .loaders import in_input_order, length_batches

    batches = list(length_batches(tokenizer, texts, max_length=max_length))

    def embed_all(forward) -> torch.Tensor:
        with torch.inference_mode():
            return in_input_order(forward, batches)

    ref = embed_all(lambda b: model(**forward_inputs(model, b)).logits.float())
    out = {"metric": "mean_cosine", "n": len(texts)}
    runtimes = {"onnx_fp32": OnnxClassifier.load(folder)}
    if int8:
        runtimes["onnx_int8"] = OnnxClassifier.load(folder, int8=True)
    for name, runtime in runtimes.items():
        agreement = embed.embedding_metrics(embed_all(runtime.logits), ref)
        out[f"{name}_mean_cosine"] = agreement["mean_cosine"]
        out[f"{name}_{agreement['metric']}"] = agreement["score"]
    return out


def export_checked(
    model: PreTrainedModel,
    tokenizer,
    out: Path,
    *,
    dsd,
    max_length: int,
    int8: bool,
    int8_scales: str = "auto",
    fuse_attention: bool = True,
) -> dict:
    """Export, check parity on the test sentences of ``dsd``, evaluate every runtime on its test split (for an
    embedding model: how close each runtime's embeddings of the test texts are to PyTorch's)."""
    from datasets import DatasetDict

    from .loaders import loader, tokenize

    texts, model = list(dsd["test"]["text"]), on_cpu(model)
    meta = export_onnx(
        model, tokenizer, out, check_texts=texts, int8=int8, int8_scales=int8_scales, fuse_attention=fuse_attention
    )
    if isinstance(model, embed.SentenceEncoder):
        meta["test"] = embedding_report(model, out, tokenizer, texts, max_length=max_length, int8=int8)
    else:
        test = tokenize(DatasetDict(test=dsd["test"]), tokenizer, max_length)["test"]
        meta["test"] = accuracy_report(model, out, loader(test, tokenizer, batch_size=64, shuffle=False), int8=int8)
    write_json(out / META_FILE, meta)
    return meta
