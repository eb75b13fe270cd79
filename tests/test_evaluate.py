"""Metrics and paired-bootstrap intervals."""

import torch

from blockswap.evaluate import metrics, paired_bootstrap


def test_paired_bootstrap_of_identical_predictions_is_one_and_widens_with_disagreement():
    g = torch.Generator().manual_seed(0)
    teacher = torch.rand(400, generator=g) < 0.85
    same = paired_bootstrap(teacher, teacher.clone())
    assert same["kept"] == 1.0 and same["ci95"] == [1.0, 1.0] and same["n"] == 400
    student = teacher.clone()
    student[:40] = ~student[:40]  # 40 sentences flip
    diff = paired_bootstrap(teacher, student)
    low, high = diff["ci95"]
    assert low < diff["kept"] < high and high - low > 0.02
    more = student.clone()
    more[40:120] = ~more[40:120]
    wider = paired_bootstrap(teacher, more)
    assert wider["ci95"][1] - wider["ci95"][0] > high - low
    assert paired_bootstrap(teacher, student, seed=0) == diff  # seeded: the same interval every time


def test_metrics_record_which_examples_were_right():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [3.0, 1.0]])
    m = metrics(logits, torch.tensor([0, 0, 0]), 2)
    assert m["correct"] == [1, 0, 1] and m["accuracy"] == 2 / 3


def test_report_reads_a_run_written_before_scores_were_named(tmp_path):
    import json

    from blockswap import report

    row = {"step": 0, "block": None, "substituted": [], "params": 1e6, "params_cut": 0.0, "gmacs": 1.0,
           "gmacs_cut": 0.0, "accuracy": 0.85, "kept": 1.0, "test_accuracy": 0.84, "latency_ms": 1.0}  # fmt: skip
    (tmp_path / "curve.json").write_text(json.dumps({"rows": [row], "chosen_step": 0}))
    md = report.render(tmp_path).read_text()
    assert "| 0.8500 |" in md and "val accuracy" in md
