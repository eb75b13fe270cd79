import pytest
import torch
from accelerate import Accelerator

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
    accelerator, precision = optim.make_accelerator(cpu=True, mixed_precision="no")
    assert precision == "no" and accelerator.device.type == "cpu"


def test_a_second_command_in_one_process_gets_its_own_precision():
    """accelerate keeps one state per process; a notebook or script calling blockswap twice must not inherit it
    (another precision, or the CPU after a GPU command, raised a ValueError)."""
    first, _ = optim.make_accelerator(cpu=True, mixed_precision="bf16")
    assert first.mixed_precision == "bf16"
    second, precision = optim.make_accelerator(cpu=True, mixed_precision="no")
    assert precision == "no" and second.mixed_precision == "no"


class _Clock:
    """A clock the test moves: ``tick`` seconds per training step."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _run(budget: optim.StepBudget, clock: _Clock, paces, totals: list | None = None) -> int:
    step = 0
    while step < budget.total:
        clock.now += paces(step)
        step += 1
        budget.done(step)
        if totals is not None:
            totals.append(budget.total)
    return step


def test_step_budget_keeps_every_planned_step_without_a_deadline():
    clock = _Clock()
    budget = optim.StepBudget(100, None, clock=clock)
    assert _run(budget, clock, lambda s: 5.0) == 100 == budget.total
    assert budget.as_dict() == {"planned_steps": 100, "steps": 100, "cut_by_deadline": False}


def test_step_budget_ends_by_the_deadline_at_the_pace_it_measures():
    clock = _Clock()
    budget = optim.StepBudget(100, deadline=clock.now + 30.0, clock=clock)  # 1 s a step: 30 of the 100 fit
    assert _run(budget, clock, lambda s: 1.0) == 30
    assert clock.now == pytest.approx(130.0)
    assert budget.as_dict()["cut_by_deadline"]
    clock = _Clock()
    budget = optim.StepBudget(100, deadline=clock.now + 300.0, clock=clock)  # room for every step: none cut
    assert _run(budget, clock, lambda s: 1.0) == 100


def test_step_budget_grows_back_when_steps_get_faster_but_never_past_the_plan():
    """A slow first epoch (the teacher runs), then cached steps 4x faster: the later checks give back steps."""
    clock = _Clock()
    budget = optim.StepBudget(100, deadline=clock.now + 60.0, clock=clock)
    done = _run(budget, clock, lambda s: 2.0 if s < 20 else 0.5)
    # the check after 8 steps expects 2 s a step (30 in all); the checks after the speed-up give steps back:
    # 20 slow steps (40 s) leave 20 s for 40 fast ones, ending on the deadline
    assert done == 60 and clock.now == pytest.approx(160.0)
    clock = _Clock()
    budget = optim.StepBudget(50, deadline=clock.now + 1e6, clock=clock)
    assert _run(budget, clock, lambda s: 0.001) == 50


def test_step_budget_stops_after_the_probe_when_the_deadline_has_passed():
    clock = _Clock()
    budget = optim.StepBudget(100, deadline=clock.now - 10.0, probe=8, clock=clock)
    assert _run(budget, clock, lambda s: 1.0) == 8


def test_linear_schedule_is_hugging_faces_and_follows_a_shrunk_total():
    from transformers import get_linear_schedule_with_warmup

    def lrs(make, steps):
        opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
        sched, out = make(opt), []
        for _ in range(steps):
            out.append(opt.param_groups[0]["lr"])
            opt.step()
            sched.step()
        return out

    for total, cap in ((530, 50), (265, 20), (7, 20)):
        ours = lrs(lambda opt, t=total, c=cap: optim.linear_schedule(opt, optim.StepBudget(t), max_warmup=c), total)
        hf = lrs(lambda opt, t=total, c=cap: get_linear_schedule_with_warmup(opt, min(c, t // 10), t), total)
        assert ours == pytest.approx(hf)
    budget = optim.StepBudget(200)
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = optim.linear_schedule(opt, budget, max_warmup=20)
    budget.total = 100  # cut at the probe: warm-up 10 steps, decay to 0 at step 100
    for _ in range(55):
        opt.step()
        sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx((100 - 55) / 90)


def test_step_budget_is_not_fooled_by_a_slow_first_step():
    """The first step pays for allocations (20 s here, then 1 s a step): counted, the check after 8 steps would see
    3.4 s a step and cut the schedule to 29 steps; left out, the schedule is sized right from the first check."""
    clock, totals = _Clock(), []
    budget = optim.StepBudget(200, deadline=clock.now + 100.0, clock=clock)
    assert _run(budget, clock, lambda s: 20.0 if s == 0 else 1.0, totals) == 81
    assert clock.now == pytest.approx(200.0)
    assert set(totals[7:]) == {81}  # from the first check on


def test_step_budget_agrees_one_total_across_processes():
    """Each process measures its own clock; all must run the same steps, the fewest any of them can afford."""
    clock = _Clock()
    budget = optim.StepBudget(100, deadline=clock.now + 30.0, clock=clock)
    budget.agree = lambda n: min(n, 12)  # another process can afford only 12
    assert _run(budget, clock, lambda s: 1.0) == 12  # 38 fit here; 12 agreed at the check after 8
    single = optim.StepBudget(100, deadline=clock.now + 30.0, clock=clock).agreed(Accelerator(cpu=True))
    assert single.agree is None  # one process: nothing to agree


def test_step_budget_keeps_the_plan_when_the_projected_overrun_is_within_its_slack():
    """Block-wise distillation's first epoch runs the teacher (slower than the second): a projected overrun within
    the slack keeps every planned step; beyond it, the loop is cut as without slack."""
    for slack, expected in ((0.15, 100), (0.0, 90), (0.05, 90)):
        clock = _Clock()
        budget = optim.StepBudget(100, deadline=clock.now + 90.0, slack=slack, clock=clock)  # 100 s of work for 90
        assert _run(budget, clock, lambda s: 1.0) == expected, slack


def test_fine_tuning_validates_each_epoch_where_it_trains(monkeypatch):
    """Each epoch's fp32 copy is evaluated before it moves to the CPU: on a GPU run the validation pass ran on the
    host's CPU (~1 s for MiniLM on an H200 host's 16 cores, session 24; it grows with the teacher and the split)."""
    from blockswap.config import FinetuneConfig

    real_cpu, evaluated = torch.nn.Module.cpu, []

    def cpu(module):
        module._was_moved = True  # marks what went through .cpu()
        return real_cpu(module)

    def spy(model, loader):
        evaluated.append(getattr(model, "_was_moved", False))
        return {"metric": "accuracy", "score": 0.5 + 0.1 * len(evaluated)}

    monkeypatch.setattr(torch.nn.Module, "cpu", cpu)
    monkeypatch.setattr(optim, "evaluate", spy)
    model, history = optim.finetune(
        tiny_model(),
        labelled_batches(2),
        labelled_batches(1),
        FinetuneConfig(epochs=2),
        accelerator=Accelerator(cpu=True),
    )
    assert evaluated == [False, False] and len(history["history"]) == 2
    assert model._was_moved and history["best_val_score"] == 0.7  # the best epoch's copy is kept on the CPU
