"""The recipe of `blockswap run`: its numbers are pinned, its stages are one list, a failed start leaves nothing."""

import json

import pytest
import torch

from blockswap import arch, errors, export, tables
from blockswap.cli import main
from blockswap.compact import CompactBlock
from blockswap.evaluate import kept_difference
from blockswap.run import RECIPE
from blockswap.run.curve import key_rows

from .test_pipeline import FAST

# Measured on this tiny config with the code before the stages were reorganised (same seed, same
# machine kind): the reorganisation must not move any number. Continuous values carry every step of
# the computation (importance probes, block-wise training, end-to-end KD, final evaluation).
PINNED = {
    "raw": {
        "drop_one": [1.5417734781864034e-05, 7.62939453125e-06, 2.384185791015625e-07],
        "influence": [4.916522920746164e-05, 6.699131936142126e-05, 4.56073849471574e-05],
        "grad_act": [0.0009466490591876209, 0.001360346213914454, 0.0015357057563960552],
        "softmax_weight": [0.2908436059951782, 0.3545578420162201, 0.3545985817909241],
        "scale": [0.9600000381469727, 0.9600000381469727, 0.9600000381469727],
    },
    "order": [2, 0, 1],
    "blockwise_mse": {
        "0": [1.2423452062648721e-05, 7.41843250580132e-05, 2.984511957038194e-05],
        "1": [1.6358026186935604e-05, 7.942957745399326e-05, 3.336045119795017e-05],
        "2": [1.3589341506303754e-05, 7.758357241982594e-05, 2.8857861252618022e-05],
    },
    "e2e_total": {
        "1": [0.3482557535171509, 0.34582608938217163],
        "2": [0.34825605154037476, 0.345854789018631],
        "3": [0.3482615351676941, 0.3458634316921234],
    },
    "e2e_mse": {
        "1": [1.6635718566249125e-05, 2.1379981262725778e-05],
        "2": [2.5818195354077034e-05, 3.750456380657852e-05],
        "3": [3.496305362205021e-05, 4.735206312034279e-05],
    },
    "cost": [(24721, 0.000360512), (19684, 0.000273472), (14647, 0.000186432), (9610, 9.9392e-05)],
    "sparsity": [0.2597462871287129, 0.5194925742574257, 0.7792388613861386],
    "drop_params_cut": [0.27462481291209906, 0.5492496258241981, 0.8238744387362971],
    "student_test_loss": 0.6932286620140076,
}


def _approx(values):
    # rel 1e-4: AVX-512 and AVX2 kernels round differently in fp32; the influence scores (1 - cos, ~5e-5) move
    # by 4e-5 relative between them, every other number by less (exact at 1e-5 with ATEN_CPU_CAPABILITY=avx2)
    return pytest.approx(values, rel=1e-4, abs=1e-9)


def test_tiny_run_reproduces_the_pinned_numbers(tmp_path, tiny_csv, tiny_teacher_dir):
    out = tmp_path / "run"
    argv = ["run", "--teacher", str(tiny_teacher_dir), "--dataset", str(tiny_csv), "--out", str(out), *FAST]
    # the teacher cache off: the exact teacher outputs, as when these numbers were pinned; fp32, as they were
    # pinned on a CPU without native bf16 (auto would train in bf16 on one that has it, and move every number)
    extra = [
        "--mixed-precision",
        "no",
        "--seed",
        "3",
        "--baselines",
        "magnitude,random,drop",
        "--baseline-points",
        "all",
        "--teacher-cache-gb",
        "0",
        "--compact-activation",
        "gelu",  # the default before session 19, when these numbers were pinned
    ]
    assert main([*argv, *extra]) == 0

    def read(name):
        return json.loads((out / name).read_text())

    imp, curve, base = read("importance.json"), read("curve.json"), read("baselines.json")
    for name, values in PINNED["raw"].items():
        assert imp["raw"][name] == _approx(values), name
    assert imp["order"] == PINNED["order"] == curve["order"]
    assert read("blockwise.json")["mse_by_quarter"] == {k: _approx(v) for k, v in PINNED["blockwise_mse"].items()}
    for k, log in curve["distill_log"].items():
        assert [e["total"] for e in log] == _approx(PINNED["e2e_total"][k])
        assert [e["mse"] for e in log] == _approx(PINNED["e2e_mse"][k])
    assert [(r["params"], r["gmacs"]) for r in curve["rows"]] == [(p, pytest.approx(g)) for p, g in PINNED["cost"]]
    assert [r["sparsity"] for r in base["magnitude"]] == _approx(PINNED["sparsity"])
    assert [r["params_cut"] for r in base["drop"]] == _approx(PINNED["drop_params_cut"])
    assert read("evaluation.json")["student"]["test"]["loss"] == _approx(PINNED["student_test_loss"])


def test_the_teacher_cache_serves_the_end_to_end_phases_without_moving_the_numbers(
    tmp_path, tiny_csv, tiny_teacher_dir, monkeypatch
):
    """With the cache on (the default) the curve's end-to-end steps and recovery read the teacher's fp16-rounded
    outputs of the texts block-wise distillation saw, never the teacher: their losses stay within 0.2 % (the small
    hidden-state MSE within 1 %) of the same run's with the cache off."""
    from blockswap.teacher_cache import TeacherCache

    served, get = [], TeacherCache.get

    def counted(self, b):
        got = get(self, b)
        served.append(got is not None)
        return got

    monkeypatch.setattr(TeacherCache, "get", counted)
    logs = {}
    for gb in ("0", "1"):
        out = tmp_path / f"run{gb}"
        argv = ["run", "--teacher", str(tiny_teacher_dir), "--dataset", str(tiny_csv), "--out", str(out), *FAST]
        assert main([*argv, "--blockwise-epochs", "1", "--baselines", "none", "--teacher-cache-gb", gb]) == 0
        logs[gb] = json.loads((out / "curve.json").read_text())["distill_log"]
        recovered = json.loads((out / "recovery.json").read_text())["students"]["3"]
        logs[gb]["recovery"] = recovered["log"]
        assert recovered["teacher_cache_batches"] == (6 if gb == "1" else 0)
    cache = json.loads((out / "blockwise.json").read_text())["teacher_cache"]
    assert cache["enabled"] and cache["texts"] == 96 and cache["batches_served"] == 0  # one epoch: all misses
    assert sum(served) == 3 * 2 + 6  # every end-to-end step after block-wise: 3 swaps x 2 steps, recovery 6
    for k, log in logs["1"].items():
        assert [e["total"] for e in log] == pytest.approx([e["total"] for e in logs["0"][k]], rel=2e-3), k
        assert [e["mse"] for e in log] == pytest.approx([e["mse"] for e in logs["0"][k]], rel=1e-2), k
        assert [e["mse"] for e in log] != [e["mse"] for e in logs["0"][k]]  # fp16-rounded targets: the cache served


def test_the_recipe_is_one_ordered_list_whose_reads_come_earlier():
    names = [s.name for s in RECIPE]
    assert names == [
        "teacher", "importance", "blockwise", "curve", "recovery", "evaluation", "vocab", "export", "baselines",
        "summary", "report",
    ]  # fmt: skip
    written = set()
    for stage in RECIPE:
        assert set(stage.reads) <= written, stage.name
        written.add(stage.artifact)


def test_readme_diagram_matches_the_recipe():
    from pathlib import Path

    readme = (Path(__file__).parents[1] / "README.md").read_text()
    diagram = readme.split("## What `blockswap run` does", 1)[1].split("```")[1]
    assert " ─► ".join(s.name for s in RECIPE) in diagram


def test_a_failed_start_leaves_no_run_folder(tmp_path, capsys, tiny_csv):
    out = tmp_path / "run"
    argv = ["run", "--teacher", str(tmp_path / "missing"), "--dataset", str(tiny_csv), "--out", str(out), *FAST]
    assert main(argv) == 2
    assert "does not exist" in capsys.readouterr().err
    assert not out.exists()


def test_a_folder_left_by_an_interrupted_start_is_accepted(tmp_path, capsys, tiny_csv, tiny_teacher_dir):
    out = tmp_path / "run"
    out.mkdir()
    (out / "run.json").write_text("{}")
    (out / "config.yaml").write_text("stale: 1\n")
    argv = ["run", "--teacher", str(tiny_teacher_dir), "--dataset", str(tiny_csv), "--out", str(out), *FAST]
    assert main([*argv, "--baselines", "none"]) == 0, capsys.readouterr().err
    assert (out / "summary.json").is_file()


def test_nan_during_fine_tuning_is_one_line(tmp_path, capsys, tiny_csv, tiny_teacher_dir):
    argv = ["finetune", "--model", str(tiny_teacher_dir), "--dataset", str(tiny_csv), "--out", str(tmp_path / "t")]
    assert main([*argv, "--lr", "1e30", "--max-steps", "3"]) == 2
    err = capsys.readouterr().err
    assert "fine-tuning loss became nan" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "t").exists()


def test_every_user_error_is_a_blockswap_error():
    """No module defines its own exception type: the CLI catches BlockswapError alone."""
    import ast
    from pathlib import Path

    package = Path(errors.__file__).parent
    stray = []
    for path in package.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef) and path.name != "errors.py":
                bases = {getattr(b, "id", getattr(b, "attr", "")) for b in node.bases}
                if bases & {"Exception", "ValueError", "RuntimeError", "FloatingPointError", "OSError"}:
                    stray.append(f"{path.name}:{node.name}")
    assert stray == []
    kinds = [k for k in vars(errors).values() if isinstance(k, type) and issubclass(k, Exception)]
    assert len(kinds) >= 10 and all(issubclass(k, errors.BlockswapError) for k in kinds)


def test_signal_and_baseline_names_come_from_their_registries():
    from blockswap import baselines, importance
    from blockswap.config import ImportanceConfig, RunConfig
    from blockswap.run.compare import RUNNERS

    assert set(RUNNERS) == set(baselines.BASELINES)
    assert RunConfig(baselines="magnitude, drop").baselines == ("magnitude", "drop")
    assert RunConfig(baselines=["none"]).baselines == ()
    assert ImportanceConfig(signals="drop_one=2,scale").signals == {"drop_one": 2.0, "scale": 1.0}
    assert set(ImportanceConfig().signals) == set(importance.SIGNALS)
    with pytest.raises(errors.ConfigError, match="unknown importance signal"):
        ImportanceConfig(signals={"bogus": 1})


def test_recovery_trains_every_weight_of_the_chosen_student(tmp_path, capsys, tiny_csv, tiny_teacher_dir):
    from blockswap import arch, export

    out = tmp_path / "run"
    argv = ["run", "--teacher", str(tiny_teacher_dir), "--dataset", str(tiny_csv), "--out", str(out), *FAST]
    assert main([*argv, "--baselines", "none", "--recovery-epochs", "1", "--max-blocks", "1"]) == 0
    rec = json.loads((out / "recovery.json").read_text())["students"]
    assert list(rec) == ["1"] and rec["1"]["folder"] == "model_recovered"
    assert rec["1"]["steps"] == 6 and rec["1"]["examples"] == 96  # 96 training rows in batches of 16: one epoch
    assert rec["1"]["kept_test_ci95"][0] <= rec["1"]["kept_test"] <= rec["1"]["kept_test_ci95"][1]
    chosen, recovered = export.load(out / "model"), export.load(out / "model_recovered")
    kept = [i for i in range(3) if i not in chosen.config.blockswap["substituted"]]
    for i in kept:  # kept blocks were frozen in the curve; recovery trains them
        a = next(arch.blocks(chosen)[i].parameters())
        b = next(arch.blocks(recovered)[i].parameters())
        assert not torch.equal(a, b)
    assert json.loads((out / "evaluation.json").read_text())["student_source"].endswith("model_recovered")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["recovery_steps"] == 6 and summary["kept_validation"] == rec["1"]["kept_validation_after"]
    assert "## Recovery" in (out / "report.md").read_text()


def test_recovery_leaves_the_original_weights_when_frozen(tmp_path, capsys, tiny_csv, tiny_teacher_dir):
    from blockswap import export

    out = tmp_path / "run"
    argv = ["run", "--teacher", str(tiny_teacher_dir), "--dataset", str(tiny_csv), "--out", str(out), *FAST]
    extra = ["--baselines", "none", "--recovery-epochs", "1", "--recovery-freeze-kept", "--max-blocks", "1"]
    assert main([*argv, *extra]) == 0
    chosen, recovered = export.load(out / "model"), export.load(out / "model_recovered")
    (sub,) = chosen.config.blockswap["substituted"]
    before, after = chosen.state_dict(), recovered.state_dict()
    moved = {k for k in before if not torch.equal(before[k], after[k])}
    assert moved and all(f"layer.{sub}." in k for k in moved), sorted(moved)[:5]  # the substitute only


def _curve_keeps(monkeypatch, kept) -> None:
    """Each curve step's validation kept is ``kept(state, step)`` (the teacher's row, step 0, is left alone)."""
    from blockswap.run import curve as curve_mod

    original = curve_mod._row

    def fixed(state, step, *args):
        row, metrics = original(state, step, *args)
        if step:
            row["kept"] = kept(state, step)
        return row, metrics

    monkeypatch.setattr(curve_mod, "_row", fixed)


def _stop_rule_chooses_step_one(monkeypatch, later: float = 0.5) -> None:
    """Make step 1 the only step that satisfies the stop rule (the later ones keep ``later`` on validation); the
    (full) curve goes on to step 3."""
    _curve_keeps(monkeypatch, lambda state, step: 1.0 if step <= 1 else later)


def test_recover_last_and_the_baselines_get_the_recovery_budget_too(
    tmp_path, capsys, tiny_csv, tiny_teacher_dir, monkeypatch
):
    _stop_rule_chooses_step_one(monkeypatch)
    out = tmp_path / "run"
    argv = ["run", "--teacher", str(tiny_teacher_dir), "--dataset", str(tiny_csv), "--out", str(out), *FAST]
    argv += ["--min-kept", "0.9", "--recovery-epochs", "0.5", "--recover-last", "--baselines", "distil,thesis"]
    argv += ["--stop-rule", "curve"]  # the last step is recovered because --recover-last asks, not to be chosen
    assert main([*argv, "--baseline-points", "all"]) == 0, capsys.readouterr().err
    rec = json.loads((out / "recovery.json").read_text())["students"]
    assert {k: v["folder"] for k, v in rec.items()} == {"1": "model_recovered", "3": "model_last_recovered"}
    assert (out / "model_last_recovered").is_dir() and rec["1"]["steps"] == rec["3"]["steps"] == 3
    curve = json.loads((out / "curve.json").read_text())
    base = json.loads((out / "baselines.json").read_text())
    for name in ("distil", "thesis"):
        for r, b in zip(curve["rows"][1:], base[name], strict=True):
            extra = rec[str(r["step"])]["steps"] if str(r["step"]) in rec else 0
            assert b["train_steps"] == r["train_steps"] + extra, (name, r["step"])
    assert "(recovered)" in (out / "report.md").read_text()


def test_recover_key_recovers_the_key_points_whatever_the_stop_rule_chose(
    tmp_path, capsys, tiny_csv, tiny_teacher_dir, monkeypatch
):
    """The suite compares at the step nearest a 50 % GMACs cut and the last step; with the stop rule choosing
    step 1, both are still recovered (step 2 from RUN/model_step2) and their baselines get those steps."""
    _stop_rule_chooses_step_one(monkeypatch)
    out = tmp_path / "run"
    argv = ["run", "--teacher", str(tiny_teacher_dir), "--dataset", str(tiny_csv), "--out", str(out), *FAST]
    argv += ["--min-kept", "0.9", "--recovery-epochs", "0.5", "--recover-key", "--baselines", "distil"]
    assert main([*argv, "--stop-rule", "curve"]) == 0, capsys.readouterr().err
    curve = json.loads((out / "curve.json").read_text())
    assert curve["chosen_step"] == 1 and [r["step"] for r in key_rows(curve["rows"][1:])] == [2, 3]
    rec = json.loads((out / "recovery.json").read_text())["students"]
    folders = {"1": "model_recovered", "2": "model_step2_recovered", "3": "model_last_recovered"}
    assert {k: v["folder"] for k, v in rec.items()} == folders
    assert all((out / f).is_dir() for f in folders.values()) and (out / "model_step2").is_dir()
    assert export.load(out / "model_step2").config.blockswap["substituted"] == curve["rows"][2]["substituted"]
    base = json.loads((out / "baselines.json").read_text())["distil"]
    assert [b["step"] for b in base] == [2, 3]
    for b in base:
        assert b["train_steps"] == curve["rows"][b["step"]]["train_steps"] + rec[str(b["step"])]["steps"]
        # paired against the recovered student of the same point, on the same test sentences
        ours = rec[str(b["step"])]
        assert b["blockswap_advantage"]["student"] == "recovered" and "test_per_example" in ours
        d = kept_difference(curve["rows"][0]["test_per_example"], ours["test_per_example"], b["test_per_example"],
                            seed=b["step"])  # fmt: skip
        assert (b["blockswap_advantage"]["kept_test"], b["blockswap_advantage"]["ci95"]) == (d["difference"], d["ci95"])
    assert "; blockswap " in (out / "report.md").read_text()


def _recovered_validation_kept(monkeypatch, kept: float) -> list[int]:
    """Every recovered student keeps ``kept`` on validation; returns the curve steps recovered, in order."""
    from blockswap.run import stages

    original, recovered = stages._recover, []

    def fixed(state, curve, source, step, teacher_val, **kw):
        entry, student = original(state, curve, source, step, teacher_val, **kw)
        recovered.append(step)
        return {**entry, "kept_validation_after": kept}, student

    monkeypatch.setattr(stages, "_recover", fixed)
    return recovered


def _substituted(folder) -> list[int]:
    return export.load(folder).config.blockswap["substituted"]


def test_the_recovered_stop_rule_chooses_the_last_step_when_it_keeps_enough_after_recovery(
    tmp_path, capsys, tiny_csv, tiny_teacher_dir, monkeypatch
):
    """Before recovery only step 1 keeps --min-kept; the last step, recovered first, keeps it after recovery: it
    is the final student (RUN/model_recovered), measured, reported and summarised as the chosen one, and step 1 is
    never recovered."""
    _stop_rule_chooses_step_one(monkeypatch)
    recovered = _recovered_validation_kept(monkeypatch, 0.95)
    out = tmp_path / "run"
    argv = ["run", "--teacher", str(tiny_teacher_dir), "--dataset", str(tiny_csv), "--out", str(out), *FAST]
    assert main([*argv, "--min-kept", "0.9", "--recovery-epochs", "0.5", "--baselines", "none"]) == 0
    assert capsys.readouterr().out.strip().endswith(f"model: {out / 'model_recovered'}")  # the final student's folder
    curve, rec = (json.loads((out / f).read_text()) for f in ("curve.json", "recovery.json"))
    assert curve["chosen_step"] == 1 and recovered == [3]
    assert (rec["chosen_step"], rec["curve_chosen_step"], rec["stop_rule"]) == (3, 1, "recovered")
    assert {k: v["folder"] for k, v in rec["students"].items()} == {"3": "model_recovered"}
    low, high = rec["students"]["3"]["kept_validation_after_ci95"]  # the noise the rule's reading has
    assert low <= high and rec["students"]["3"]["n_validation"] == 12  # the tiny set's validation split
    assert not (out / "model_last_recovered").exists()
    assert _substituted(out / "model_recovered") == curve["rows"][3]["substituted"] == _substituted(out / "model_last")
    summary, ev = (json.loads((out / f).read_text()) for f in ("summary.json", "evaluation.json"))
    assert (summary["chosen_step"], summary["curve_chosen_step"]) == (3, 1)
    assert summary["chosen_blocks"] == curve["rows"][3]["substituted"] and summary["kept_validation"] == 0.95
    assert ev["student_source"].endswith("model_recovered")
    assert summary["gmacs_cut"] == pytest.approx(curve["rows"][3]["gmacs_cut"], rel=1e-6)
    report = (out / "report.md").read_text()
    assert "| 3 **(chosen)**" in report and "| 1 **(chosen)**" not in report and "Stop rule `recovered`" in report
    assert "| kept (val) after [95 % CI] |" in report  # the recovery table: what the rule read, with its noise


def test_the_recovered_stop_rule_falls_back_to_the_curves_choice(
    tmp_path, capsys, tiny_csv, tiny_teacher_dir, monkeypatch
):
    """The last step, recovered, keeps too little: the curve's choice is recovered as under --stop-rule curve
    (the same weights) and is the final student; the last one stays in RUN/model_last_recovered."""
    _stop_rule_chooses_step_one(monkeypatch)
    recovered = _recovered_validation_kept(monkeypatch, 0.85)
    runs = {}
    for rule in ("recovered", "curve"):
        out = runs[rule] = tmp_path / rule
        argv = ["run", "--teacher", str(tiny_teacher_dir), "--dataset", str(tiny_csv), "--out", str(out), *FAST]
        argv += ["--min-kept", "0.9", "--recovery-epochs", "0.5", "--baselines", "none", "--stop-rule", rule]
        assert main(argv) == 0, capsys.readouterr().err
        # said, not hidden: the fallback passed before recovery but (mocked) keeps 0.85 after it
        assert "the final student (step 1) keeps 0.8500 on validation after recovery" in capsys.readouterr().out
    assert recovered == [3, 1, 1]  # recovered: the last, then the curve's choice; curve: its choice only
    rec = json.loads((runs["recovered"] / "recovery.json").read_text())
    assert (rec["chosen_step"], rec["curve_chosen_step"]) == (1, 1)
    assert {k: v["folder"] for k, v in rec["students"].items()} == {"3": "model_last_recovered", "1": "model_recovered"}
    summary = json.loads((runs["recovered"] / "summary.json").read_text())
    assert summary["chosen_step"] == 1 and summary["stop_rule"] == "recovered"
    assert _substituted(runs["recovered"] / "model_last_recovered") == _substituted(runs["recovered"] / "model_last")
    ours, theirs = (export.load(r / "model_recovered").state_dict() for r in runs.values())
    assert all(torch.equal(ours[k], theirs[k]) for k in theirs)
    assert "Stop rule `recovered`" not in (runs["recovered"] / "report.md").read_text()


def test_the_recovered_stop_rule_recovers_the_last_step_when_no_curve_step_kept_enough(
    tmp_path, capsys, tiny_csv, tiny_teacher_dir, monkeypatch
):
    """No curve step keeps --min-kept before recovery (as with a hybrid's untrained dropped block): the last step's
    student is still recovered, and is the final one when it keeps --min-kept then; when it does not, or is beyond
    what recovery adds one time in ten, the run exits 2 with nothing that looks done, resumable with a relaxed rule."""
    below = {"by": 0.01}
    _curve_keeps(monkeypatch, lambda state, step: state.cfg.run.min_kept - below["by"])
    recovered = _recovered_validation_kept(monkeypatch, 0.85)
    out = tmp_path / "run"
    argv = ["run", "--teacher", str(tiny_teacher_dir), "--dataset", str(tiny_csv), "--out", str(out), *FAST]
    argv += ["--recovery-epochs", "0.5", "--baselines", "none", "--min-kept", "0.9"]
    assert main([*argv, "--stop-rule", "curve"]) == 2  # the curve's own rule: nothing to choose, as before
    assert "no step keeps >= 0.9" in capsys.readouterr().err and recovered == []
    below["by"] = 0.1  # further below than recovery lifts a student one time in ten: not tried
    assert main([*argv, "--resume"]) == 2
    assert "no step keeps >= 0.9" in capsys.readouterr().err and recovered == []
    below["by"] = 0.01
    assert main([*argv, "--resume"]) == 2  # tried; it keeps 0.85 after recovery: exit 2 ...
    err = capsys.readouterr().err
    assert recovered == [3] and "0.8500 after recovery (RUN/model_last_recovered)" in err and "--resume" in err
    assert len(err.strip().splitlines()) == 1
    assert json.loads((out / "curve.unsatisfied.json").read_text())["recovered_last"]["kept_validation_after"] == 0.85
    assert not (out / "curve.json").exists() and not (out / "recovery.json").exists()  # ... and nothing looks done
    assert (out / "model_last_recovered").is_dir() and not (out / "model").exists()
    # a relaxed rule resumes (the stop rule may change until the curve is complete): the last step, recovered
    assert main([*argv, "--resume", "--min-kept", "0.8"]) == 0, capsys.readouterr().err
    assert recovered == [3, 3]
    curve, rec, summary, ev = (
        json.loads((out / f).read_text()) for f in ("curve.json", "recovery.json", "summary.json", "evaluation.json")
    )
    assert curve["chosen_step"] is None and rec["chosen_step"] == summary["chosen_step"] == 3
    assert {k: v["folder"] for k, v in rec["students"].items()} == {"3": "model_recovered"}
    assert not (out / "model").exists() and not (out / "curve.unsatisfied.json").exists()
    assert ev["student_source"].endswith("model_recovered")
    report = (out / "report.md").read_text()
    assert "| 3 **(chosen)**" in report and "before recovery, no step kept the minimum" in report


@pytest.mark.parametrize(
    "extra, freed_after, still_to_run",
    [
        (["--baselines", "magnitude"], "recovery.json", "evaluation.json"),  # nothing after recovery reads it
        (["--baselines", "distil", "--recovery-epochs", "0"], "baselines.json", "summary.json"),  # the baseline does
    ],
)
def test_the_teacher_cache_is_freed_once_no_stage_left_reads_it(
    tmp_path, tiny_csv, tiny_teacher_dir, monkeypatch, extra, freed_after, still_to_run
):
    """The cache (1.2 GB in the default run) was held to the end, through the export and its ONNX Runtime sessions."""
    from blockswap.run.state import RunState

    release, freed = RunState.release_teacher_cache, []

    def spy(self):
        if self._cache is not None:
            freed.append((len(self._cache.rows), self.path(freed_after).exists(), self.path(still_to_run).exists()))
        release(self)

    monkeypatch.setattr(RunState, "release_teacher_cache", spy)
    out = tmp_path / "run"
    argv = ["run", "--teacher", str(tiny_teacher_dir), "--dataset", str(tiny_csv), "--out", str(out), *FAST]
    assert main([*argv, *extra]) == 0
    assert len(freed) == 1 and freed[0][0] > 0 and freed[0][1:] == (True, False), freed


def test_the_distilbert_style_baseline_gets_the_substitution_paths_budget(tmp_path, capsys, tiny_csv, tiny_teacher_dir):
    out = tmp_path / "run"
    argv = ["run", "--teacher", str(tiny_teacher_dir), "--dataset", str(tiny_csv), "--out", str(out), *FAST]
    extra = ["--baselines", "distil", "--baseline-points", "all", "--recovery-epochs", "0"]  # recovery: test above
    assert main([*argv, *extra]) == 0, capsys.readouterr().err
    curve = json.loads((out / "curve.json").read_text())
    blockwise = json.loads((out / "blockwise.json").read_text())["budget"]
    base = json.loads((out / "baselines.json").read_text())["distil"]
    assert blockwise["steps"] == 3  # half an epoch of 6 batches
    for r, b in zip(curve["rows"][1:], base, strict=True):
        assert r["train_steps"] == blockwise["steps"] + r["step"] * 2  # block-wise + 2 end-to-end steps per swap
        assert (b["train_steps"], b["train_batch"]) == (r["train_steps"], r["train_batch"]) == (r["train_steps"], 16)
        assert b["train_seconds"] > 0 and b["kept_test_ci95"][0] <= b["kept_test"] <= b["kept_test_ci95"][1]
        assert len(b["dropped"]) in (1, 2)  # never every block; the count whose GMACs cut is nearest
        assert b["blockswap_advantage"]["student"] == "curve"  # no recovery: the curve's own student
    assert [len(b["dropped"]) for b in base] == sorted(len(b["dropped"]) for b in base)


def test_the_distil_students_are_saved_as_plain_shorter_models_that_score_as_in_the_run(
    tmp_path, capsys, tiny_csv, tiny_teacher_dir, monkeypatch
):
    """Each equal-budget layer-dropped student is RUN/distil_step<k>: the teacher's own class with the dropped
    blocks removed (no remote code), giving per test sentence the answers the baselines stage scored. Where one
    is ahead of the substituted student beyond the interval (here: made so at step 2), the summary, the report
    and the command's last lines point to it."""
    from transformers import AutoModelForSequenceClassification

    from blockswap.run import compare

    real = compare.kept_difference

    def behind_at_step_two(teacher, ours, theirs, *, seed):
        d = real(teacher, ours, theirs, seed=seed)
        return {**d, "difference": -0.25, "ci95": [-0.375, -0.125]} if seed == 2 else {**d, "ci95": [-0.5, 0.5]}

    monkeypatch.setattr(compare, "kept_difference", behind_at_step_two)
    out = tmp_path / "run"
    argv = ["run", "--teacher", str(tiny_teacher_dir), "--dataset", str(tiny_csv), "--out", str(out), *FAST]
    argv += ["--baselines", "distil", "--baseline-points", "all", "--recovery-epochs", "0", "--mixed-precision", "no"]
    assert main(argv) == 0, capsys.readouterr().err
    base = json.loads((out / "baselines.json").read_text())["distil"]
    assert [b["folder"] for b in base] == ["distil_step1", "distil_step2", "distil_step3"]
    for b in base:
        folder = out / b["folder"]
        assert not (folder / "modeling_blockswap.py").exists()
        plain = AutoModelForSequenceClassification.from_pretrained(folder)
        assert plain.config.num_hidden_layers == arch.num_blocks(plain) == 3 - len(b["dropped"])
        assert (
            main(["evaluate", "--model", str(folder), "--dataset", str(tiny_csv), "--json", str(tmp_path / "e.json")])
            == 0
        )
        scored = json.loads((tmp_path / "e.json").read_text())
        assert scored["score"] == b["test_score"] and scored["correct"] == b["test_per_example"]["correct"]
    ahead = json.loads((out / "summary.json").read_text())["baselines_ahead"]
    assert [(a["baseline"], a["step"], a["folder"]) for a in ahead] == [("distil", 2, "distil_step2")]
    assert ahead[0]["kept_test"] == base[1]["kept_test"] and ahead[0]["blockswap_advantage"]["kept_test"] == -0.25
    printed = capsys.readouterr().out.splitlines()
    note = [line for line in printed if line.startswith("note: the distil baseline's student")]
    assert (
        len(note) == 1
        and str(out / "distil_step2") in note[0]
        and "0.2500 [0.1250, 0.3750] more than step 2" in note[0]
    )
    assert "**Behind a baseline here**: the distil baseline's student `distil_step2`" in (out / "report.md").read_text()


def test_the_thesis_baseline_gets_the_same_budget_labels_only_and_random_substitutes(
    tmp_path, capsys, tiny_csv, tiny_teacher_dir, monkeypatch
):
    from blockswap import distill

    calls = []
    original = distill.end_to_end

    def spy(student, teacher, loader, cfg, **kw):
        if kw.get("labels_only"):
            subs = [b for b in arch.blocks(student) if isinstance(b, CompactBlock)]
            calls.append(
                {"steps": kw["steps"], "frozen": cfg.freeze_kept, "up_norm": [b.up.weight.norm().item() for b in subs]}
            )
        return original(student, teacher, loader, cfg, **kw)

    monkeypatch.setattr(distill, "end_to_end", spy)
    out = tmp_path / "run"
    argv = ["run", "--teacher", str(tiny_teacher_dir), "--dataset", str(tiny_csv), "--out", str(out), *FAST]
    extra = ["--baselines", "thesis", "--baseline-points", "key", "--recovery-epochs", "0"]  # recovery: test above
    assert main([*argv, *extra]) == 0, capsys.readouterr().err
    curve = json.loads((out / "curve.json").read_text())
    base = json.loads((out / "baselines.json").read_text())["thesis"]
    rows = {r["step"]: r for r in curve["rows"]}
    near_half = min(curve["rows"][1:], key=lambda r: abs(r["gmacs_cut"] - 0.5))["step"]
    assert [b["step"] for b in base] == sorted({near_half, 3})  # key points: ~50 % GMACs cut and every block
    for b, call in zip(base, calls, strict=True):
        r = rows[b["step"]]
        assert (b["train_steps"], b["train_batch"]) == (r["train_steps"], r["train_batch"]) == (call["steps"], 16)
        assert b["substituted"] == r["substituted"] and b["gmacs_cut"] == r["gmacs_cut"] and not call["frozen"]
        assert all(n > 0 for n in call["up_norm"]), "random substitutes, not the zero-contribution start"
    assert "thesis kept" in (out / "report.md").read_text()


def test_a_time_budget_cuts_block_wise_training_and_recovery_to_fit_and_says_so(
    tmp_path, capsys, tiny_csv, tiny_teacher_dir
):
    """A budget already spent when training starts: each training stage stops after the steps that measure its
    pace (8), the artifacts record planned and taken steps, and the summary, report and printed note say so."""
    out = tmp_path / "run"
    argv = ["run", "--teacher", str(tiny_teacher_dir), "--dataset", str(tiny_csv), "--out", str(out), *FAST]
    argv += ["--blockwise-epochs", "4", "--recovery-epochs", "4", "--baselines", "none", "--time-budget", "0.01"]
    argv += ["--e2e-steps", "0"]  # the curve's own end-to-end steps are not budgeted (none by default)
    assert main(argv) == 0, capsys.readouterr().err
    printed = capsys.readouterr().out
    blockwise = json.loads((out / "blockwise.json").read_text())["budget"]
    assert (blockwise["steps"], blockwise["planned_steps"]) == (8, 24)
    assert blockwise["time_budget"]["time_budget"] == 0.01 and blockwise["time_budget"]["training_seconds"] == 0
    assert all(r["train_steps"] == 8 for r in json.loads((out / "curve.json").read_text())["rows"][1:])
    rec = json.loads((out / "recovery.json").read_text())["students"]["3"]
    assert (rec["steps"], rec["planned_steps"], rec["examples"]) == (8, 24, 8 * 16)
    tb = json.loads((out / "summary.json").read_text())["time_budget"]
    assert {k: tb[k] for k in ("seconds", "blockwise", "recovery", "cut", "over")} == {
        "seconds": 0.01, "blockwise": {"steps": 8, "planned_steps": 24}, "recovery": {"steps": 8, "planned_steps": 24},
        "cut": True, "over": True,
    }  # fmt: skip
    assert 0 < tb["training_seconds"] < tb["seconds_taken"]  # what it cannot shorten took the rest
    line = tables.time_budget(tb)
    fixed = round(tb["seconds_taken"] - tb["training_seconds"])
    assert line.startswith(
        "--time-budget 0.01 s: block-wise distillation 8 of 24 steps, recovery 8 of 24 steps (cut, and over by "
        f"{tb['seconds_taken'] - 0.01:.0f} s: {tb['seconds_taken']:.0f} s by the summary, {fixed:.0f} s of them in "
        "what it does not shorten"
    )
    assert f"**Over the time budget**: {line}" in (out / "report.md").read_text()
    assert f"note: {line}" in printed
    assert "--time-budget 0.01 s: already spent, and about " in printed  # said before training, too
    assert "the run will end over its budget (near " in printed


def test_as_a_command_the_time_budget_counts_from_the_process_start(
    tmp_path, capsys, monkeypatch, tiny_csv, tiny_teacher_dir
):
    """`blockswap run` (no argv: the console script) counts the seconds its imports took before main() ran."""
    from blockswap import cli

    out = tmp_path / "run"
    argv = ["run", "--teacher", str(tiny_teacher_dir), "--dataset", str(tiny_csv), "--out", str(out), *FAST]
    argv += ["--blockwise-epochs", "4", "--recovery-epochs", "4", "--baselines", "none", "--time-budget", "3600"]
    monkeypatch.setattr(cli, "_since_process_start", lambda: 3600.0)  # as if the imports had taken the hour
    monkeypatch.setattr("sys.argv", ["blockswap", *argv])
    assert main() == 0, capsys.readouterr().err
    tb = json.loads((out / "summary.json").read_text())["time_budget"]
    assert tb["blockwise"] == {"steps": 8, "planned_steps": 24} and tb["over"] and tb["seconds_taken"] > 3600


def test_the_time_budget_line_says_whether_the_run_fitted():
    tb = {"seconds": 600, "blockwise": {"steps": 76, "planned_steps": 530}, "cut": True}
    cut = "--time-budget 600 s: block-wise distillation 76 of 530 steps (cut to fit)"
    assert tables.time_budget({**tb, "seconds_taken": 590.0, "training_seconds": 80.0, "over": False}) == cut
    assert tables.time_budget(tb) == cut  # a summary.json written before the verdict was recorded
    over = tables.time_budget({**tb, "seconds_taken": 651.4, "training_seconds": 20.0, "over": True})
    assert over == (
        "--time-budget 600 s: block-wise distillation 76 of 530 steps (cut, and over by 51 s: 651 s by the summary, "
        "631 s of them in what it does not shorten (all but block-wise distillation and recovery): a budget below "
        "that cannot be met)"
    )
    short = tables.time_budget({**tb, "seconds_taken": 608.7, "training_seconds": 153.3, "over": True})
    assert short == (  # what it does not shorten fits: the training or the reserve after it fell short
        "--time-budget 600 s: block-wise distillation 76 of 530 steps (cut, and over by 9 s: 609 s by the summary, "
        "455 s of them in what it does not shorten (all but block-wise distillation and recovery))"
    )


def test_a_time_budget_with_room_to_spare_changes_no_number(tmp_path, capsys, tiny_csv, tiny_teacher_dir):
    logs = {}
    for name, extra in (("free", []), ("budget", ["--time-budget", "100000"])):
        out = tmp_path / name
        argv = ["run", "--teacher", str(tiny_teacher_dir), "--dataset", str(tiny_csv), "--out", str(out), *FAST]
        argv += ["--blockwise-epochs", "2", "--recovery-epochs", "2", "--baselines", "none", "--mixed-precision", "no"]
        assert main([*argv, *extra]) == 0, capsys.readouterr().err
        logs[name] = (
            json.loads((out / "blockwise.json").read_text())["mse_by_quarter"],
            json.loads((out / "recovery.json").read_text())["students"]["3"]["log"],
            json.loads((out / "summary.json").read_text()),
        )
    assert logs["budget"][:2] == logs["free"][:2]
    assert "time_budget" not in logs["free"][2]
    assert logs["budget"][2]["time_budget"]["cut"] is False and logs["budget"][2]["time_budget"]["over"] is False
    assert logs["budget"][2]["time_budget"]["recovery"] == {"steps": 12, "planned_steps": 12}
    assert "note: --time-budget" not in capsys.readouterr().out


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--time-budget", "0"], "run.time_budget must be positive"),
        (["--time-budget", "600", "--baselines", "distil"], "--time-budget does not bound the distil baseline"),
    ],
)
def test_time_budget_mistakes_are_one_line(tmp_path, capsys, tiny_csv, tiny_teacher_dir, flags, message):
    out = tmp_path / "run"
    argv = ["run", "--teacher", str(tiny_teacher_dir), "--dataset", str(tiny_csv), "--out", str(out), *FAST]
    assert main([*argv, *flags]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_a_resumed_run_counts_the_time_its_earlier_stages_took(tmp_path, capsys, tiny_csv, tiny_teacher_dir):
    """The budget is the whole run's: on --resume, the stages done before (timings.json) have spent it."""
    out = tmp_path / "run"
    argv = ["run", "--teacher", str(tiny_teacher_dir), "--dataset", str(tiny_csv), "--out", str(out), *FAST]
    argv += ["--blockwise-epochs", "4", "--recovery-epochs", "4", "--baselines", "none", "--time-budget", "3600"]
    assert main(argv) == 0, capsys.readouterr().err
    assert json.loads((out / "summary.json").read_text())["time_budget"]["cut"] is False
    for name in ("blockwise.json", "curve.json", "recovery.json", "evaluation.json"):
        (out / name).unlink()
    timings = json.loads((out / "timings.json").read_text())
    (out / "timings.json").write_text(json.dumps({**timings, "importance": 3600.0}))  # as if it took the hour
    assert main([*argv, "--resume"]) == 0, capsys.readouterr().err
    tb = json.loads((out / "summary.json").read_text())["time_budget"]
    assert tb["blockwise"] == {"steps": 8, "planned_steps": 24} and tb["recovery"]["steps"] == 8 and tb["cut"]


def test_under_a_time_budget_the_stop_rule_skips_a_hopeless_recovery_and_shares_the_time(
    tmp_path, capsys, tiny_csv, tiny_teacher_dir, monkeypatch
):
    """Under --time-budget the last step is recovered first only when a recovery could lift it to --min-kept
    (0.96 + 0.024 >= 0.97: tried; 0.5: not, its time goes to the curve's choice); each recovery shares what is left
    with those still to come (--recover-key: the key point 2 and the last)."""
    from blockswap.run import budget, stages

    shares, deadline = [], budget.recovery_deadline
    monkeypatch.setattr(
        stages.time_budget, "recovery_deadline", lambda s, after: shares.append(after) or deadline(s, after)
    )
    recovered = _recovered_validation_kept(monkeypatch, 0.85)  # every recovered student fails --min-kept 0.9
    argv = ["run", "--teacher", str(tiny_teacher_dir), "--dataset", str(tiny_csv), *FAST]
    argv += ["--min-kept", "0.97", "--recovery-epochs", "0.5", "--baselines", "none"]
    cases = [(0.96, ["--time-budget", "3600"], [3, 1], [0, 0]), (0.5, ["--time-budget", "3600"], [1], [0]),
             (0.5, [], [3, 1], [0, 0]), (0.5, ["--time-budget", "3600", "--recover-key"], [1, 3, 2], [2, 1, 0])]  # fmt: skip
    for i, (later, flags, order, afters) in enumerate(cases):
        _stop_rule_chooses_step_one(monkeypatch, later)
        shares.clear(), recovered.clear()
        assert main([*argv, "--out", str(tmp_path / str(i)), *flags]) == 0, capsys.readouterr().err
        assert recovered == order, (later, flags)
        assert shares == afters, (later, flags)
        said = (
            "--time-budget: the last step's student keeps 0.5000 on validation before recovery"
            in capsys.readouterr().out
        )
        assert said == (later == 0.5 and bool(flags)), (later, flags)


def _budget_state(overrides: dict, task: str = "classification", label_names=("neg", "pos")):
    """A run's state as the budget reads it: 100 training texts of 10 tokens, 500 validation and 400 test tokens, a
    teacher test pass of 0.4 s (1 ms per token), 300 s of 1000 left."""
    import time
    from types import SimpleNamespace

    import torch
    from datasets import Dataset

    from blockswap.config import build_config

    split = lambda n: Dataset.from_dict({"input_ids": [[1] * 10] * n})  # noqa: E731
    data = SimpleNamespace(
        splits={"train": split(100), "validation": split(50), "test": split(40)}, task=task,
        label_names=list(label_names), tokenizer=[0] * 1000,
    )  # fmt: skip
    cfg = build_config(overrides={"run": {"time_budget": 1000.0, "baselines": "none", **overrides.get("run", {})},
                                  "distill": overrides.get("distill", {})})  # fmt: skip
    return SimpleNamespace(
        cfg=cfg, data=data, spent_before=600.0, started=time.perf_counter() - 100.0, teacher=None, sts=None,
        read=lambda name: {"test_seconds": 0.4}, accelerator=SimpleNamespace(device=torch.device("cpu")),
        cpu_paces=None,
    )  # fmt: skip


def test_the_training_stages_deadlines_leave_the_reserve_and_share_the_rest(monkeypatch):
    """Block-wise distillation gets 2/3 (its 530 planned steps against recovery's 265) of what the work after it
    leaves; a recovery with one more to come, half of what the work after it leaves. The work is counted in tokens
    through the teacher (1 ms each here), reserved with a 10 % margin: hand-computed for the default recipe below."""
    import time
    from types import SimpleNamespace

    from blockswap.config import build_config
    from blockswap.run import budget

    monkeypatch.setattr(budget.arch, "num_blocks", lambda model: 6)
    state = _budget_state({})
    latency_1, latency_1_32 = 7 * 128, 7 * 33 * 128  # 2 warm-up + 5 timed passes at sequence 128
    point = 0.75 * (500 + 400)  # a student on validation and test
    curve = latency_1 + 6 * (point + 0.75 * latency_1)  # the teacher's latency, then 6 steps (no end-to-end steps)
    later = 0.75 * 400 + 1.75 * latency_1_32 + 10_000  # evaluation stage (student test, both latencies), report
    now = time.monotonic()
    deadline, plan = budget.blockwise_deadline(state, 530, 265)
    assert plan["evaluation_reserve"] == pytest.approx(1.1 * (curve + point + later) / 1000, abs=0.05)
    assert deadline - now == pytest.approx((300 - 1.1 * (curve + point + later) / 1000) * 2 / 3, abs=0.5)
    deadline, plan = budget.recovery_deadline(state, 1)
    assert plan["evaluation_reserve"] == pytest.approx(1.1 * (2 * point + later) / 1000, abs=0.05)
    assert deadline - now == pytest.approx((300 - 1.1 * (2 * point + later) / 1000) / 2, abs=0.5)
    assert budget.blockwise_deadline(SimpleNamespace(cfg=build_config(), spent_before=0.0, started=0.0), 530, 265) == (
        None,
        {},
    )


def test_the_export_is_reserved_at_the_cpus_paces_on_any_device(monkeypatch):
    """The ONNX export runs on the CPU, much of it on one core: its serial tokens are priced at the teacher's pace on
    one CPU thread, the rest at its pace on all of them. On a CPU run that is the device's price (1 ms a token here);
    on a GPU run, whose evaluations are priced at the device's pace, it is timed on a CPU copy of the teacher. Each
    pace is timed once per run."""
    import time

    import torch

    from blockswap.run import budget

    monkeypatch.setattr(budget.arch, "num_blocks", lambda model: 6)
    timed = []

    def time_on_cpu(state, threads=None):
        timed.append(threads)
        return 0.0003 if threads == 1 else 0.0001

    monkeypatch.setattr(budget, "_time_on_cpu", time_on_cpu)
    plain = _budget_state({})
    device_work = 1.1 * budget.work_after(plain, "blockwise") / 1000  # seconds at 1 ms a token, with the margin
    assert budget.reserve(plain, "blockwise") == pytest.approx((device_work, 0.0))
    assert "export_reserve" not in budget.recovery_deadline(plain, 0)[1] and timed == []  # no export: nothing timed
    cpu = _budget_state({"run": {"export": "onnx"}})
    assert 1.1 * budget.work_after(cpu, "blockwise") / 1000 == pytest.approx(device_work)  # not device work
    export = 1.1 * (budget.EXPORT_SERIAL_TOKENS * 0.0003 + budget.EXPORT_TOKENS / 1000)
    assert budget.reserve(cpu, "blockwise") == pytest.approx((device_work, export))
    assert timed == [1]  # only the one-thread pace: all threads' is the teacher stage's test pass
    gpu = _budget_state({"run": {"export": "onnx"}})
    gpu.accelerator.device = torch.device("cuda")
    export = 1.1 * (budget.EXPORT_SERIAL_TOKENS * 0.0003 + budget.EXPORT_TOKENS * 0.0001)
    assert budget.reserve(gpu, "blockwise") == pytest.approx((device_work, export))
    now = time.monotonic()
    deadline, plan = budget.recovery_deadline(gpu, 0)
    assert timed == [1, None, 1]  # once per run
    assert deadline - now == pytest.approx(300 - sum(budget.reserve(gpu, "recovery")), abs=0.5)  # 300 s were left
    assert plan["export_reserve"] == pytest.approx(export, abs=0.05)
    assert plan["evaluation_reserve"] == pytest.approx(sum(budget.reserve(gpu, "recovery")), abs=0.05)
    slow = _budget_state({"run": {"export": "onnx"}})  # timing the two paces takes a second: not left for training
    slow.accelerator.device = torch.device("cuda")
    monkeypatch.setattr(budget, "_time_on_cpu", lambda state, threads=None: time.sleep(0.5) or 0.0001)
    now = time.monotonic()
    deadline, plan = budget.blockwise_deadline(slow, 530, 265)
    assert plan["seconds_left"] == pytest.approx(299.0, abs=0.2)
    share = (299 - sum(budget.reserve(slow, "blockwise"))) * 2 / 3  # of what was left after the timing
    assert deadline - now == pytest.approx(1 + share, abs=0.3)  # counted from when the timing ended


def test_the_cpu_pace_is_timed_on_a_copy_of_the_teacher(monkeypatch):
    """The teacher stays where it is: its pace on the CPU is timed on a CPU copy, over every 4th test batch after the
    first of them once untimed, per real (unpadded) token, on the threads asked for; torch's thread pool is restored
    after."""
    import time
    from types import SimpleNamespace

    from blockswap.run import budget

    from .conftest import labelled_batches, tiny_model

    teacher, batches = tiny_model(), labelled_batches(16)  # 27 real tokens each
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    seen = []

    def predict(model, loader):
        seen.append((model, [b["input_ids"] for b in loader], torch.get_num_threads()))
        time.sleep(0.1)

    monkeypatch.setattr(budget, "predict", predict)
    state = SimpleNamespace(teacher=teacher, data=SimpleNamespace(loader=lambda split: batches))
    threads = torch.get_num_threads()
    seconds = budget._time_on_cpu(state, threads=1)
    budget._time_on_cpu(state)
    ((model, warm, used), (same, timed, _), (_, _, used_all), _) = seen
    assert model is same and model is not teacher and next(model.parameters()).device.type == "cpu"
    sampled = [batches[i]["input_ids"].data_ptr() for i in (0, 4, 8, 12)]
    assert ([t.data_ptr() for t in warm], [t.data_ptr() for t in timed]) == (sampled[:1], sampled)
    assert (used, used_all, torch.get_num_threads()) == (1, threads, threads)
    assert seconds == pytest.approx(0.1 / 108, rel=0.5)  # the timed call alone: 4 batches of 27 real tokens
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())


def test_the_reserve_counts_work_whose_size_does_not_follow_the_data(monkeypatch):
    """End-to-end steps per curve step, pruning baselines, vocabulary pruning, the export, an embedding model's
    probe and STS pairs each add their own tokens to what the run reserves after block-wise distillation."""
    from types import SimpleNamespace

    import torch

    from blockswap.run import budget

    monkeypatch.setattr(budget.arch, "num_blocks", lambda model: 6)
    monkeypatch.setattr(budget, "prunable", lambda model: [torch.zeros(2000, 10)])  # 20,000 weights: 10 tokens
    base = budget.work_after(_budget_state({}), "blockwise")
    extra = {
        "e2e": ({"distill": {"e2e_steps": 10}}, 6 * 10 * 32 * 10 * 3 * 0.75),  # 6 steps x 10 batches of 32 x 10 tokens
        "magnitude": ({"run": {"baselines": "magnitude"}}, 2 * (500 + 10)),  # 2 key points: validation + top-k
        "vocab": ({"run": {"prune_vocab": True}}, 0.75 * (3 * 1000 + 400)),  # each token alone, then the test split
    }
    for name, (overrides, tokens) in extra.items():
        assert budget.work_after(_budget_state(overrides), "blockwise") - base == pytest.approx(tokens), name
    probe = 1.75 * (100 * 10 + 400)  # teacher and student embed the 100 training texts (< 2,000) and the test split
    embedding = budget.work_after(_budget_state({}, task="embedding"), "blockwise")
    assert embedding - base == pytest.approx(probe)
    assert budget.work_after(_budget_state({}, task="embedding", label_names=()), "blockwise") == base  # no probe
    sts = _budget_state({})
    sts.sts = SimpleNamespace(tokens=200)  # --eval-dataset: each curve step, the recovery and both models at the end
    assert budget.work_after(sts, "blockwise") - base == pytest.approx(6 * 150 + 150 + 1.75 * 200)
