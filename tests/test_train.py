import pytest
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState

from blockswap import distill
from blockswap import train as optim
from blockswap.compact import CompactSpec
from blockswap.config import DistillConfig
from blockswap.substitute import substitute

from .conftest import labelled_batches, tiny_model


def test_adamw_is_fused_on_cpu_and_steps_like_the_reference():
    torch.manual_seed(0)
    a, b = torch.nn.Linear(8, 4), torch.nn.Linear(8, 4)
    b.load_state_dict(a.state_dict())
    fused = optim.adamw([{"params": a.parameters(), "lr": 1e-2}], weight_decay=0.01)
    reference = torch.optim.AdamW(b.parameters(), lr=1e-2, weight_decay=0.01, fused=False)
    assert fused.defaults["fused"] is True
    x = torch.randn(16, 8)
    for _ in range(3):
        for model, opt in ((a, fused), (b, reference)):
            model(x).pow(2).mean().backward()
            opt.step()
            opt.zero_grad()
    torch.testing.assert_close(a.weight, b.weight)


def test_adamw_is_not_fused_for_an_empty_group():
    assert optim.adamw([{"params": [], "lr": 1e-3}]).defaults["fused"] is False


@pytest.mark.parametrize("name", ["no", "bf16", "fp16"])
def test_explicit_precision_passes_through(name):
    assert optim.resolve_precision(name, cpu=True) == name


def test_auto_precision_follows_the_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for supported, expected in ((True, "bf16"), (False, "no")):
        monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda s=supported: s)
        assert optim.resolve_precision("auto", cpu=True) == expected


def test_bf16_distillation_leaves_an_fp32_student():
    """Accelerate wraps forward in autocast while training; the returned student must compute in fp32."""
    teacher = tiny_model("bert", layers=2)
    teacher.requires_grad_(False)
    student = substitute(teacher, [0], CompactSpec(hidden=8, heads=2, ffn=16))
    student.requires_grad_(True)
    distill.end_to_end(
        student,
        teacher,
        labelled_batches(2),
        DistillConfig(),
        steps=2,
        accelerator=Accelerator(cpu=True, mixed_precision="bf16"),
    )
    assert "_original_forward" not in student.__dict__
    fresh = substitute(teacher, [0], CompactSpec(hidden=8, heads=2, ffn=16))
    fresh.load_state_dict(student.state_dict())
    fresh.eval()
    b = labelled_batches(1)[0]
    inputs = {"input_ids": b["input_ids"], "attention_mask": b["attention_mask"]}
    with torch.no_grad():
        got, want = student(**inputs).logits, fresh(**inputs).logits
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_fp16_on_a_cpu_is_refused_not_silently_fp32():
    from blockswap.config import ConfigError

    with pytest.raises(ConfigError, match="needs a GPU"):
        optim.make_accelerator(cpu=True, mixed_precision="fp16")
    AcceleratorState._reset_state(reset_partial_state=False)  # accelerate keeps one precision per process
    accelerator, precision = optim.make_accelerator(cpu=True, mixed_precision="no")
    assert precision == "no" and accelerator.device.type == "cpu"
