"""Attention as one ONNX Runtime operator at export: ``com.microsoft.Attention`` (``QAttention`` once int8).

Traced op by op, one attention layer is about fifteen small ONNX operators (projection, split, reshapes,
transposes, scaled matmul, mask, softmax, matmul, transpose back); ONNX Runtime's fusion passes do not
recognise them in today's torch exports. Within ``fused_attention(model)`` every compact substitute's attention
and every plain Hugging Face self-attention (``arch.plain_attention_parts``: BERT, RoBERTa, ELECTRA, XLM-R,
DistilBERT, ...) is traced as one custom torch op that the exporter writes as ONNX Runtime's fused operator —
the teacher's attention as well as the student's, so same-runtime speed-ups compare like with like. The op's
eager reference is the compact attention's arithmetic (a Hugging Face module's to float rounding), and
``deploy`` keeps the fused graph only where the parity check passes.
"""

from __future__ import annotations

import contextlib
import functools
import types
from collections.abc import Iterator

import torch
from torch import nn

from . import arch
from .compact import CompactAttention, attend, keep_mask

OP_NAME = "blockswap::fused_attention"


def _reference(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, mask: torch.Tensor, heads: int) -> torch.Tensor:
    """``x`` (B, S, H_in) through packed projections ``w`` (H_in, 3D), ``b`` (3D) and multi-head attention over
    the keys where ``mask`` (B, S) is non-zero -> (B, S, D): what ONNX Runtime's Attention computes."""
    return attend(x @ w + b, (mask > 0)[:, None, None, :], heads)


@functools.cache
def _translation_table() -> dict:
    """Register (once per process) the torch op and ONNX Runtime's Attention schema; the exporter's table."""
    import onnx
    import onnxscript

    op = torch.library.custom_op(OP_NAME, _reference, mutates_args=())
    op.register_fake(lambda x, w, b, mask, heads: x.new_empty(x.shape[0], x.shape[1], w.shape[1] // 3))
    if not onnx.defs.has("Attention", "com.microsoft"):  # the onnx package knows only the standard domain
        param, schema = onnx.defs.OpSchema.FormalParameter, onnx.defs.OpSchema
        onnx.defs.register_schema(
            schema(
                "Attention", "com.microsoft", 1,
                inputs=[param("input", "T"), param("weights", "T"), param("bias", "T"), param("mask_index", "M")],
                outputs=[param("output", "T")],
                type_constraints=[("T", ["tensor(float)"], ""), ("M", ["tensor(int32)"], "")],
                attributes=[schema.Attribute("num_heads", schema.AttrType.INT, "attention heads")],
            )
        )  # fmt: skip
    ms = onnxscript.values.Opset("com.microsoft", 1)

    def to_onnx(x, w, b, mask, heads: int):
        return ms.Attention(x, w, b, mask, num_heads=heads)

    return {torch.ops.blockswap.fused_attention.default: to_onnx}


def _keys(keep: torch.Tensor | None, x: torch.Tensor) -> torch.Tensor:
    """(B, S) int32, 1 = a real key, from a padding mask in ``keep_mask``'s form (only padding masks reach here)."""
    b, s, _ = x.shape
    if keep is None:
        return torch.ones(b, s, dtype=torch.int32, device=x.device)
    return keep.any(-2)[:, 0, :].expand(b, s).to(torch.int32)


def _compact_forward(self: CompactAttention, x: torch.Tensor, keep) -> torch.Tensor:
    ctx = torch.ops.blockswap.fused_attention(x, self.qkv.weight.T, self.qkv.bias, _keys(keep, x), self.heads)
    return self.out(ctx)


def _plain_forward(self: nn.Module, hidden_states: torch.Tensor, attention_mask=None, *args, **kwargs):
    q, k, v, out, heads = arch.plain_attention_parts(self)
    w = torch.cat([q.weight, k.weight, v.weight]).T  # (H_in, 3D): folded into one constant by the exporter
    b = torch.cat([p.bias if p.bias is not None else p.weight.new_zeros(p.out_features) for p in (q, k, v)])
    keys = _keys(keep_mask(attention_mask, *hidden_states.shape[:2]), hidden_states)
    ctx = torch.ops.blockswap.fused_attention(hidden_states, w, b, keys, heads)
    return (out(ctx) if out is not None else ctx), None  # (attention output, weights) as the module returns


@contextlib.contextmanager
def fused_attention(model: nn.Module) -> Iterator[tuple[dict, int]]:
    """Within: ``model``'s compact and plain attentions run as the fused op; yields the exporter's
    ``custom_translation_table`` (empty when nothing was fused) and how many attentions were. The model is
    restored on exit.

    Only families whose blocks attend within padding masks (``arch.padding_masks_only``) are fused: the op
    takes one key mask for all queries.
    """
    patched = []
    fusable = arch.padding_masks_only(model.config)
    for module in model.modules() if fusable else ():
        if isinstance(module, CompactAttention):
            forward = _compact_forward
        elif arch.plain_attention_parts(module) is not None:
            forward = _plain_forward
        else:
            continue
        module.forward = types.MethodType(forward, module)
        patched.append(module)
    try:
        yield (_translation_table() if patched else {}), len(patched)
    finally:
        for module in patched:
            del module.forward
