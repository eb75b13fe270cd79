import pytest
import torch

from blockswap import arch, baselines, export
from blockswap.substitute import drop_blocks

from .conftest import padded_batch, tiny_model


def zero_count(model) -> int:
    return int(sum((w == 0).sum().item() for w in baselines.prunable(model)))


def test_magnitude_pruning_zeroes_exactly_the_smallest():
    model = tiny_model("bert", layers=2)
    flat = torch.cat([w.detach().flatten() for w in baselines.prunable(model)])
    n = flat.numel()
    pruned = baselines.magnitude_prune(model, 0.3)
    k = round(0.3 * n)
    assert zero_count(pruned) == k
    new = torch.cat([w.detach().flatten() for w in baselines.prunable(pruned)])
    threshold = flat.abs().sort().values[k - 1]
    assert (flat.abs()[new == 0] <= threshold).all()
    assert (new[new != 0] == flat[new != 0]).all()
    assert zero_count(model) == 0  # the original is untouched


def test_random_pruning_hits_sparsity_and_is_seeded():
    model = tiny_model("bert", layers=2)
    n = sum(w.numel() for w in baselines.prunable(model))
    a = baselines.random_prune(model, 0.5, seed=1)
    b = baselines.random_prune(model, 0.5, seed=1)
    c = baselines.random_prune(model, 0.5, seed=2)
    assert zero_count(a) == pytest.approx(0.5 * n, abs=1)
    wa, wb, wc = (torch.cat([w.flatten() for w in baselines.prunable(m)]) for m in (a, b, c))
    assert torch.equal(wa == 0, wb == 0) and not torch.equal(wa == 0, wc == 0)


def test_sparsity_for_cut():
    model = tiny_model("bert", layers=2)
    total = sum(p.numel() for p in model.parameters())
    pool = sum(w.numel() for w in baselines.prunable(model))
    assert baselines.sparsity_for_cut(model, 0.1) == pytest.approx(0.1 * total / pool)
    assert baselines.sparsity_for_cut(model, 0.99) == 1.0


@pytest.mark.parametrize("family", ["bert", "distilbert"])
def test_layer_dropping_removes_exactly_the_named_blocks(family, tmp_path):
    model = tiny_model(family, layers=4)
    kept_ids = [id(arch.blocks(model)[i]) for i in (0, 2)]
    dropped = drop_blocks(model, [1, 3])
    assert arch.num_blocks(dropped) == 2
    for a, b in zip(arch.blocks(dropped), (arch.blocks(model)[0], arch.blocks(model)[2]), strict=True):
        for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
            assert torch.equal(pa, pb)
    assert [id(b) for b in arch.blocks(model)][::2] == kept_ids  # original untouched
    ids, mask = padded_batch()
    with torch.no_grad():
        want = dropped(input_ids=ids, attention_mask=mask).logits
    folder = export.save(dropped, tmp_path / "d")
    with torch.no_grad():
        got = export.load(folder)(input_ids=ids, attention_mask=mask).logits
    torch.testing.assert_close(got, want)
