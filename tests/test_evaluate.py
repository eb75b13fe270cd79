"""Metrics and paired-bootstrap intervals."""

import torch

from blockswap.evaluate import kept_difference, kept_interval, metrics, paired_bootstrap


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


def _correct(x) -> dict:
    return {"correct": [int(v) for v in x]}


def test_kept_difference_is_paired_zero_for_equal_students_and_narrower_than_separate_intervals():
    g = torch.Generator().manual_seed(1)
    teacher = torch.rand(500, generator=g) < 0.85
    a = teacher.clone()
    a[:60] = ~a[:60]  # a and b share 60 flipped sentences; a flips 10 more wrongly-predicted ones right
    b = a.clone()
    wrong = torch.nonzero(~a[60:]).flatten()[:10] + 60
    a[wrong] = True
    same = kept_difference(_correct(teacher), _correct(b), _correct(b.clone()))
    assert same["difference"] == 0.0 and same["ci95"] == [0.0, 0.0] and same["n"] == 500
    d = kept_difference(_correct(teacher), _correct(a), _correct(b))
    full = (a.double().mean() - b.double().mean()) / teacher.double().mean()
    assert abs(d["difference"] - full.item()) < 1e-12 and d["difference"] > 0
    low, high = d["ci95"]
    assert 0 < low < d["difference"] < high, "10 sentences right only for a, none only for b: a is ahead beyond noise"
    ia, ib = kept_interval(_correct(teacher), _correct(a)), kept_interval(_correct(teacher), _correct(b))
    assert ia["ci95"][0] < ib["ci95"][1], "their separate intervals overlap: unpaired, the difference looks like noise"
    swapped = kept_difference(_correct(teacher), _correct(b), _correct(a))["ci95"]
    assert abs(swapped[0] + high) < 1e-12 and abs(swapped[1] + low) < 1e-12


def test_kept_difference_for_regression_resamples_pearson():
    g = torch.Generator().manual_seed(2)
    labels = torch.randn(300, generator=g)
    teacher = {"preds": (labels + 0.3 * torch.randn(300, generator=g)).tolist(), "labels": labels.tolist()}
    good = {"preds": (labels + 0.4 * torch.randn(300, generator=g)).tolist(), "labels": labels.tolist()}
    bad = {"preds": (labels + 1.5 * torch.randn(300, generator=g)).tolist(), "labels": labels.tolist()}
    d = kept_difference(teacher, good, bad)
    kept = [kept_interval(teacher, m)["kept"] for m in (good, bad)]
    assert abs(d["difference"] - (kept[0] - kept[1])) < 1e-9 and d["ci95"][0] > 0
