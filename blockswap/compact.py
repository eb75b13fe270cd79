"""The compact substitute block: down-projection -> small encoder -> up-projection, plus residual.

This module imports nothing but ``torch``: its source is copied verbatim into every exported model
folder (``modeling_blockswap.py``) so that a saved model loads where blockswap is not installed.
"""

import math

import torch
from torch import nn
from torch.nn import functional as F

_ACTIVATIONS = {"gelu": F.gelu, "relu": F.relu, "silu": F.silu, "tanh": torch.tanh}


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
        if dim % heads:
            raise ValueError(f"compact hidden size {dim} is not divisible by {heads} heads")
        self.heads, self.head_dim = heads, dim // heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
        b, s, d = x.shape  # (B, S, h)
        q, k, v = self.qkv(x).view(b, s, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)  # 3 x (B, nh, S, hd)
        scores = (q @ k.transpose(-1, -2)) / math.sqrt(self.head_dim)  # (B, nh, S, S)
        if keep is not None:
            # masked_fill with a finite minimum: a row with no real key (padding query) stays finite
            scores = scores.masked_fill(~keep, torch.finfo(scores.dtype).min)
        probs = self.dropout(scores.softmax(dim=-1))
        ctx = (probs @ v).transpose(1, 2).reshape(b, s, d)  # (B, S, h)
        return self.out(ctx)


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
    1-tuple when ``return_tuple``). Every operation is per sample, so one sample's output never
    depends on the rest of the batch, and masked (padding) keys are never attended to.
    """

    def __init__(
        self,
        hidden_size: int,
        *,
        compact_hidden: int = 128,
        layers: int = 2,
        heads: int = 2,
        ffn: int = 512,
        dropout: float = 0.1,
        activation: str = "gelu",
        layer_norm_eps: float = 1e-12,
        post_norm: bool = False,
        return_tuple: bool = False,
    ) -> None:
        super().__init__()
        for name, value in (
            ("hidden_size", hidden_size),
            ("compact_hidden", compact_hidden),
            ("heads", heads),
            ("ffn", ffn),
        ):
            if value <= 0:
                raise ValueError(f"{name} must be positive, got {value}")
        if layers < 0:
            raise ValueError(f"layers must be >= 0, got {layers}")
        if activation not in _ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}; choose one of {sorted(_ACTIVATIONS)}")
        self.return_tuple = return_tuple
        self.down = nn.Linear(hidden_size, compact_hidden)
        self.layers = nn.ModuleList(
            CompactLayer(compact_hidden, heads, ffn, dropout, activation, layer_norm_eps) for _ in range(layers)
        )
        self.up = nn.Linear(compact_hidden, hidden_size)
        # Post-LN encoders (BERT & co.) end every block with a LayerNorm: a per-token rescaling of all
        # `hidden` dims that no rank-h residual can express, so the substitute may end with one too.
        self.norm = nn.LayerNorm(hidden_size, eps=layer_norm_eps) if post_norm else None

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None, *args, **kwargs):
        b, s, _ = hidden_states.shape  # (B, S, H)
        keep = keep_mask(attention_mask, b, s)
        z = self.down(hidden_states)  # (B, S, h)
        for layer in self.layers:
            z = layer(z, keep)
        out = hidden_states + self.up(z)  # (B, S, H): residual, never broadcast across samples
        if self.norm is not None:
            out = self.norm(out)
        return (out,) if self.return_tuple else out

    @torch.no_grad()
    def zero_contribution(self) -> None:
        """Zero the residual branch: the block becomes the identity (or just its LayerNorm)."""
        self.up.weight.zero_()
        self.up.bias.zero_()


def compact_from_meta(meta: dict) -> CompactBlock:
    """A CompactBlock shaped as recorded in a saved model's ``config.blockswap``."""
    c = meta["compact"]
    return CompactBlock(
        meta["hidden_size"],
        compact_hidden=c["hidden"],
        layers=c["layers"],
        heads=c["heads"],
        ffn=c["ffn"] if c.get("ffn") else 4 * c["hidden"],
        dropout=c["dropout"],
        activation=c["activation"],
        layer_norm_eps=meta["layer_norm_eps"],
        post_norm=c.get("norm", "none") == "post",
        return_tuple=meta.get("return_tuple", False),
    )
