"""The compact substitute block: down-projection -> small encoder -> up-projection, plus residual; and the
word embeddings of a pruned vocabulary (``PrunedEmbedding``).

This module imports nothing but ``torch``: its source is copied verbatim into every exported model
folder (``modeling_blockswap.py``) so that a saved model loads where blockswap is not installed.
"""

import contextlib
import math
from dataclasses import dataclass, field, fields

import torch
from torch import nn
from torch.nn import functional as F

_ACTIVATIONS = {"gelu": F.gelu, "relu": F.relu, "silu": F.silu, "tanh": torch.tanh}


def _help(text: str, default):
    return field(default=default, metadata={"help": text})


@dataclass(frozen=True)
class CompactSpec:
    """Shape of a compact substitute: hidden -> ``hidden`` -> ``layers`` x (``heads``, ``ffn``) -> hidden.

    The one description of the block: the ``compact`` section of the run config, the argument of
    ``CompactBlock`` and the ``compact`` entry saved in a substituted model's config.json.
    """

    hidden: int = _help("width of the small encoder (hidden -> this -> hidden; --task embedding: 192)", 128)
    layers: int = _help("transformer layers inside the substitute (--task embedding: 1)", 2)
    heads: int = _help("attention heads inside the substitute", 2)
    ffn: int | None = _help(
        "feed-forward width inside the substitute (default 4 x hidden; --task embedding: 384)", None
    )
    dropout: float = _help("dropout inside the substitute (0: it underfits its block, and dropout is slow on CPU)", 0.0)
    activation: str = _help(
        "feed-forward activation: relu, gelu, silu, tanh (relu since session 19: no accuracy difference shown against "
        "gelu over 4 datasets x 3 seeds, and faster in ONNX Runtime; --task embedding: gelu)",
        "relu",
    )
    norm: str = _help(
        "'none' (the thesis's block) or 'post': end with a LayerNorm initialised from the block's own", "none"
    )

    def __post_init__(self) -> None:
        for name in ("hidden", "heads", "ffn"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"compact.{name} must be positive, got {value}")
        if self.layers < 0:
            raise ValueError(f"compact.layers must be >= 0, got {self.layers}")
        if self.hidden % self.heads:
            raise ValueError(f"compact hidden size {self.hidden} is not divisible by {self.heads} heads")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"compact.dropout must be in [0, 1), got {self.dropout}")
        if self.activation not in _ACTIVATIONS:
            raise ValueError(f"compact.activation {self.activation!r} unknown; use {', '.join(_ACTIVATIONS)}")
        if self.norm not in ("post", "none"):
            raise ValueError(f"compact.norm {self.norm!r} unknown; use post or none")

    @property
    def ffn_size(self) -> int:
        return self.ffn if self.ffn is not None else 4 * self.hidden

    @classmethod
    def from_dict(cls, values: dict) -> "CompactSpec":
        """From a saved dict; keys this version does not know (e.g. an older ``init``) are ignored, and a dict saved
        before the activation was recorded is the GELU every substitute had then (the default is ReLU now)."""
        known = {f.name for f in fields(cls)}
        return cls(**{"activation": "gelu", **{k: v for k, v in values.items() if k in known}})


def keep_mask(attention_mask: torch.Tensor | None, batch: int, seq: int) -> torch.Tensor | None:
    """Normalise any mask format a Hugging Face encoder hands to its blocks.

    Accepts ``None``, a 2-D ``(batch, seq)`` 0/1 mask, or a 4-D ``(batch, 1, seq|1, seq)`` mask that
    is boolean (True = attend) or additive float (0 = attend, large negative = masked).
    Returns a boolean mask broadcastable to ``(batch, heads, seq, seq)`` (True = attend), or None.
    """
    if attention_mask is None:
        return None
    m = attention_mask
    if m.dim() == 2:  # (batch, seq) of 1/0
        m = (m > 0)[:, None, None, :]
    elif m.dtype == torch.bool:
        pass
    elif m.is_floating_point():  # additive: 0 where attended, finfo.min (or -inf) where masked
        m = m > torch.finfo(m.dtype).min / 2
    else:  # integer 4-D mask of 1/0
        m = m > 0
    if m.shape[0] not in (1, batch) or m.shape[-1] != seq:
        raise ValueError(f"attention mask of shape {tuple(attention_mask.shape)} does not fit ({batch}, {seq})")
    return m


class CompactAttention(nn.Module):
    """Multi-head self-attention written with explicit matmuls so operator-level MAC counters see them."""

    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads, self.head_dim = heads, dim // heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
        return self.out(attend(self.qkv(x), keep, self.heads, self.dropout))  # (B, S, h)


_KERNEL = ["auto"]  # how compact attention computes: see attention_kernel()


@contextlib.contextmanager
def attention_kernel(kind: str):
    """Within it, compact attention runs as ``kind``: "explicit" — written-out matmuls, which operator-level MAC
    counters see one by one (as the eager attention they count for the teacher); "fused" — one
    ``scaled_dot_product_attention`` call (on a GPU a fused kernel that never writes out every head's scores);
    "auto", the default — fused on accelerators, explicit on the CPU (where fused measured no faster in fp32
    and slower under bf16 autocast). The same arithmetic either way."""
    if kind not in ("auto", "explicit", "fused"):
        raise ValueError(f"attention kernel {kind!r} unknown; use auto, explicit or fused")
    before, _KERNEL[0] = _KERNEL[0], kind
    try:
        yield
    finally:
        _KERNEL[0] = before


def attend(qkv: torch.Tensor, keep: torch.Tensor | None, heads: int, dropout=None) -> torch.Tensor:
    """Multi-head attention of packed projections ``qkv`` (B, S, 3D) — query, key, value, each ``heads`` heads —
    within ``keep`` (``keep_mask``'s form, or None) -> (B, S, D)."""
    b, s, d3 = qkv.shape
    d = d3 // 3
    q, k, v = qkv.view(b, s, 3, heads, d // heads).permute(2, 0, 3, 1, 4)  # 3 x (B, nh, S, hd)
    p = dropout.p if dropout is not None and dropout.training else 0.0
    if _KERNEL[0] == "fused" or (_KERNEL[0] == "auto" and q.device.type != "cpu"):
        # an additive mask with a finite minimum, as below: a row with no real key (padding query) stays finite
        bias = (
            None
            if keep is None
            else torch.zeros(keep.shape, dtype=q.dtype, device=q.device).masked_fill(~keep, torch.finfo(q.dtype).min)
        )
        return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=p).transpose(1, 2).reshape(b, s, d)
    scores = (q @ k.transpose(-1, -2)) / math.sqrt(d // heads)  # (B, nh, S, S)
    if keep is not None:
        # masked_fill with a finite minimum: a row with no real key (padding query) stays finite
        scores = scores.masked_fill(~keep, torch.finfo(scores.dtype).min)
    probs = scores.softmax(dim=-1)
    probs = dropout(probs) if dropout is not None else probs
    return (probs @ v).transpose(1, 2).reshape(b, s, d)  # (B, S, D)


class CompactLayer(nn.Module):
    """Pre-LayerNorm transformer encoder layer at the compact width."""

    def __init__(self, dim: int, heads: int, ffn: int, dropout: float, activation: str, eps: float) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(dim, eps=eps)
        self.attn = CompactAttention(dim, heads, dropout)
        self.ln2 = nn.LayerNorm(dim, eps=eps)
        self.fc1 = nn.Linear(dim, ffn)
        self.fc2 = nn.Linear(ffn, dim)
        self.act = _ACTIVATIONS[activation]
        self.dropout = nn.Dropout(dropout)

    def forward(self, z: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
        z = z + self.dropout(self.attn(self.ln1(z), keep))  # (B, S, h)
        return z + self.dropout(self.fc2(self.dropout(self.act(self.fc1(self.ln2(z))))))


class CompactBlock(nn.Module):
    """Drop-in substitute for one encoder block: ``x + up(encoder(down(x)))``.

    Called like the block it replaces: ``block(hidden_states, attention_mask, *ignored, **ignored)``
    with ``hidden_states`` of shape ``(batch, seq, hidden)``; returns a tensor of that shape (or a
    ``(hidden, None)`` when ``return_tuple``, as MPNet and DeBERTa blocks return). Every operation is per sample, so one sample's output never
    depends on the rest of the batch, and masked (padding) keys are never attended to.
    """

    def __init__(
        self,
        hidden_size: int,
        spec: CompactSpec | None = None,
        *,
        layer_norm_eps: float = 1e-12,
        return_tuple: bool = False,
    ) -> None:
        super().__init__()
        spec = spec or CompactSpec()
        if hidden_size <= 0:
            raise ValueError(f"hidden_size must be positive, got {hidden_size}")
        self.spec = spec
        self.return_tuple = return_tuple
        h = spec.hidden
        self.down = nn.Linear(hidden_size, h)
        self.layers = nn.ModuleList(
            CompactLayer(h, spec.heads, spec.ffn_size, spec.dropout, spec.activation, layer_norm_eps)
            for _ in range(spec.layers)
        )
        self.up = nn.Linear(h, hidden_size)
        # Post-LN encoders (BERT & co.) end every block with a LayerNorm: a per-token rescaling of all
        # `hidden` dims that no rank-h residual can express, so the substitute may end with one too.
        self.norm = nn.LayerNorm(hidden_size, eps=layer_norm_eps) if spec.norm == "post" else None

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None, *args, **kwargs):
        b, s, _ = hidden_states.shape  # (B, S, H)
        keep = keep_mask(attention_mask, b, s)
        z = self.down(hidden_states)  # (B, S, h)
        for layer in self.layers:
            z = layer(z, keep)
        out = hidden_states + self.up(z)  # (B, S, H): residual, never broadcast across samples
        if self.norm is not None:
            out = self.norm(out)
        return (out, None) if self.return_tuple else out  # (hidden, attention weights) for MPNet / DeBERTa

    @torch.no_grad()
    def zero_contribution(self) -> None:
        """Zero the residual branch: the block becomes the identity (or just its LayerNorm)."""
        self.up.weight.zero_()
        self.up.bias.zero_()


def compact_from_meta(meta: dict) -> CompactBlock:
    """A CompactBlock shaped as recorded in a saved model's ``config.blockswap``."""
    return CompactBlock(
        meta["hidden_size"],
        CompactSpec.from_dict(meta["compact"]),
        layer_norm_eps=meta["layer_norm_eps"],
        return_tuple=meta.get("return_tuple", False),
    )


class PrunedEmbedding(nn.Module):
    """Word embeddings of a pruned vocabulary behind the unchanged tokenizer: ``(batch, seq)`` ids -> ``(batch, seq, dim)``.

    ``weight`` holds only the kept tokens' rows; ``rows`` maps every original id to one of them: a kept token
    to its own row (its vector is exactly the old one), a dropped token to one chosen when pruning (``blockswap.vocab.nearest_rows``).
    Called like ``nn.Embedding``; ``num_embeddings`` stays the tokenizer's vocabulary size.
    """

    def __init__(self, vocab_size: int, kept: int, dim: int, padding_idx: int | None = None):
        super().__init__()
        self.num_embeddings, self.embedding_dim, self.padding_idx = vocab_size, dim, padding_idx
        self.weight = nn.Parameter(torch.zeros(kept, dim))
        self.register_buffer("rows", torch.zeros(vocab_size, dtype=torch.long))

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(self.rows[input_ids], self.weight)


def pruned_embedding_like(old: nn.Module, vocab: dict) -> PrunedEmbedding:
    """An (untrained) ``PrunedEmbedding`` to stand in for the word embeddings ``old``, as ``vocab`` records it."""
    return PrunedEmbedding(old.num_embeddings, vocab["kept"], old.embedding_dim, old.padding_idx)
