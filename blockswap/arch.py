"""The only module that knows Hugging Face internals.

Each supported architecture is one table entry: where its encoder blocks live, how wide they are,
and what a block returns. Everything else in blockswap asks this module.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn
from transformers import AutoConfig, AutoModelForSequenceClassification, PretrainedConfig, PreTrainedModel

from .errors import UnsupportedModelError


@dataclass(frozen=True)
class ArchSpec:
    """How one architecture family keeps and calls its encoder blocks."""

    block_path: str  # attribute path from the *ForSequenceClassification model to its nn.ModuleList
    embeddings_path: str
    hidden_attr: str = "hidden_size"
    eps_attr: str = "layer_norm_eps"
    out_norm_path: str = "output.LayerNorm"  # the LayerNorm that ends each block
    head: str = "sequence"  # how the classifier head reads the final hidden states (see head_logits)
    returns_tuple: bool = False  # transformers 5.x encoder blocks return a bare tensor


# In transformers 5.x every block below is called as block(hidden_states, attention_mask, ...) where
# the mask is None, a 4-D bool mask (sdpa) or a 4-D additive float mask (eager); see compact.keep_mask.
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
}

# Built-in configurations of well-known checkpoints, so structure can be measured offline.
BUILTIN_ARCHS: dict[str, dict] = {
    "bert-base-uncased": {"model_type": "bert"},
    "bert-large-uncased": {
        "model_type": "bert",
        "hidden_size": 1024,
        "num_hidden_layers": 24,
        "num_attention_heads": 16,
        "intermediate_size": 4096,
    },
    "distilbert-base-uncased": {"model_type": "distilbert"},
    "roberta-base": {
        "model_type": "roberta",
        "vocab_size": 50265,
        "max_position_embeddings": 514,
        "type_vocab_size": 1,
        "pad_token_id": 1,
        "bos_token_id": 0,
        "eos_token_id": 2,
        "layer_norm_eps": 1e-5,
    },
    "electra-base-discriminator": {
        "model_type": "electra",
        "embedding_size": 768,
        "hidden_size": 768,
        "num_hidden_layers": 12,
        "num_attention_heads": 12,
        "intermediate_size": 3072,
    },
    "all-minilm-l6-v2": {
        "model_type": "bert",
        "hidden_size": 384,
        "num_hidden_layers": 6,
        "num_attention_heads": 12,
        "intermediate_size": 1536,
    },
}


def supported_families() -> str:
    return ", ".join(sorted(ARCHITECTURES))


def spec_for(config: PretrainedConfig) -> ArchSpec:
    """The table entry for a config's ``model_type``; raises UnsupportedModelError otherwise."""
    model_type = getattr(config, "model_type", None)
    if model_type not in ARCHITECTURES:
        raise UnsupportedModelError(
            f"model type {model_type!r} is not supported; blockswap substitutes blocks of: {supported_families()}"
        )
    return ARCHITECTURES[model_type]


def blocks(model: PreTrainedModel) -> nn.ModuleList:
    """The model's list of encoder blocks, in order."""
    return model.get_submodule(spec_for(model.config).block_path)


def block_path(model: PreTrainedModel) -> str:
    return spec_for(model.config).block_path


def num_blocks(model: PreTrainedModel) -> int:
    return len(blocks(model))


def hidden_size(config: PretrainedConfig) -> int:
    return int(getattr(config, spec_for(config).hidden_attr))


def layer_norm_eps(config: PretrainedConfig) -> float:
    attr = spec_for(config).eps_attr
    return float(getattr(config, attr)) if attr else 1e-12


def embeddings(model: PreTrainedModel) -> nn.Module:
    return model.get_submodule(spec_for(model.config).embeddings_path)


def builtin_config(arch: str, num_labels: int = 2) -> PretrainedConfig:
    """Config of a well-known checkpoint, built offline (no download)."""
    if arch not in BUILTIN_ARCHS:
        raise UnsupportedModelError(f"unknown --arch {arch!r}; choose one of: {', '.join(BUILTIN_ARCHS)}")
    kwargs = dict(BUILTIN_ARCHS[arch])
    model_type = kwargs.pop("model_type")
    return AutoConfig.for_model(model_type, num_labels=num_labels, **kwargs)


def model_from_config(config: PretrainedConfig, *, attn_implementation: str | None = None) -> PreTrainedModel:
    """A randomly initialised classifier of the given architecture."""
    spec_for(config)
    if getattr(config, "model_type", None) != "distilbert" and hasattr(config, "is_decoder") and config.is_decoder:
        raise UnsupportedModelError("decoder configurations are not supported; use an encoder classifier")
    return AutoModelForSequenceClassification.from_config(config, attn_implementation=attn_implementation)


def set_attention(model: PreTrainedModel, implementation: str) -> str:
    """Switch the model's attention kernel (``eager`` or ``sdpa``); returns the previous one."""
    previous = model.config._attn_implementation
    if previous != implementation:
        model.set_attn_implementation(implementation)
    return previous


def output_norm(model: PreTrainedModel, index: int) -> nn.LayerNorm:
    """The LayerNorm that ends original block ``index``."""
    return blocks(model)[index].get_submodule(spec_for(model.config).out_norm_path)


@contextlib.contextmanager
def capture_blocks(
    model: PreTrainedModel, *, detach: bool = True, pre_norm: bool = False
) -> Iterator[dict[int, dict[str, torch.Tensor]]]:
    """Record every block's input, output and mask during the forward passes run inside the context.

    Yields a dict ``{block_index: {"input": (B, S, H), "output": (B, S, H), "mask": any}}`` filled
    by the last forward. Hooks are removed on exit. Substituted blocks are captured too (Hugging
    Face's own ``output_hidden_states`` only records its native block classes). With ``pre_norm``,
    original blocks also record ``"pre_norm"``: the input of their final LayerNorm.
    """
    records: dict[int, dict[str, torch.Tensor]] = {}
    handles = []
    for i, block in enumerate(blocks(model)):
        if pre_norm:

            def norm_hook(module, args, i=i):
                records.setdefault(i, {})["pre_norm"] = args[0].detach() if detach else args[0]

            norm = block.get_submodule(spec_for(model.config).out_norm_path)
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
    """The keys of a tokenised batch that the classifier's forward accepts (labels stripped)."""
    return {k: v for k, v in batch.items() if k in ("input_ids", "attention_mask", "token_type_ids")}


def forward_inputs(model: PreTrainedModel, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop token_type_ids for architectures without them (DistilBERT)."""
    inputs = classifier_inputs(batch)
    if model.config.model_type == "distilbert":
        inputs.pop("token_type_ids", None)
    return inputs


class IdentityBlock(nn.Module):
    """A block that returns its input unchanged (used by drop-one importance and layer dropping)."""

    def __init__(self, return_tuple: bool = False) -> None:
        super().__init__()
        self.return_tuple = return_tuple

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs):
        return (hidden_states,) if self.return_tuple else hidden_states


def head_logits(model: PreTrainedModel, hidden: torch.Tensor) -> torch.Tensor:
    """The classifier head applied to final hidden states ``(B, S, H)`` -> logits ``(B, C)``.

    Used by probes that feed a mix of block outputs to the frozen head.
    """
    head = spec_for(model.config).head
    if head == "pooler":
        return model.classifier(model.dropout(model.bert.pooler(hidden)))
    if head == "pre_classifier":
        pooled = torch.relu(model.pre_classifier(hidden[:, 0]))
        return model.classifier(model.dropout(pooled))
    return model.classifier(hidden)  # RoBERTa / ELECTRA heads take the sequence and pool the first token
