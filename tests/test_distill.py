import torch
from accelerate import Accelerator

from blockswap import arch, distill
from blockswap.compact import CompactBlock, CompactSpec
from blockswap.config import DistillConfig
from blockswap.errors import TrainingDiverged

from .conftest import labelled_batches, tiny_model


def _subs(model, n):
    torch.manual_seed(0)
    return {i: CompactBlock(32, CompactSpec(hidden=8, layers=1, heads=2, ffn=16)) for i in range(n)}


def _mse(model, subs, batches):
    from blockswap.losses import masked_mse

    out = {}
    with torch.no_grad(), arch.capture_blocks(model) as rec:
        for i in subs:
            out[i] = 0.0
        for b in batches:
            model(input_ids=b["input_ids"], attention_mask=b["attention_mask"])
            for i, s in subs.items():
                out[i] += masked_mse(s(rec[i]["input"], rec[i]["mask"]), rec[i]["output"], b["attention_mask"]).item()
    return out


def test_blockwise_lowers_every_substitutes_mse():
    teacher = tiny_model("bert", layers=3)
    subs = _subs(teacher, 3)
    batches = labelled_batches(6)
    before = _mse(teacher, subs, batches)
    distill.blockwise(
        teacher, subs, batches, DistillConfig(blockwise_epochs=8, blockwise_lr=3e-3), accelerator=Accelerator(cpu=True)
    )
    after = _mse(teacher, subs, batches)
    for i in subs:
        assert after[i] < 0.7 * before[i], (i, before[i], after[i])


def test_linear_init_beats_random_and_is_exact_linear_map():
    teacher = tiny_model("bert", layers=2)
    subs = _subs(teacher, 2)
    batches = labelled_batches(6)
    before = _mse(teacher, subs, batches)
    distill.init_linear(teacher, subs, batches)
    after = _mse(teacher, subs, batches)
    for i in subs:
        assert after[i] < before[i]
    x = torch.randn(2, 5, 32)
    b = subs[0]
    torch.testing.assert_close(b(x), x + b.up(b.down(x)))  # inner layers start as the identity


def test_end_to_end_trains_substitutes_and_logs_parts():
    from blockswap.compact import CompactSpec
    from blockswap.substitute import substitute

    teacher = tiny_model("bert", layers=3)
    teacher.requires_grad_(False)
    student = substitute(teacher, [1], CompactSpec(hidden=8, heads=2, ffn=16, dropout=0.0))
    student.requires_grad_(True)
    w0 = arch.blocks(student)[1].up.weight.clone()
    kept0 = arch.blocks(student)[0].output.dense.weight.clone()
    log = distill.end_to_end(
        student,
        teacher,
        labelled_batches(6),
        DistillConfig(freeze_kept=True),
        steps=5,
        accelerator=Accelerator(cpu=True),
    )
    assert log and {"kl", "ce", "mse", "total"} <= set(log[0])
    assert not torch.equal(arch.blocks(student)[1].up.weight, w0)
    assert torch.equal(arch.blocks(student)[0].output.dense.weight, kept0)  # frozen


def test_nan_loss_stops_with_the_step():
    import pytest

    teacher = tiny_model("bert", layers=2)
    subs = _subs(teacher, 2)
    with torch.no_grad():
        subs[0].up.weight.fill_(float("nan"))
    with pytest.raises(TrainingDiverged, match="step 0"):
        distill.blockwise(teacher, subs, labelled_batches(1), DistillConfig(), accelerator=Accelerator(cpu=True))


def test_linear_init_of_a_post_norm_substitute_fits_the_block():
    from blockswap.compact import CompactSpec
    from blockswap.substitute import make_compact

    teacher = tiny_model("bert", layers=2)
    cfg = CompactSpec(hidden=8, heads=2, ffn=16, dropout=0.0, norm="post")
    subs = {i: make_compact(teacher, cfg, i).eval() for i in range(2)}
    batches = labelled_batches(6)
    before = _mse(teacher, subs, batches)
    distill.init_linear(teacher, subs, batches)
    after = _mse(teacher, subs, batches)
    for i in subs:
        assert after[i] < 0.5 * before[i], (before[i], after[i])
