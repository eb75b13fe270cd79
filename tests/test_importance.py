import torch

from blockswap import arch, importance

from .conftest import labelled_batches as _batches
from .conftest import tiny_model


def _model_with_identity_block():
    model = tiny_model("bert", layers=4, seed=5)
    # make the blocks' effect large so the constructed case is unambiguous
    for b in arch.blocks(model):
        torch.nn.init.normal_(b.output.dense.weight, std=0.5)
    arch.blocks(model)[2] = arch.IdentityBlock()
    return model


def test_identity_block_is_least_important_by_influence_and_drop_one():
    model = _model_with_identity_block()
    b = _batches()
    infl = importance.influence(model, b)
    drop = importance.drop_one(model, b)
    assert infl[2] == min(infl) and abs(infl[2]) < 1e-6
    assert abs(drop[2]) < 1e-7
    assert all(abs(d) > 1e-7 for i, d in enumerate(drop) if i != 2)
    assert importance.grad_act(model, b)[2] == 0.0


def test_rank_writes_every_signal_and_orders_least_important_first():
    model = _model_with_identity_block()
    r = importance.rank(
        model,
        _batches(),
        {"influence": 1.0, "grad_act": 1.0, "softmax_weight": 1.0, "scale": 1.0, "drop_one": 1.0},
        probe_steps=5,
    )
    assert set(r["raw"]) == {"influence", "grad_act", "softmax_weight", "scale", "drop_one"}
    assert sorted(r["order"]) == [0, 1, 2, 3]
    r2 = importance.rank(model, _batches(), {"influence": 1.0, "drop_one": 1.0})
    assert r2["order"][0] == 2
    assert all(0.0 <= v <= 1.0 for v in r2["combined"])


def test_candidates_restrict_the_order():
    model = tiny_model("bert", layers=4)
    r = importance.rank(model, _batches(1), {"influence": 1.0}, candidates=[1, 3])
    assert sorted(r["order"]) == [1, 3]


def test_signals_leave_the_model_unchanged():
    model = tiny_model("bert", layers=3)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    importance.rank(model, _batches(1), {"scale": 1.0, "softmax_weight": 1.0, "grad_act": 1.0}, probe_steps=3)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert all(p.requires_grad for p in model.parameters())
