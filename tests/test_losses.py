import math

import pytest
import torch

from blockswap.losses import distillation_loss, kd_kl, masked_mse


def test_kd_kl_matches_hand_computation():
    s = torch.tensor([[0.0, 0.0]])
    t = torch.tensor([[math.log(3.0), 0.0]])  # teacher probs (3/4, 1/4) at T=1
    want = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)
    assert kd_kl(s, t, 1.0).item() == pytest.approx(want, rel=1e-6)
    # T=2: probs of logits/2, times T^2
    p = torch.softmax(t / 2, -1)[0]
    want2 = 4 * (p[0] * torch.log(p[0] / 0.5) + p[1] * torch.log(p[1] / 0.5)).item()
    assert kd_kl(s, t, 2.0).item() == pytest.approx(want2, rel=1e-6)
    assert kd_kl(t, t, 3.0).item() == pytest.approx(0.0, abs=1e-7)


def test_masked_mse_ignores_padding():
    pred = torch.zeros(1, 3, 2)
    target = torch.tensor([[[1.0, 1.0], [3.0, 3.0], [100.0, 100.0]]])
    mask = torch.tensor([[1, 1, 0]])
    assert masked_mse(pred, target, mask).item() == pytest.approx((1 + 9) / 2)
    assert masked_mse(pred, target, None).item() == pytest.approx((1 + 9 + 10000) / 3)


def test_distillation_loss_combines_parts():
    s_logits = torch.tensor([[1.0, 0.0]])
    t_logits = torch.tensor([[0.0, 1.0]])
    labels = torch.tensor([0])
    h = [torch.ones(1, 2, 4)], [torch.zeros(1, 2, 4)]
    total, parts = distillation_loss(
        student_logits=s_logits, teacher_logits=t_logits, labels=labels, student_hidden=h[0], teacher_hidden=h[1],
        mask=torch.ones(1, 2), temperature=2.0, alpha=0.5, beta=3.0,
    )  # fmt: skip
    ce = torch.nn.functional.cross_entropy(s_logits, labels).item()
    kl = kd_kl(s_logits, t_logits, 2.0).item()
    assert parts["mse"] == pytest.approx(1.0)
    assert total.item() == pytest.approx(kl + 0.5 * ce + 3.0 * 1.0, rel=1e-6)
