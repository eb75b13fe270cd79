"""Architecture table, discovery of unlisted encoders, refused families."""

import pytest
import torch
from transformers import AutoConfig

from blockswap import arch, export
from blockswap.compact import CompactBlock
from blockswap.errors import UnsupportedModelError
from blockswap.substitute import drop_blocks, substitute

from .conftest import IDENTITY_COMPACT, TINY_COMPACT, padded_batch, tiny_model

# Encoders that follow the usual block(hidden_states, attention_mask, ...) convention but have no table entry.
UNLISTED = ["ernie", "megatron-bert"]


@pytest.mark.parametrize("model_type", UNLISTED)
def test_discovery_finds_blocks_of_an_unlisted_encoder(model_type, tmp_path):
    assert model_type not in arch.ARCHITECTURES
    teacher = tiny_model(model_type)  # conftest's tiny config works for any BERT-shaped type
    spec = arch.spec_for(teacher)
    assert spec.head == "forward" and arch.num_blocks(teacher) == 3
    assert arch.block_path(teacher).endswith("encoder.layer")
    ids, mask = padded_batch(lengths=(9, 5, 3))
    # zero-contribution substitute == dropping the block
    student = substitute(teacher, [1], IDENTITY_COMPACT).eval()
    arch.blocks(student)[1].zero_contribution()
    with torch.no_grad():
        got = student(input_ids=ids, attention_mask=mask).logits
        want = drop_blocks(teacher, [1]).eval()(input_ids=ids, attention_mask=mask).logits
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    # a sample alone == the same sample in a padded batch
    student = substitute(teacher, [0, 2], TINY_COMPACT).eval()
    with torch.no_grad():
        batched = student(input_ids=ids, attention_mask=mask).logits
        alone = student(input_ids=ids[2:3, :3], attention_mask=mask[2:3, :3]).logits
    torch.testing.assert_close(batched[2:3], alone, atol=1e-5, rtol=1e-5)
    # the head reached through the model's forward reads the hidden states it is given
    batch = {"input_ids": ids, "attention_mask": mask}
    with torch.no_grad(), arch.capture_blocks(teacher) as rec:
        logits = teacher(**batch).logits
        torch.testing.assert_close(arch.head_logits(teacher, rec[2]["output"], batch), logits)
    # save -> load round trip
    folder = export.save(student, tmp_path / "m")
    again = export.load(folder)
    assert isinstance(arch.blocks(again)[0], CompactBlock)
    with torch.no_grad():
        torch.testing.assert_close(again(input_ids=ids, attention_mask=mask).logits, batched, atol=0, rtol=0)


def test_an_encoder_discovery_cannot_handle_is_refused_in_one_line():
    # Funnel keeps its blocks in groups (a list of lists): no single list of num_hidden_layers blocks
    cfg = AutoConfig.for_model(
        "funnel", vocab_size=99, d_model=32, n_head=4, d_head=8, d_inner=37, block_sizes=[1, 1, 1]
    )
    with pytest.raises(UnsupportedModelError) as e:
        arch.model_from_config(cfg)
    msg = str(e.value)
    assert "\n" not in msg and "'funnel'" in msg and "ARCHITECTURES" in msg


def test_albert_is_refused_with_the_reason():
    cfg = arch.builtin_config("albert-base-v2")
    with pytest.raises(UnsupportedModelError, match="shared block"):
        arch.model_from_config(cfg)


@pytest.mark.parametrize("name", ["deberta-v3-base", "modernbert-base", "mpnet-base"])
def test_builtin_configs_of_newer_families_build(name):
    cfg = arch.builtin_config(name)
    assert cfg.model_type in arch.ARCHITECTURES
    assert cfg.hidden_size == 768


def test_a_cache_argument_marks_a_decoder_block_unless_it_is_a_bert_style_layer():
    from types import SimpleNamespace

    encoder, decoder = SimpleNamespace(is_decoder=False), SimpleNamespace(is_decoder=True)
    bert_like = ["hidden_states", "attention_mask", "encoder_hidden_states", "encoder_attention_mask"]
    assert not arch.is_decoder_block(bert_like + ["past_key_values", "kwargs"], encoder)  # ERNIE, transformers 5.17
    assert not arch.is_decoder_block(bert_like + ["cache", "kwargs"], encoder)  # the same layer, later versions
    assert arch.is_decoder_block(bert_like + ["cache", "kwargs"], decoder)
    assert arch.is_decoder_block(["hidden_states", "attention_mask", "position_ids", "cache", "kwargs"], encoder)
    assert arch.is_decoder_block(["hidden_states", "attention_mask", "position_ids", "use_cache"], encoder)  # Llama
    gpt2 = ["hidden_states", "past_key_values", "attention_mask", "encoder_hidden_states", "use_cache"]
    assert arch.is_decoder_block(gpt2, encoder)
    assert not arch.is_decoder_block(["hidden_states", "attention_mask", "output_attentions"], encoder)


def test_a_layer_dropped_model_saves_as_a_plain_shorter_model_of_its_class(family, tmp_path):
    """Layer removal keeps the config's layer count and per-layer fields (ModernBERT's layer_types) in step, so
    the folder loads without blockswap and gives the same logits."""
    teacher = tiny_model(family)
    dropped = drop_blocks(teacher, [1]).eval()
    ids, mask = padded_batch()
    folder = export.save(dropped, tmp_path / "m")
    assert not (folder / "modeling_blockswap.py").exists()
    again = export.load(folder).eval()
    assert type(again) is type(teacher) and arch.num_blocks(again) == 2
    with torch.no_grad():
        want = dropped(input_ids=ids, attention_mask=mask).logits
        torch.testing.assert_close(again(input_ids=ids, attention_mask=mask).logits, want, atol=0, rtol=0)
