"""`blockswap run` end to end on a tiny random teacher and a tiny CSV (no network)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from blockswap import export
from blockswap.cli import main

from .conftest import padded_batch

FAST = [
    "--e2e-steps", "2", "--blockwise-epochs", "0.5", "--probe-steps", "2", "--importance-batches", "2",
    "--min-kept", "0.01", "--eval-seq-len", "16", "--compact-hidden", "8", "--compact-heads", "2",
    "--compact-ffn", "16", "--distill-batch-size", "16",
]  # fmt: skip
ARTIFACTS = [
    "run.json", "config.yaml", "teacher.json", "importance.json", "blockwise.json", "substitutes.safetensors",
    "curve.json", "curve.csv", "evaluation.json", "baselines.json", "summary.json", "report.md", "curve.png",
    "importance.png", "baselines.png", "metrics.png", "timings.json",
]  # fmt: skip


def test_run_end_to_end_then_resume(tmp_path, capsys, tiny_csv, tiny_teacher_dir):
    out = tmp_path / "run"
    argv = ["run", "--teacher", str(tiny_teacher_dir), "--dataset", str(tiny_csv), "--out", str(out), *FAST]
    argv += ["--baselines", "magnitude,random,drop"]
    assert main(argv) == 0, capsys.readouterr().err
    for name in ARTIFACTS:
        assert (out / name).exists(), name
    curve = json.loads((out / "curve.json").read_text())
    rows = curve["rows"]
    assert [r["step"] for r in rows] == [0, 1, 2, 3]
    assert sorted(r["block"] for r in rows[1:]) == [0, 1, 2]
    assert rows[-1]["substituted"] == [0, 1, 2]
    for key in ("params", "params_cut", "gmacs", "gmacs_cut", "score", "kept", "latency_ms", "substituted", "block"):
        assert key in rows[1]
    assert rows[0]["params_cut"] == 0 and rows[-1]["gmacs_cut"] > rows[1]["gmacs_cut"] > 0
    for r in rows:
        low, high = r["kept_test_ci95"]
        assert low <= r["kept_test"] <= high and r["n_test"] == 12
    summary = json.loads((out / "summary.json").read_text())
    assert summary["chosen_step"] == 3 and 0 < summary["gmacs_cut"] < 1
    assert summary["kept_test_ci95"][0] <= summary["kept_test"] <= summary["kept_test_ci95"][1]
    assert summary["host"]["cores"] >= 1 and summary["training_precision"] in ("fp32", "bf16")
    report = (out / "report.md").read_text()
    assert f"on {summary['host']['cpu']}, {summary['host']['cores']} cores" in report
    secs = summary["seconds_per_stage"]  # the wall-time line in words, not a Python dict
    assert f"- wall time: teacher {secs['teacher']:.0f} s, importance {secs['importance']:.0f} s" in report
    assert f"(this invocation {secs['total_this_invocation']:.0f} s)" in report and "{'teacher'" not in report
    assert "Substitute: down to 8, 2 transformer layers × 2 heads (feed-forward 16, relu)" in report  # a classifier's
    base = json.loads((out / "baselines.json").read_text())
    assert len(base["drop"]) == 3, "layer dropping is cumulative: every step"
    near_half = min(rows[1:], key=lambda r: abs(r["gmacs_cut"] - 0.5))["step"]
    for name in ("magnitude", "random"):  # the key points by default
        assert [b["step"] for b in base[name]] == sorted({near_half, 3}), name

    model = export.load(out / "model")
    remote = __import__("transformers").AutoModelForSequenceClassification.from_pretrained(
        out / "model", trust_remote_code=True
    )
    ids, mask = padded_batch(seq=6)
    ids = ids.clamp(max=20)
    with torch.no_grad():
        torch.testing.assert_close(
            model(input_ids=ids, attention_mask=mask).logits, remote.eval()(input_ids=ids, attention_mask=mask).logits
        )

    # --resume after deleting the last artifact recomputes only that stage
    curve_mtime = (out / "curve.json").stat().st_mtime_ns
    (out / "baselines.json").unlink()
    capsys.readouterr()
    assert main([*argv, "--resume"]) == 0
    log = capsys.readouterr().out
    assert "[baselines] running" in log
    for stage in ("teacher", "importance", "blockwise", "curve", "evaluation"):
        assert f"[{stage}]" in log and f"[{stage}] running" not in log
    assert (out / "baselines.json").exists()
    assert (out / "curve.json").stat().st_mtime_ns == curve_mtime

    # without --resume the folder is refused; with other flags the config mismatch is refused
    assert main(argv) == 2
    assert "--resume" in capsys.readouterr().err
    assert main([*argv, "--resume", "--alpha", "0.9"]) == 2
    err = capsys.readouterr().err
    assert "config differs" in err and "distill.alpha 0.5 -> 0.9" in err  # what differs is named

    assert main(["report", str(out)]) == 0

    # the saved student evaluates from its folder (tokenizer included), with no remote-code prompt
    capsys.readouterr()
    assert (
        main(
            ["evaluate", "--model", str(out / "model"), "--dataset", str(tiny_csv), "--json", str(tmp_path / "ev.json")]
        )
        == 0
    )
    assert "Do you wish" not in "".join(capsys.readouterr())
    assert json.loads((tmp_path / "ev.json").read_text())["n"] == 12


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--min-kept", "0"], "--min-kept"),
        (["--min-kept", "1.5"], "--min-kept"),
        (["--baselines", "magnitude,bogus"], "unknown baseline"),
        (["--compact-hidden", "9", "--compact-heads", "2"], "divisible"),
        (["--mixed-precision", "fp16", "--cpu"], "needs a GPU"),
        (["--mixed-precision", "fp8"], "--mixed-precision"),
        (["--int8-scales", "per-row"], "--int8-scales"),
        (["--drop-blocks", "-1"], "--drop-blocks"),
    ],
)
def test_run_argument_errors(tmp_path, capsys, extra, message):
    assert main(["run", "--out", str(tmp_path / "r"), *extra]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "r").exists()


def test_run_refuses_foreign_folder_and_non_classifier(tmp_path, capsys, tiny_csv):
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    assert main(["run", "--out", str(tmp_path / "busy"), "--dataset", str(tiny_csv)]) == 2
    assert "not a blockswap run" in capsys.readouterr().err

    from transformers import BertConfig, BertModel

    from .conftest import tiny_tokenizer

    enc = tmp_path / "encoder"
    BertModel(
        BertConfig(vocab_size=40, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=8)
    ).save_pretrained(enc)
    tiny_tokenizer(enc)
    assert main(["run", "--teacher", str(enc), "--dataset", str(tiny_csv), "--out", str(tmp_path / "r2"), *FAST]) == 2
    assert "not a sequence or token classifier" in capsys.readouterr().err


def test_unsatisfiable_stop_rule_still_writes_the_curve(tmp_path, capsys, tiny_csv, tiny_teacher_dir):
    out = tmp_path / "run"
    argv = ["run", "--teacher", str(tiny_teacher_dir), "--dataset", str(tiny_csv), "--out", str(out), *FAST]
    assert main([*argv, "--target-gmacs-cut", "0.99", "--baselines", "none"]) == 2
    err = capsys.readouterr().err
    assert "target-gmacs-cut" in err and "curve" in err
    assert (out / "curve.csv").exists() and (out / "curve.unsatisfied.json").exists()
    assert not (out / "model").exists()
    # what the message says works: the same run resumed with a relaxed stop rule, from the curve on
    blockwise = (out / "blockwise.json").stat().st_mtime_ns
    assert main([*argv, "--target-gmacs-cut", "0.2", "--baselines", "none", "--resume"]) == 0, capsys.readouterr().err
    assert (out / "model").is_dir() and not (out / "curve.unsatisfied.json").exists()
    assert (out / "blockwise.json").stat().st_mtime_ns == blockwise, "the stages before the curve are not re-run"
    assert "target_gmacs_cut: 0.2" in (out / "config.yaml").read_text()
    # anything else, or the stop rule once the curve is complete, must match the run's config
    for changed in (["--target-gmacs-cut", "0.2", "--seed", "1"], ["--target-gmacs-cut", "0.3"]):
        assert main([*argv, *changed, "--baselines", "none", "--resume"]) == 2
        assert "the config differs" in capsys.readouterr().err


def test_a_hybrid_run_drops_the_least_important_block_then_substitutes(tmp_path, capsys, tiny_csv, tiny_teacher_dir):
    from blockswap import arch, measure

    out = tmp_path / "run"
    argv = ["run", "--teacher", str(tiny_teacher_dir), "--dataset", str(tiny_csv), "--out", str(out), *FAST]
    argv += ["--drop-blocks", "1", "--recovery-epochs", "1", "--recover-key", "--baselines", "thesis"]
    argv += ["--export", "onnx", "--mixed-precision", "no"]  # fp32 points, as `evaluate` scores the saved student
    capsys.readouterr()
    assert main([*argv, "--drop-blocks", "3"]) == 2  # the teacher has 3 blocks (the last flag given stands)
    err = capsys.readouterr().err
    assert "--drop-blocks 3" in err and "at least one must stay" in err and len(err.strip().splitlines()) == 1
    assert not out.exists(), "refused before the run starts"
    finetune = ["run", "--finetune-model", str(tiny_teacher_dir), "--dataset", str(tiny_csv), "--out", str(out)]
    assert main([*finetune, "--drop-blocks", "3"]) == 2  # a run that fine-tunes its teacher: read from the base
    assert "--drop-blocks 3" in capsys.readouterr().err and not out.exists()
    assert main(argv) == 0, capsys.readouterr().err
    order = json.loads((out / "importance.json").read_text())["order"]
    curve = json.loads((out / "curve.json").read_text())
    rows = curve["rows"]
    assert [r["block"] for r in rows[1:]] == order
    assert rows[1]["dropped"] == [order[0]] and rows[1]["substituted"] == []
    assert rows[-1]["dropped"] == [order[0]] and rows[-1]["substituted"] == sorted(order[1:])
    teacher = export.load(tiny_teacher_dir)  # the dropped block's whole cost is gone at step 1
    per_block = measure.count_macs(teacher, seq_len=16)["per_block"]
    assert rows[0]["gmacs"] - rows[1]["gmacs"] == pytest.approx(per_block[order[0]] / 1e9)
    # the curve's student is saved as the shorter model, which scores what the curve measured
    chosen = curve["chosen_step"]
    model = export.load(out / "model")
    assert arch.num_blocks(model) == 3 - len(rows[chosen]["dropped"])
    assert model.config.blockswap["dropped"] == rows[chosen]["dropped"]
    capsys.readouterr()
    assert (
        main(
            ["evaluate", "--model", str(out / "model"), "--dataset", str(tiny_csv), "--json", str(tmp_path / "e.json")]
        )
        == 0
    )
    scored = json.loads((tmp_path / "e.json").read_text())  # the loss tells two near-chance models apart
    assert scored["loss"] == pytest.approx(rows[chosen]["test_metrics"]["loss"], abs=1e-6)
    recovered = json.loads((out / "recovery.json").read_text())["students"]
    assert all(s["steps"] > 0 for s in recovered.values()) and str(rows[-1]["step"]) in recovered
    summary = json.loads((out / "summary.json").read_text())
    assert summary["chosen_dropped"] == [order[0]]
    exported = json.loads((out / "export.json").read_text())["student"]  # the shorter student exports with parity
    assert exported["parity"]["passed"] and exported["parity"]["max_abs_logit_diff"] <= 1e-4
    # the thesis's procedure at a hybrid point drops the same block: the same parameters are cut
    for b in json.loads((out / "baselines.json").read_text())["thesis"]:
        assert b["params_cut"] == pytest.approx(rows[b["step"]]["params_cut"])
    report = (out / "report.md").read_text()
    assert f"| 1 | {order[0]} (dropped) |" in report and "Hybrid students (`--drop-blocks 1`)" in report
    assert f"blocks {sorted(order[1:])}; block {order[0]} dropped" in report


@pytest.mark.parametrize(
    "preset, params_cut, gmacs_cut",
    [("configs/bert-base-imdb.yaml", 0.415, 0.531), ("configs/distilbert-imdb.yaml", 0.507, 0.652)],
)
def test_dry_run_prints_the_thesis_structure(capsys, preset, params_cut, gmacs_cut):
    assert main(["run", "--config", preset, "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert f"{params_cut:.1%}" in out and f"{gmacs_cut:.1%}" in out


def test_presets_load_and_validate():
    from blockswap.config import load_config

    presets = sorted(Path("configs").glob("*.yaml"))
    assert {p.stem for p in presets} >= {"default", "bert-base-imdb", "distilbert-imdb", "tiny", "deploy"}
    for preset in presets:
        cfg = load_config(str(preset))
        assert cfg.compact.hidden > 0


def test_the_deploy_preset_is_the_default_with_a_wider_single_layer_substitute(capsys):
    from blockswap.config import load_config

    default, deploy = load_config(None), load_config("configs/deploy.yaml")  # `blockswap run` with no flags
    assert deploy.compact != default.compact and (deploy.data, deploy.distill, deploy.run) == (
        default.data, default.distill, default.run)  # fmt: skip
    assert main(["run", "--config", "configs/deploy.yaml", "--dry-run"]) == 0
    assert "73.7%" in capsys.readouterr().out  # every block, 384 -> 192 x 1 layer: the README's every-block cut


def test_dry_run_of_the_offline_default_plans_the_packaged_teacher(capsys):
    # no --arch and no teacher: the offline default, whose teacher is the packaged all-MiniLM-L6-v2
    assert main(["run", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "dry run: all-minilm-l6-v2 (random weights), 6 of 6 blocks substituted" in out
    assert "after (6 swapped)" in out and "(fine-tuned by the run)" in out  # the header whole, not cut at 14
    assert "70.2%" in out  # every block, 384 -> 128 x 2 layers: the README's every-block GMACs cut
    # a hybrid: the GMACs and parameters the classifier run cut at its step 6 (docs/results.md), block 0 dropped here
    assert main(["run", "--dry-run", "--drop-blocks", "1"]) == 0
    out = capsys.readouterr().out
    assert "5 of 6 blocks substituted and 1 dropped" in out and "after (5 swapped, 1 dropped)" in out
    assert "75.1%" in out and "36.0%" in out and "substituted blocks [1, 2, 3, 4, 5], dropped [0]" in out
    assert main(["run", "--dry-run", "--drop-blocks", "6"]) == 2 and "--drop-blocks 6" in capsys.readouterr().err
    # a named teacher cannot be planned without loading it: one line asking for --arch, exit 2
    assert main(["run", "--dry-run", "--teacher", "someone/some-model"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--arch NAME, one of: bert-base-uncased" in err


def test_dry_run_needs_a_buildable_config(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("run:\n  arch: gpt2\n")
    assert main(["run", "--config", str(bad), "--dry-run"]) == 2
    assert "unknown --arch" in capsys.readouterr().err
    bad.write_text("compact: {hidden: 10, heads: 3}\n")
    assert main(["run", "--config", str(bad), "--dry-run"]) == 2
    bad.write_text("nonsense: 1\n")
    assert main(["run", "--config", str(bad), "--dry-run"]) == 2
    assert "unknown config section" in capsys.readouterr().err


@pytest.mark.slow
def test_two_process_accelerate_launch_smoke(tmp_path, tiny_csv, tiny_teacher_dir):
    out = tmp_path / "ddp"
    cmd = [
        sys.executable, "-m", "accelerate.commands.launch", "--cpu", "--num_processes", "2", "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "blockswap.cli", "run",
        "--teacher", str(tiny_teacher_dir), "--dataset", str(tiny_csv), "--out", str(out), "--baselines", "none", *FAST,
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (out / "summary.json").exists() and (out / "model" / "model.safetensors").exists()


def test_a_teacher_saved_in_half_precision_is_run_in_fp32(tmp_path, capsys, tiny_csv, tiny_teacher_dir):
    # many hub checkpoints are saved in fp16/bf16 and transformers loads them so: blockswap's run crashed in its
    # importance stage ("mixed dtype (CPU)") on such a teacher
    half = tmp_path / "half"
    export.load_classifier(tiny_teacher_dir).half().save_pretrained(half)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
        if (tiny_teacher_dir / name).is_file():
            (half / name).write_bytes((tiny_teacher_dir / name).read_bytes())
    assert json.loads((half / "config.json").read_text()).get("dtype") == "float16"
    assert {p.dtype for p in export.load_classifier(half).parameters()} == {torch.float32}
    code = main(["run", "--teacher", str(half), "--dataset", str(tiny_csv), "--out", str(tmp_path / "run"), *FAST])
    assert code == 0, capsys.readouterr().err
    assert {p.dtype for p in export.load(tmp_path / "run" / "model").parameters()} == {torch.float32}
