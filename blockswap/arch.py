"""The only module that knows Hugging Face internals.

Each supported architecture is one table entry: where its encoder blocks live, how wide they are,
and what a block returns. Everything else in blockswap asks this module.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn
from transformers import (
    AutoConfig,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
    PretrainedConfig,
    PreTrainedModel,
)

from .errors import UnsupportedModelError
from .known_configs import BUILTIN_ARCHS


@dataclass(frozen=True)
class ArchSpec:
    """How one architecture family keeps and calls its encoder blocks."""

    block_path: str  # attribute path from the *ForSequenceClassification (or token) model to its nn.ModuleList
    embeddings_path: str
    hidden_attr: str = "hidden_size"
    eps_attr: str = "layer_norm_eps"
    out_norm_path: str | None = "output.LayerNorm"  # the LayerNorm that ends each block (None: pre-LN)
    head: str = "sequence"  # how the classifier head reads the final hidden states (see head_logits)
    returns_tuple: bool = False  # block returns (hidden, attention) instead of a bare tensor
    block_attrs: tuple[str, ...] = ()  # attributes the encoder loop reads off each block; substitutes carry them
    padding_masks: bool = True  # every block's mask is a padding mask (the same keys for every query)


# In transformers 5.x every block below is called as block(hidden_states, attention_mask, ...) where
# the mask is None, a 4-D bool mask (sdpa), a 4-D additive float mask (eager) or, for DeBERTa, a
# 4-D 0/1 integer mask; see compact.keep_mask. Extra inputs (MPNet's relative position bias,
# DeBERTa's relative embeddings, ModernBERT's rotary embeddings) arrive as further arguments that a
# substitute does not need: it attends by content only, within the mask it is given (ModernBERT's
# local layers hand their blocks a sliding-window mask, so a substitute there stays local).
ARCHITECTURES: dict[str, ArchSpec] = {
    "bert": ArchSpec("bert.encoder.layer", "bert.embeddings", head="pooler"),
    "roberta": ArchSpec("roberta.encoder.layer", "roberta.embeddings"),
    "xlm-roberta": ArchSpec("roberta.encoder.layer", "roberta.embeddings"),
    "camembert": ArchSpec("roberta.encoder.layer", "roberta.embeddings"),
    "electra": ArchSpec("electra.encoder.layer", "electra.embeddings"),
    "distilbert": ArchSpec(
        "distilbert.transformer.layer",
        "distilbert.embeddings",
        "dim",
        eps_attr="",
        out_norm_path="output_layer_norm",
        head="pre_classifier",
    ),
    "mpnet": ArchSpec("mpnet.encoder.layer", "mpnet.embeddings", returns_tuple=True),
    "deberta-v2": ArchSpec("deberta.encoder.layer", "deberta.embeddings", head="context_pooler", returns_tuple=True),
    "modernbert": ArchSpec(
        "model.layers",
        "model.embeddings",
        eps_attr="norm_eps",
        out_norm_path=None,
        head="forward",
        block_attrs=("attention_type",),  # picks the global or sliding-window mask and rotary table
        padding_masks=False,  # local layers' sliding windows differ per query
    ),
}

# Families that cannot be substituted block by block, and why (one line each).
REFUSED: dict[str, str] = {
    "albert": "ALBERT applies one shared block at every depth, so substituting one application frees no "
    "parameters and its layer loop has no per-depth slot to swap; use a BERT-family model (e.g. MiniLM, DistilBERT)",
}

_DISCOVERED: dict[tuple[type, int], ArchSpec] = {}
_EPS_ATTRS = ("layer_norm_eps", "norm_eps", "layer_norm_epsilon")  # where unlisted configs keep their LayerNorm eps


def supported_families() -> str:
    return ", ".join(sorted(ARCHITECTURES))


def _refuse(model_type: str | None) -> None:
    if model_type in REFUSED:
        raise UnsupportedModelError(f"model type {model_type!r} is not supported: {REFUSED[model_type]}")


def check_config(config: PretrainedConfig) -> None:
    """Refuse, before loading any weights, what cannot be substituted whatever its blocks look like."""
    _refuse(getattr(config, "model_type", None))
    if getattr(config, "is_decoder", False) and config.model_type != "distilbert":
        raise UnsupportedModelError("decoder configurations are not supported; use an encoder classifier")


def spec_for(model: PreTrainedModel | PretrainedConfig) -> ArchSpec:
    """The table entry for a model's ``model_type``, or what discovery finds in an unlisted model.

    Given only a config of an unlisted type, nothing can be discovered: UnsupportedModelError.
    """
    config = model if isinstance(model, PretrainedConfig) else model.config
    model_type = getattr(config, "model_type", None)
    _refuse(model_type)
    if model_type in ARCHITECTURES:
        return ARCHITECTURES[model_type]
    if isinstance(model, PretrainedConfig):
        raise UnsupportedModelError(
            f"model type {model_type!r} is not in blockswap's table ({supported_families()}) and no model was given to inspect"
        )
    key = (type(model), int(getattr(config, "num_hidden_layers", -1)))
    if key not in _DISCOVERED:
        _DISCOVERED[key] = discover(model)
    return _DISCOVERED[key]


def is_decoder_block(params: list[str], config) -> bool:
    """Whether a block called with ``params`` is a decoder's: it takes a key/value cache, unless it is a BERT-style
    layer that can also cross-attend (``encoder_hidden_states``, no ``use_cache``) in a model that is no decoder.
    transformers 5.17 gives ERNIE's and Megatron-BERT's encoder layers a ``past_key_values`` argument, later
    versions a ``cache``; GPT-2's and Llama's blocks take ``use_cache``."""
    if "use_cache" in params or "layer_past" in params:
        return True
    if not any(p in params for p in ("past_key_values", "past_key_value", "cache")):
        return False
    return "encoder_hidden_states" not in params or bool(getattr(config, "is_decoder", False))


def discover(model: PreTrainedModel) -> ArchSpec:
    """Find an unlisted encoder's blocks: the one ``nn.ModuleList`` of ``num_hidden_layers`` blocks of one class.

    The head is reached through the model's own forward (``head="forward"``), and whether a block
    returns a tuple is seen by running it once on a dummy batch.
    """
    model_type = getattr(model.config, "model_type", None)
    n = getattr(model.config, "num_hidden_layers", None)
    found = [
        name
        for name, m in model.named_modules()
        if isinstance(m, nn.ModuleList)
        and n
        and len(m) == n
        and len({type(b) for b in m}) == 1
        and not isinstance(m[0], (nn.ModuleList, nn.ModuleDict, nn.Sequential))
    ]
    how = (
        f"add an ArchSpec entry for {model_type!r} to blockswap/arch.py ARCHITECTURES "
        f"(supported: {supported_families()})"
    )
    if len(found) != 1:
        what = "no" if not found else f"{len(found)} candidate"
        raise UnsupportedModelError(
            f"model type {model_type!r}: found {what} list of {n} encoder blocks of one class; {how}"
        )
    params = list(inspect.signature(model.get_submodule(found[0])[0].forward).parameters)
    if is_decoder_block(params, model.config):
        raise UnsupportedModelError(
            f"model type {model_type!r}: its blocks take a key/value cache (a decoder); blockswap substitutes encoder blocks"
        )
    if params[:2] != ["hidden_states", "attention_mask"]:
        raise UnsupportedModelError(
            f"model type {model_type!r}: its blocks are called as ({', '.join(params[:3])}, ...), not "
            f"(hidden_states, attention_mask, ...); {how}"
        )
    embeddings = getattr(model.base_model, "embeddings", None) or model.get_input_embeddings()
    emb_path = next(name for name, m in model.named_modules() if m is embeddings)
    probe = {"input_ids": torch.full((1, 4), 5, dtype=torch.long), "attention_mask": torch.ones(1, 4, dtype=torch.long)}
    seen: list = []
    handle = model.get_submodule(found[0])[0].register_forward_hook(lambda m, a, out: seen.append(out))
    try:
        with torch.no_grad():
            model(**probe)
    except Exception as e:  # noqa: BLE001 - any failure of an unknown model's forward is reported, not raised
        raise UnsupportedModelError(f"model type {model_type!r}: a test forward failed ({e}); {how}") from None
    finally:
        handle.remove()
    if not seen or not isinstance(seen[0][0] if isinstance(seen[0], tuple) else seen[0], torch.Tensor):
        raise UnsupportedModelError(f"model type {model_type!r}: its blocks do not return hidden states; {how}")
    eps_attr = next((a for a in _EPS_ATTRS if hasattr(model.config, a)), "")
    return ArchSpec(
        found[0],
        emb_path,
        eps_attr=eps_attr,
        out_norm_path=None,
        head="forward",
        returns_tuple=isinstance(seen[0], tuple),
    )


def blocks(model: PreTrainedModel) -> nn.ModuleList:
    """The model's list of encoder blocks, in order."""
    return model.get_submodule(spec_for(model).block_path)


def block_path(model: PreTrainedModel) -> str:
    return spec_for(model).block_path


def num_blocks(model: PreTrainedModel) -> int:
    return len(blocks(model))


def hidden_size(config: PretrainedConfig) -> int:
    attr = ARCHITECTURES[config.model_type].hidden_attr if config.model_type in ARCHITECTURES else "hidden_size"
    return int(getattr(config, attr))


def layer_norm_eps(config: PretrainedConfig) -> float:
    if config.model_type in ARCHITECTURES:
        attr = ARCHITECTURES[config.model_type].eps_attr
    else:
        attr = next((a for a in _EPS_ATTRS if hasattr(config, a)), "")
    return float(getattr(config, attr)) if attr else 1e-12


def returns_tuple(model: PreTrainedModel) -> bool:
    return spec_for(model).returns_tuple


def embeddings(model: PreTrainedModel) -> nn.Module:
    return model.get_submodule(spec_for(model).embeddings_path)


def builtin_config(arch: str, num_labels: int = 2) -> PretrainedConfig:
    """Config of a well-known checkpoint, built offline (no download)."""
    if arch not in BUILTIN_ARCHS:
        raise UnsupportedModelError(f"unknown --arch {arch!r}; choose one of: {', '.join(BUILTIN_ARCHS)}")
    kwargs = dict(BUILTIN_ARCHS[arch])
    model_type = kwargs.pop("model_type")
    return AutoConfig.for_model(model_type, num_labels=num_labels, **kwargs)


# The heads blockswap trains and loads: a label per text (or a score: num_labels 1), a tag per token.
HEADS = {"sequence": AutoModelForSequenceClassification, "token": AutoModelForTokenClassification}


def head_kind(architectures: list[str] | None) -> str:
    """``token`` for a saved *ForTokenClassification, else ``sequence``."""
    return "token" if any(a.endswith("ForTokenClassification") for a in architectures or []) else "sequence"


def is_token_model(model: PreTrainedModel) -> bool:
    return type(model).__name__.endswith("ForTokenClassification")


def model_from_config(
    config: PretrainedConfig, *, attn_implementation: str | None = None, head: str | None = None
) -> PreTrainedModel:
    """A randomly initialised classifier of the given architecture (unlisted types go through discovery).

    ``head``: ``sequence`` or ``token``; by default what the config's ``architectures`` name.
    """
    check_config(config)
    head = head or head_kind(getattr(config, "architectures", None))
    try:
        model = HEADS[head].from_config(config, attn_implementation=attn_implementation)
    except ValueError as e:
        raise UnsupportedModelError(f"model type {config.model_type!r} has no {head} classifier: {e}") from None
    spec_for(model)
    return model


# Self-attention modules of the plain kind — softmax(q k^T / sqrt(d)) v over linear q, k, v projections,
# content only, within a padding mask — named as (query, key, value, output or None, head-count attribute):
# BERT / RoBERTa / XLM-R / CamemBERT / ELECTRA's *SelfAttention, DistilBERT's. MPNet (a relative position
# bias), DeBERTa (disentangled attention) and ModernBERT (rotary, local windows) use other names: never matched.
_PLAIN_ATTENTION = (
    ("query", "key", "value", None, "num_attention_heads"),
    ("q_lin", "k_lin", "v_lin", "out_lin", "n_heads"),
)


def plain_attention_parts(module: nn.Module) -> tuple[nn.Linear, nn.Linear, nn.Linear, nn.Module | None, int] | None:
    """``(q, k, v, out, heads)`` of a plain self-attention module (see ``_PLAIN_ATTENTION``), else None.

    ``out`` is the output projection when the module applies it itself (DistilBERT), else None.
    """
    for q, k, v, out, heads in _PLAIN_ATTENTION:
        parts = [getattr(module, name, None) for name in (q, k, v)]
        n = getattr(module, heads, None)
        if not all(isinstance(p, nn.Linear) for p in parts) or not isinstance(n, int) or n <= 0:
            continue
        width = parts[0].out_features
        config = getattr(module, "config", None)
        plain = (
            width % n == 0
            and all(p.out_features == width for p in parts)
            and abs(getattr(module, "scaling", (width // n) ** -0.5) - (width // n) ** -0.5) < 1e-9
            and not getattr(module, "is_decoder", False)
            and getattr(config, "position_embedding_type", "absolute") in (None, "absolute")
        )
        return (*parts, getattr(module, out) if out else None, n) if plain else None
    return None


def padding_masks_only(config: PretrainedConfig) -> bool:
    """Whether every block of this (listed) family attends within a padding mask only; False when unknown."""
    spec = ARCHITECTURES.get(getattr(config, "model_type", None))
    return spec is not None and spec.padding_masks


def set_attention(model: PreTrainedModel, implementation: str) -> str:
    """Switch the model's attention kernel (``eager`` or ``sdpa``); returns the previous one."""
    previous = model.config._attn_implementation
    if previous != implementation:
        model.set_attn_implementation(implementation)
    return previous


def output_norm(model: PreTrainedModel, index: int) -> nn.LayerNorm | None:
    """The LayerNorm that ends original block ``index`` (None for pre-LN encoders such as ModernBERT)."""
    path = spec_for(model).out_norm_path
    return blocks(model)[index].get_submodule(path) if path else None


@contextlib.contextmanager
def capture_blocks(
    model: PreTrainedModel, *, detach: bool = True, pre_norm: bool = False
) -> Iterator[dict[int, dict[str, torch.Tensor]]]:
    """Record every block's input, output and mask during the forward passes run inside the context.

    Yields a dict ``{block_index: {"input": (B, S, H), "output": (B, S, H), "mask": any}}`` filled
    by the last forward. Hooks are removed on exit. Substituted blocks are captured too (Hugging
    Face's own ``output_hidden_states`` only records its native block classes). With ``pre_norm``,
    original blocks of post-LN encoders also record ``"pre_norm"``: the input of their final LayerNorm.
    """
    records: dict[int, dict[str, torch.Tensor]] = {}
    handles = []
    norm_path = spec_for(model).out_norm_path
    for i, block in enumerate(blocks(model)):
        if pre_norm and norm_path:

            def norm_hook(module, args, i=i):
                records.setdefault(i, {})["pre_norm"] = args[0].detach() if detach else args[0]

            norm = block.get_submodule(norm_path)
            handles.append(norm.register_forward_pre_hook(norm_hook))

        def hook(module, args, kwargs, output, i=i):
            hidden = args[0] if args else kwargs["hidden_states"]
            mask = args[1] if len(args) > 1 else kwargs.get("attention_mask")
            out = output[0] if isinstance(output, tuple) else output
            if detach:
                hidden, out = hidden.detach(), out.detach()
            records.setdefault(i, {}).update(input=hidden, output=out, mask=mask)

        handles.append(block.register_forward_hook(hook, with_kwargs=True))
    try:
        yield records
    finally:
        for h in handles:
            h.remove()


def classifier_inputs(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The keys of a tokenised batch that a classifier's forward may accept (labels stripped)."""
    return {k: v for k, v in batch.items() if k in ("input_ids", "attention_mask", "token_type_ids")}


def forward_inputs(model: PreTrainedModel, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The batch keys ``model.forward`` accepts: token_type_ids only where it takes them (not DistilBERT, MPNet, ModernBERT)."""
    inputs = classifier_inputs(batch)
    if not _takes_token_types(type(model)):
        inputs.pop("token_type_ids", None)
    return inputs


@functools.cache
def _takes_token_types(cls: type) -> bool:  # once per class: forward_inputs runs on every training step
    return "token_type_ids" in inspect.signature(cls.forward).parameters


class IdentityBlock(nn.Module):
    """A block that returns its input unchanged (used by drop-one importance and layer dropping)."""

    def __init__(self, return_tuple: bool = False) -> None:
        super().__init__()
        self.return_tuple = return_tuple

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs):
        return (hidden_states, None) if self.return_tuple else hidden_states


def put_block(model: PreTrainedModel, index: int, block: nn.Module) -> None:
    """Install ``block`` as block ``index``, carrying over the attributes the encoder loop reads, on the device
    and in the floating dtype of the block it replaces (a substitute built or loaded on the CPU joins a model on
    the GPU)."""
    layers = blocks(model)
    for name in spec_for(model).block_attrs:
        setattr(block, name, getattr(layers[index], name))
    floating = (p for m in (layers[index], model) for p in m.parameters() if p.is_floating_point())
    old = next(floating, None)  # the replaced block's (an identity has none: then the model's)
    if old is not None:
        block.to(device=old.device, dtype=old.dtype)
    layers[index] = block


def remove_blocks(model: PreTrainedModel, indices: list[int]) -> None:
    """Remove blocks ``indices`` of ``model`` in place (layer dropping): the block list, the layer counts and the
    per-layer fields of its config (ModernBERT's ``layer_types``), so the model saves as a plain, shorter one of
    its class that loads without blockswap."""
    n, gone = num_blocks(model), set(indices)
    kept = [b for i, b in enumerate(blocks(model)) if i not in gone]
    parent_path, _, name = block_path(model).rpartition(".")
    parent = model.get_submodule(parent_path)
    setattr(parent, name, nn.ModuleList(kept))
    config = model.config
    for attr in ("num_hidden_layers", "n_layers"):
        if hasattr(config, attr):
            setattr(config, attr, len(kept))
    per_layer = getattr(config, "layer_types", None)
    if isinstance(per_layer, (list, tuple)) and len(per_layer) == n:
        config.layer_types = [t for i, t in enumerate(per_layer) if i not in gone]
    if hasattr(parent, "n_layers"):  # DistilBERT's Transformer keeps a count
        parent.n_layers = len(kept)


def identity_block(model: PreTrainedModel) -> IdentityBlock:
    """An identity block shaped to return what ``model``'s blocks return."""
    return IdentityBlock(returns_tuple(model))


@contextlib.contextmanager
def identity_blocks(model: PreTrainedModel) -> Iterator[None]:
    """Every block of ``model`` replaced by an identity inside the context (restored on exit): a forward then
    runs only the embeddings, the mask code and the head."""
    layers = blocks(model)
    originals = list(layers)
    try:
        for i in range(len(originals)):
            put_block(model, i, identity_block(model))
        yield
    finally:
        for i, block in enumerate(originals):
            layers[i] = block


@torch.no_grad()
def block_masks(model: PreTrainedModel, batch: dict[str, torch.Tensor]) -> dict[int, object]:
    """The attention mask each block of ``model`` receives for ``batch`` (in whatever format the encoder
    builds it: per-layer sliding windows included), from one forward through identity blocks."""
    with identity_blocks(model), capture_blocks(model) as rec:
        model(**forward_inputs(model, batch))
    return {i: rec[i]["mask"] for i in range(len(rec))}


def head_logits(model: PreTrainedModel, hidden: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The classifier head applied to final-block hidden states ``(B, S, H)`` -> logits ``(B, C)``.

    Used by probes that feed a mix of block outputs to the frozen head. Heads that pool with the
    mask or normalise after the last block (ModernBERT, unlisted models) are reached by running the
    model with its last block's output replaced by ``hidden``; ``batch`` supplies the inputs.
    """
    classifier = type(model).__name__.endswith("ForSequenceClassification")
    head = spec_for(model).head if classifier else "forward"  # token classifiers, sentence encoders
    if head == "pooler":
        return model.classifier(model.dropout(model.bert.pooler(hidden)))
    if head == "pre_classifier":
        pooled = torch.relu(model.pre_classifier(hidden[:, 0]))
        return model.classifier(model.dropout(pooled))
    if head == "context_pooler":
        return model.classifier(model.dropout(model.pooler(hidden)))
    if head == "forward":  # through identity blocks (the last one returning ``hidden``): the blocks never run
        with identity_blocks(model):
            last = blocks(model)[-1]
            hook = last.register_forward_hook(
                lambda m, a, out: (hidden, *out[1:]) if isinstance(out, tuple) else hidden
            )
            try:
                return model(**forward_inputs(model, batch)).logits
            finally:
                hook.remove()
    return model.classifier(hidden)  # RoBERTa / ELECTRA / MPNet heads take the sequence and pool the first token
