"""benchmarks/suite.py on the tiny config: two seeds, equal-budget baselines at the key points, resumable."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from .test_pipeline import FAST

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_suite_runs_on_the_tiny_config(tmp_path, tiny_csv, tiny_teacher_dir):
    out = tmp_path / "suite.json"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "suite.py"), "--datasets", str(tiny_csv), "--seeds", "0,1"]
    cmd += ["--root", str(tmp_path / "runs"), "--json", str(out), "--", "--teacher", str(tiny_teacher_dir), *FAST]
    cmd += ["--e2e-steps", "0"]  # the default recipe's curve: students are teacher + block-wise substitutes
    # fp32 as the suite's measured runs: the curve evaluates in the training precision, recovery.py in fp32, and
    # their "same student, same test loss" check below is exact only when the two agree (auto = bf16 where native)
    cmd += ["--mixed-precision", "no"]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    every = result["summary"]["reviews"]["every"]
    assert every["seeds"] == 2
    for method in ("blockswap", "distil", "thesis"):
        assert 0 <= every[method]["kept_test_mean"] and every[method]["kept_test_sd"] >= 0
    assert set(result["runs"]["reviews"]) == {"0", "1"}
    for run in result["runs"]["reviews"].values():
        cell = run["every"]
        # equal budgets at the matched point
        assert cell["blockswap"]["train_steps"] == cell["distil"]["train_steps"] == cell["thesis"]["train_steps"]
        assert cell["distil"]["blockswap_advantage"]["student"] == "recovered"  # --recover-key: both points
    pooled = every["blockswap_minus_distil"]
    assert pooled["runs"] == pooled["runs_paired"] == 2 and pooled["ci95"][0] <= pooled["mean"] <= pooled["ci95"][1]
    again = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0
    assert set(json.loads(out.read_text())["wall_seconds_this_invocation"].values()) == {0.0}, (
        "finished runs are reused"
    )

    # benchmarks/budget.py: the same runs at a larger common budget (2 epochs of recovery for both)
    budget = tmp_path / "budget.json"
    runs = [str(tmp_path / "runs" / f"reviews-s{seed}") for seed in (0, 1)]
    cmd = [sys.executable, str(ROOT / "benchmarks" / "budget.py"), *runs, "--recovery-epochs", "2"]
    cmd += ["--root", str(tmp_path / "budget"), "--json", str(budget)]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    larger = json.loads(budget.read_text())
    assert larger["summary"]["reviews"]["every"]["seeds"] == 2
    for seed, run in larger["runs"]["reviews"].items():
        for point, cell in run.items():
            before = result["runs"]["reviews"][seed][point]["blockswap"]["train_steps"]
            assert cell["blockswap"]["train_steps"] == cell["distil"]["train_steps"] > before

    # benchmarks/recovery.py --steps: a curve step's student rebuilt from the run's substitutes is the curve's
    # own (same test score), then recovered; benchmarks/distil.py --baseline thesis gets the same budget
    run0 = tmp_path / "runs" / "reviews-s0"
    curve = json.loads((run0 / "curve.json").read_text())
    rec = tmp_path / "rec.json"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "recovery.py"), str(run0), "--steps", "1", "--json", str(rec)]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    step1 = json.loads(rec.read_text())["students"]["step1"]
    assert step1["before"]["test"] == pytest.approx(curve["rows"][1]["test_score"])
    assert step1["before"]["test_loss"] == pytest.approx(curve["rows"][1]["test_metrics"]["loss"], rel=1e-6)
    assert step1["budget"]["steps"] > 0
    every = result["runs"]["reviews"]["0"]["every"]
    thesis = tmp_path / "thesis.json"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "distil.py"), str(run0), "--steps", str(every["step"])]
    cmd += ["--baseline", "thesis", "--json", str(thesis)]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    (point,) = json.loads(thesis.read_text())["points"]
    assert point["thesis"]["train_steps"] == every["blockswap"]["train_steps"]


def test_pooled_advantage_averages_runs_and_combines_their_sampling_errors():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from suite import pooled_advantage

    se = 0.01  # each interval 3.92 se wide
    paired = ({"kept_test": 0.99, "kept_test_ci95": [0.95, 1.03]},
              {"kept_test": 0.97, "kept_test_ci95": [0.93, 1.01],
               "blockswap_advantage": {"kept_test": 0.02, "ci95": [0.02 - 1.96 * se, 0.02 + 1.96 * se]}})  # fmt: skip
    unpaired = ({"kept_test": 1.0, "kept_test_ci95": [1.0 - 1.96 * se, 1.0 + 1.96 * se]},
                {"kept_test": 0.96, "kept_test_ci95": [0.96 - 1.96 * se, 0.96 + 1.96 * se]})  # fmt: skip
    out = pooled_advantage([paired, unpaired])
    assert out["runs"] == 2 and out["runs_paired"] == 1 and out["runs_ahead"] == 2
    assert abs(out["mean"] - 0.03) < 1e-12  # the paired run's own difference (0.02), not 0.99 - 0.97
    half = 1.96 * (se**2 + 2 * se**2) ** 0.5 / 2  # an unpaired run counts both students' errors
    assert abs(out["ci95"][0] - (0.03 - half)) < 1e-9 and abs(out["ci95"][1] - (0.03 + half)) < 1e-9
    assert abs(out["sd"] - (0.04 - 0.02) / 2**0.5) < 1e-12


def test_suite_reads_a_run_given_no_baselines(tmp_path):
    # `benchmarks/suite.py ... -- --baselines ""` (a substitute shape's runs, compared offline): no baselines.json
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from suite import points

    row = {"gmacs_cut": 0.0, "params_cut": 0.0, "kept": 1.0, "kept_test": 1.0, "kept_test_ci95": [1.0, 1.0]}
    rows = [row | {"step": 0}, row | {"step": 1, "gmacs_cut": 0.45}, row | {"step": 2, "gmacs_cut": 0.7}]
    (tmp_path / "curve.json").write_text(json.dumps({"rows": rows}))
    out = points(tmp_path)
    assert set(out) == {"half", "every"} and out["half"]["step"] == 1 and out["every"]["step"] == 2
    assert "distil" not in out["half"]
    (tmp_path / "baselines.json").write_text(json.dumps({"distil": [row | {"step": 2, "kept_test": 0.9}]}))
    assert points(tmp_path)["every"]["distil"]["kept_test"] == 0.9


def test_shapes_benchmark_names_and_session_summary():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from shapes import parse_shape

    from blockswap.measure import by_session, session_summary

    spec = parse_shape("h192_l1_a2_f384_relu")
    assert (spec.hidden, spec.layers, spec.heads, spec.ffn, spec.activation) == (192, 1, 2, 384, "relu")
    assert parse_shape("h128_l2_a2_f512").activation == "gelu"
    with pytest.raises(SystemExit):
        parse_shape("h128_l2_a2")
    sessions = [
        {"median_ms": m, "p10_ms": m - 1, "p90_ms": m + 1, "min_ms": m - 2, "repeats": 10} for m in (40, 60, 41)
    ]
    out = session_summary(sessions)
    assert out["median_ms"] == 41 and out["session_medians_ms"] == [40, 41, 60]  # a slow session does not decide it
    assert out["min_ms"] == 38 and out["repeats"] == 30 and out["sessions"] == 3
    grouped = by_session({("a", "fp32", k): s for k, s in enumerate(sessions)} | {("b", "fp32", 0): sessions[1]})
    assert grouped[("a", "fp32")] == out and grouped[("b", "fp32")]["session_medians_ms"] == [60]


def _finished_run(folder: Path, chosen: int, last_kept_validation: float, min_kept: float = 0.97) -> Path:
    """A run folder with a 3-step curve whose stop rule chose ``chosen``, the chosen and last steps recovered;
    on 4 test sentences the teacher and the chosen student get all right, the last student misses the 4th."""
    folder.mkdir(parents=True)
    rows = [{"step": k, "gmacs_cut": 0.2 * k, "params_cut": 0.1 * k} for k in range(4)]
    rows[0]["test_per_example"] = {"correct": [1, 1, 1, 1]}
    (folder / "curve.json").write_text(json.dumps({"rows": rows, "chosen_step": chosen}))
    student = {"kept_validation_after": 0.99, "kept_test": 1.0, "kept_test_ci95": [0.98, 1.02]}
    student["test_per_example"] = {"correct": [1, 1, 1, 1]}
    last = {"kept_validation_after": last_kept_validation, "kept_test": 0.75}
    students = {str(chosen): student, "3": student | last | {"test_per_example": {"correct": [1, 1, 1, 0]}}}
    (folder / "recovery.json").write_text(json.dumps({"students": students}))
    (folder / "config.yaml").write_text(f"run:\n  min_kept: {min_kept}\n")
    return folder


def test_stop_rule_replay_takes_the_last_step_only_when_it_keeps_enough_after_recovery(tmp_path):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from stop_rule import replay, summarise

    passes = replay(_finished_run(tmp_path / "r/a-s0", chosen=1, last_kept_validation=0.97))
    assert passes["curve"]["step"] == 1 and passes["curve"]["recoveries"] == 1
    got = passes["recovered"]
    assert (got["step"], got["recoveries"], got["kept_test"], got["gmacs_cut"]) == (3, 1, 0.75, pytest.approx(0.6))
    diff = passes["recovered_minus_curve"]  # paired on the same sentences
    assert diff["kept_test"] == pytest.approx(-0.25) and diff["ci95"][0] <= -0.25 <= diff["ci95"][1] <= 0
    fails = replay(_finished_run(tmp_path / "r/a-s1", chosen=1, last_kept_validation=0.969))
    assert fails["recovered"] == fails["curve"] | {"recoveries": 2}
    assert fails["recovered_minus_curve"] == {"kept_test": 0.0, "ci95": [0.0, 0.0]}
    same = replay(_finished_run(tmp_path / "r/b-s0", chosen=3, last_kept_validation=0.5))
    assert same["recovered"] == same["curve"] and same["curve"]["recoveries"] == 1
    stricter = replay(_finished_run(tmp_path / "r/a-s2", chosen=1, last_kept_validation=0.98, min_kept=0.99))
    assert stricter["recovered"]["step"] == 1  # the run's own --min-kept
    out = summarise({"r/a-s0": passes, "r/a-s1": fails, "r/b-s0": same})
    assert set(out) == {"r/a", "r/b", "r/all"} and out["r/a"]["recovered"]["steps"] == [3, 1]
    assert out["r/a"]["recovered"]["gmacs_cut_mean"] == pytest.approx(0.4) and out["r/all"]["curve"]["runs"] == 3
    assert out["r/a"]["recovered"]["kept_test_min"] == 0.75 and out["r/a"]["recovered"]["recoveries"] == 3
    assert out["r/a"]["recovered_minus_curve"]["mean"] == pytest.approx(-0.125)  # pooled over a-s0 and a-s1
    (tmp_path / "r/a-s0/recovery.json").write_text(json.dumps({"students": {}}))
    with pytest.raises(SystemExit, match="not recovered"):
        replay(tmp_path / "r/a-s0")


def _suite_run(folder: Path, teacher: list[int], students: dict[int, list[int]], distil: list[int] | None = None):
    """A finished suite run: a 3-step curve (GMACs cut 0.25 per step), the key steps 2 and 3 recovered with the
    given per-sentence correctness; ``distil`` adds that baseline at both key steps."""
    folder.mkdir(parents=True)
    (folder / "teacher.json").write_text(json.dumps({"test": {"correct": teacher}}))
    rows = [{"step": k, "gmacs_cut": 0.25 * k} for k in range(4)]
    (folder / "curve.json").write_text(json.dumps({"rows": rows}))
    recovered = {
        str(step): {"test_per_example": {"correct": c}, "kept_test": sum(c) / sum(teacher), "kept_test_ci95": [0, 1],
                    "kept_test_before": 0.5, "kept_validation_after": 0.9}
        for step, c in students.items()
    }  # fmt: skip
    (folder / "recovery.json").write_text(json.dumps({"students": recovered}))
    if distil is not None:
        cells = [{"step": s, "gmacs_cut": 0.3 * s, "kept_test": sum(distil) / sum(teacher),
                  "test_per_example": {"correct": distil}} for s in (2, 3)]  # fmt: skip
        (folder / "baselines.json").write_text(json.dumps({"distil": cells, "descriptions": {"distil": "..."}}))
    return folder


def test_compare_suites_pairs_two_suites_on_the_same_teachers_and_sentences(tmp_path):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from compare_suites import compare_run, pooled
    from suite import _teacher_of

    teacher = [1, 1, 1, 1]
    old = _suite_run(tmp_path / "old/a-s0", teacher, {2: [1, 1, 1, 0], 3: [1, 1, 0, 0]}, distil=[1, 0, 0, 1])
    new = _suite_run(tmp_path / "new/a-s0", teacher, {2: [1, 1, 1, 1], 3: [1, 1, 0, 0]})
    cells = compare_run(new, old)
    half, every = cells["half"], cells["every"]
    assert (half["step_new"], half["step_old"], every["step_new"]) == (2, 2, 3)  # the step nearest a 50 % cut, last
    assert half["new_minus_old"]["difference"] == pytest.approx(0.25)  # the 4th sentence, now right
    assert every["new_minus_old"]["difference"] == 0 and every["new_minus_old"]["ci95"] == [0, 0]  # the same answers
    assert half["new_minus_distil"]["difference"] == pytest.approx(0.5) and half["gmacs_cut_distil"] == 0.6
    other = _suite_run(tmp_path / "new/a-s1", teacher, {2: [1, 1, 1, 1], 3: [1, 0, 0, 0]})
    out = pooled([half, compare_run(other, old)["half"]])
    assert out["seeds"] == 2 and out["mean_kept_new"] == 1.0 and out["mean_kept_distil"] == 0.5
    assert out["new_minus_old"]["per_seed"] == pytest.approx([0.25, 0.25]) and out["new_minus_old"]["runs"] == 2
    # the command: per dataset and point, pooled; what was written by hand into the JSON survives a re-run
    out_json = tmp_path / "compare.json"
    out_json.write_text(json.dumps({"what": "a hand-written note", "datasets": {}}))
    _suite_run(tmp_path / "old/a-s1", teacher, {2: [1, 1, 1, 0], 3: [1, 1, 0, 0]}, distil=[1, 0, 0, 1])
    cmd = [sys.executable, str(ROOT / "benchmarks" / "compare_suites.py"), str(tmp_path / "new"), str(tmp_path / "old")]
    cmd += ["--datasets", "a", "--seeds", "0,1", "--json", str(out_json)]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(out_json.read_text())
    assert result["what"] == "a hand-written note" and result["command"].startswith("benchmarks/compare_suites.py")
    assert result["datasets"]["a"]["half"]["new_minus_old"]["per_seed"] == pytest.approx([0.25, 0.25])
    assert result["datasets"]["a"]["every"]["mean_kept_distil"] == 0.5 and "new_minus_distil" in done.stdout
    # a curve whose step nearest a 50 % cut is its last: one key point, not a crash
    short = [{"step": k, "gmacs_cut": 0.25 * k} for k in range(3)]
    for run in (new, old):
        (run / "curve.json").write_text(json.dumps({"rows": short}))
    assert set(compare_run(new, old)) == {"every"} and compare_run(new, old)["every"]["step_new"] == 2
    stranger = _suite_run(tmp_path / "new/b-s0", [1, 1, 1, 0], {2: teacher, 3: teacher})
    with pytest.raises(SystemExit, match="different teachers"):
        compare_run(stranger, old)
    (new / "recovery.json").write_text(json.dumps({"students": {}}))
    with pytest.raises(SystemExit, match="not recovered"):
        compare_run(new, old)
    # suite.py --teachers-from: a run's own fine-tuned teacher, else the one it was given
    (old / "teacher.json").write_text(json.dumps({"source": "/models/given", "test": {"correct": teacher}}))
    assert _teacher_of(old) == "/models/given"
    (old / "teacher").mkdir()
    assert _teacher_of(old) == old / "teacher"
    with pytest.raises(SystemExit, match="no teacher"):
        _teacher_of(tmp_path / "missing")


def test_hybrid_plans_parse_and_build_the_student_they_name():
    """benchmarks/hybrid.py: ``drop=0:sub=2`` drops block 0 and puts the given trained substitute in block 2."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import torch
    from hybrid import build, parse_plan

    from blockswap import arch
    from blockswap.compact import CompactBlock
    from blockswap.substitute import make_compact

    from .conftest import TINY_COMPACT, tiny_model

    assert parse_plan("drop=3,4:sub=0") == ([3, 4], [0]) and parse_plan("sub=1,2") == ([], [1, 2])
    for bad in ("drop=1:sub=1", "", "keep=1"):
        with pytest.raises(SystemExit):
            parse_plan(bad)
    teacher = tiny_model("bert")
    trained = {i: make_compact(teacher, TINY_COMPACT, i) for i in range(3)}
    student = build(teacher, trained, [0], [2], TINY_COMPACT)
    blocks = arch.blocks(student)
    assert isinstance(blocks[0], arch.IdentityBlock) and isinstance(blocks[2], CompactBlock)
    assert blocks[1] is not arch.blocks(teacher)[1] and torch.equal(
        blocks[1].attention.self.query.weight, arch.blocks(teacher)[1].attention.self.query.weight
    )
    mine, given = blocks[2].state_dict(), trained[2].state_dict()
    assert mine.keys() == given.keys() and all(torch.equal(mine[k], given[k]) for k in given)
    assert all(p.requires_grad for p in student.parameters())
