"""Tiny random models of every supported architecture: no downloads, milliseconds per forward."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoConfig

from blockswap import adapters
from blockswap.config import CompactConfig

ARCHS = ["bert", "distilbert", "roberta", "electra", "xlm-roberta"]
TINY_COMPACT = CompactConfig(hidden=8, layers=2, heads=2, ffn=16, dropout=0.0)


def tiny_config(model_type: str = "bert", *, layers: int = 3, num_labels: int = 2, **extra):
    kw = dict(
        vocab_size=99,
        hidden_size=32,
        num_hidden_layers=layers,
        num_attention_heads=4,
        intermediate_size=37,
        max_position_embeddings=64,
        num_labels=num_labels,
    )
    if model_type == "distilbert":
        kw = dict(
            vocab_size=99,
            dim=32,
            n_layers=layers,
            n_heads=4,
            hidden_dim=37,
            max_position_embeddings=64,
            num_labels=num_labels,
        )
    if model_type == "electra":
        kw["embedding_size"] = 32
    if model_type in ("roberta", "xlm-roberta"):
        kw["pad_token_id"] = 1
    kw.update(extra)
    return AutoConfig.for_model(model_type, **kw)


def tiny_model(model_type: str = "bert", *, seed: int = 0, **kw):
    torch.manual_seed(seed)
    return adapters.model_from_config(tiny_config(model_type, **kw)).eval()


def padded_batch(lengths=(7, 4, 2), seq=9, seed=1):
    """Token ids with right padding: sample i has lengths[i] real tokens."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 99, (len(lengths), seq), generator=g)
    mask = torch.zeros_like(ids)
    for i, n in enumerate(lengths):
        mask[i, :n] = 1
        ids[i, n:] = 0
    return ids, mask


@pytest.fixture(params=ARCHS)
def arch(request):
    return request.param
