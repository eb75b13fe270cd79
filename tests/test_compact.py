import dataclasses

import pytest
import torch

from blockswap import arch
from blockswap.compact import CompactBlock, CompactSpec, attention_kernel, keep_mask
from blockswap.errors import ConfigError
from blockswap.substitute import drop_blocks, substitute, substituted_blocks

from .conftest import IDENTITY_COMPACT, TINY_COMPACT, padded_batch, set_attention_or_skip, tiny_model


def _randomise(model):
    """Give every substitute a non-zero contribution (fresh blocks already are; be explicit)."""
    g = torch.Generator().manual_seed(3)
    for b in arch.blocks(model):
        if isinstance(b, CompactBlock):
            for p in b.parameters():
                p.data = torch.randn(p.shape, generator=g) * 0.3


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_zero_contribution_substitute_reproduces_teacher_without_that_block(family, attn):
    teacher = tiny_model(family)
    set_attention_or_skip(teacher, family, attn)
    student = substitute(teacher, [1], IDENTITY_COMPACT).eval()
    for b in arch.blocks(student):
        if isinstance(b, CompactBlock):
            b.zero_contribution()
    reference = drop_blocks(teacher, [1]).eval()
    ids, mask = padded_batch()
    with torch.no_grad():
        got = student(input_ids=ids, attention_mask=mask).logits
        want = reference(input_ids=ids, attention_mask=mask).logits
        full = teacher(input_ids=ids, attention_mask=mask).logits
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    assert (got - full).abs().max() > 1e-6, "dropping a random block should change the logits"


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_sample_logits_do_not_depend_on_the_rest_of_the_batch(family, attn):
    teacher = tiny_model(family)
    set_attention_or_skip(teacher, family, attn)
    student = substitute(teacher, [0, 2], TINY_COMPACT).eval()
    _randomise(student)
    ids, mask = padded_batch(lengths=(9, 5, 3))
    with torch.no_grad():
        batched = student(input_ids=ids, attention_mask=mask).logits
        for i, n in enumerate((9, 5, 3)):
            alone = student(input_ids=ids[i : i + 1, :n], attention_mask=mask[i : i + 1, :n]).logits
            torch.testing.assert_close(batched[i : i + 1], alone, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(batched[0], batched[1]), "different samples must give different logits"


def test_substitute_deep_copies_and_records_blocks():
    teacher = tiny_model("bert")
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    student = substitute(teacher, [2, 0], TINY_COMPACT)
    assert substituted_blocks(student) == [0, 2]
    assert substituted_blocks(teacher) == []
    assert student.config.blockswap["substituted"] == [0, 2]
    assert student.config.blockswap["compact"]["hidden"] == 8
    assert not hasattr(teacher.config, "blockswap")
    for k, v in teacher.state_dict().items():
        assert torch.equal(v, before[k])


def test_keep_mask_formats_agree():
    keep = torch.tensor([[1, 1, 0]])
    additive = torch.where(keep.bool(), 0.0, torch.finfo(torch.float32).min)[:, None, None, :].expand(1, 1, 3, 3)
    for m in (keep, keep.bool()[:, None, None, :].expand(1, 1, 3, 3), additive):
        got = keep_mask(m, 1, 3)
        assert got.expand(1, 1, 3, 3)[0, 0, 0].tolist() == [True, True, False]
    assert keep_mask(None, 1, 3) is None


def test_padding_query_rows_stay_finite():
    block = CompactBlock(16, CompactSpec(hidden=8, layers=1, heads=2, ffn=16))
    x = torch.randn(1, 4, 16)
    fully_masked = torch.zeros(1, 1, 4, 4, dtype=torch.bool)
    for kind in ("explicit", "fused"):
        with attention_kernel(kind):
            assert torch.isfinite(block(x, fully_masked)).all()


def test_fused_attention_computes_what_the_explicit_matmuls_do():
    torch.manual_seed(0)
    block = CompactBlock(16, CompactSpec(hidden=8, layers=2, heads=2, ffn=16)).eval()
    for layer in block.layers:  # residual branches on (they start at zero only after init_linear)
        torch.nn.init.normal_(layer.attn.out.weight, std=0.5)
    x = torch.randn(3, 5, 16)
    pad = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [0, 0, 0, 0, 0]])
    additive = torch.where(pad.bool(), 0.0, torch.finfo(torch.float32).min)[:, None, None, :]
    for mask in (None, pad, pad.bool()[:, None, None, :], additive):
        with attention_kernel("fused"):
            fused = block(x, mask)
        with attention_kernel("explicit"):
            explicit = block(x, mask)
        torch.testing.assert_close(fused, explicit, atol=1e-5, rtol=0)
        torch.testing.assert_close(block(x, mask), explicit, atol=0, rtol=0)  # on the CPU by default: explicit
    changed = x.clone()
    changed[1, 3:] = torch.randn(2, 16)  # sample 1's padding: its real tokens must not see it
    with attention_kernel("fused"):
        torch.testing.assert_close(block(changed, pad)[1, :3], block(x, pad)[1, :3], atol=1e-6, rtol=0)
        assert not torch.allclose(block(changed, None)[1, :3], block(x, None)[1, :3])
    with pytest.raises(ValueError, match="unknown"):
        with attention_kernel("flash"):
            pass


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"hidden": 10, "heads": 3}, "divisible"),
        ({"hidden": 0}, "positive"),
        ({"activation": "swish2"}, "activation"),
        ({"norm": "pre"}, "norm"),
    ],
)
def test_compact_spec_rejects_bad_shapes(kwargs, message):
    with pytest.raises(ValueError, match=message):
        CompactSpec(**kwargs)


def test_one_spec_shapes_the_block_and_its_saved_form():
    spec = CompactSpec(hidden=8, layers=3, heads=4)
    block = CompactBlock(16, spec)
    assert len(block.layers) == 3 and block.layers[0].fc1.out_features == 32  # ffn defaults to 4 x hidden
    assert block.down.out_features == 8 and block.norm is None
    saved = {**dataclasses.asdict(spec), "init": "linear"}  # an older blockswap saved the init too
    assert CompactSpec.from_dict(saved) == spec and spec.activation == "relu"  # the default since session 19
    del saved["activation"]  # saved before the activation was recorded: every substitute was GELU then
    assert CompactSpec.from_dict(saved) == dataclasses.replace(spec, activation="gelu")


def test_head_logits_match_the_model(family):
    model = tiny_model(family)
    ids, mask = padded_batch()
    with torch.no_grad(), arch.capture_blocks(model) as rec:
        logits = model(input_ids=ids, attention_mask=mask).logits
        outputs = [rec[i]["output"] for i in range(arch.num_blocks(model))]
        batch = {"input_ids": ids, "attention_mask": mask}
        again = arch.head_logits(model, outputs[-1], batch)
        other = arch.head_logits(model, outputs[0], batch)
    torch.testing.assert_close(again, logits)
    assert (other - logits).abs().max() > 1e-6, "the head must read the hidden states it is given"


def test_post_norm_starts_as_the_blocks_own_layernorm(family):
    teacher = tiny_model(family)
    if arch.spec_for(teacher).out_norm_path is None:  # pre-LN: nothing to copy, refused in one line
        with pytest.raises(ConfigError, match="pre-LN"):
            substitute(teacher, [1], dataclasses.replace(TINY_COMPACT, norm="post"))
        return
    with torch.no_grad():
        norm = arch.output_norm(teacher, 1)
        norm.weight.normal_()
        norm.bias.normal_()
    student = substitute(teacher, [1], dataclasses.replace(TINY_COMPACT, norm="post")).eval()
    sub = arch.blocks(student)[1]
    sub.zero_contribution()
    x = torch.randn(2, 5, 32)
    with torch.no_grad():
        out = sub(x)
        torch.testing.assert_close(out[0] if isinstance(out, tuple) else out, norm(x))


def test_a_substitute_joins_the_device_and_dtype_of_the_block_it_replaces():
    # the curve swaps substitutes loaded on the CPU into a student on the GPU (it crashed there); "meta" stands in
    # for a second device here, float64 for a second dtype
    from blockswap.substitute import swap_in

    spec = dataclasses.replace(TINY_COMPACT)
    model = tiny_model("bert").to(torch.float64)
    swap_in(model, 1, CompactBlock(arch.hidden_size(model.config), spec))
    assert {p.dtype for p in arch.blocks(model)[1].parameters()} == {torch.float64}
    arch.put_block(model, 2, arch.identity_block(model))
    swap_in(model, 2, CompactBlock(arch.hidden_size(model.config), spec))  # replacing a block with no parameters
    assert {p.dtype for p in arch.blocks(model)[2].parameters()} == {torch.float64}
    ids = torch.randint(5, 90, (2, 6))
    model(input_ids=ids, attention_mask=torch.ones_like(ids))  # one dtype throughout: runs
    on_meta = tiny_model("bert").to("meta")
    swap_in(on_meta, 0, CompactBlock(arch.hidden_size(on_meta.config), spec))
    assert {p.device.type for p in arch.blocks(on_meta)[0].parameters()} == {"meta"}
