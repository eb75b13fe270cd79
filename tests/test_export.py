import json

import pytest
import torch

from blockswap import arch, export
from blockswap.substitute import substitute

from .conftest import ARCHS, TINY_COMPACT, logits_without_blockswap, padded_batch, tiny_model


def _logits(model, ids, mask):
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask).logits


def _student(family, norm):
    import dataclasses

    teacher = tiny_model(family)
    if norm == "post" and arch.spec_for(teacher).out_norm_path is None:
        pytest.skip(f"{family} is pre-LN: compact.norm post is refused")
    return substitute(teacher, [0, 2], dataclasses.replace(TINY_COMPACT, norm=norm)).eval()


@pytest.mark.parametrize("norm", ["none", "post"])
def test_save_load_roundtrip(family, norm, tmp_path):
    student = _student(family, norm)
    ids, mask = padded_batch()
    want = _logits(student, ids, mask)
    folder = export.save(student, tmp_path / "model")
    files = sorted(p.name for p in folder.iterdir())
    assert "model.safetensors" in files and "modeling_blockswap.py" in files
    assert not any(f.endswith((".bin", ".pt", ".pkl")) for f in files)
    torch.testing.assert_close(_logits(export.load(folder), ids, mask), want, atol=0, rtol=0)


def test_every_family_reloads_without_blockswap(tmp_path):
    """One process where blockswap cannot be imported loads every family's saved student."""
    ids, mask = padded_batch()
    want = {}
    for family in ARCHS:
        for norm in ("none", "post"):
            teacher = tiny_model(family)
            if norm == "post" and arch.spec_for(teacher).out_norm_path is None:
                continue
            student = _student(family, norm)
            name = f"{family}-{norm}"
            export.save(student, tmp_path / name)
            want[name] = _logits(student, ids, mask)
    got = logits_without_blockswap({name: tmp_path / name for name in want}, ids, mask, tmp_path)
    assert sorted(got) == sorted(want)
    for name, logits in want.items():
        torch.testing.assert_close(got[name], logits, atol=1e-6, rtol=0, msg=name)


def test_a_hybrid_saves_as_the_shorter_model_that_pairs_its_blocks_with_the_teachers(tmp_path):
    """A curve student of --drop-blocks: an identity in a dropped block's place, removed for real on saving; every
    family's folder gives the same logits (reloaded, and where blockswap cannot be imported) at the same MACs, and
    its blocks keep their teacher blocks for hidden-state matching."""
    from blockswap import distill, measure

    ids, mask = padded_batch()
    want, folders = {}, {}
    for family in ARCHS:
        student = substitute(tiny_model(family), [0], TINY_COMPACT).eval()  # block 1 dropped, block 2 kept as it is
        arch.put_block(student, 1, arch.identity_block(student))
        assert distill.matched_blocks(student, True) == [(0, 0), (2, 2)]  # no target for an identity's output
        want[family], folders[family] = _logits(student, ids, mask), export.save(student, tmp_path / family)
        loaded = export.load(folders[family])
        assert arch.num_blocks(loaded) == 2 and loaded.config.blockswap["dropped"] == [1], family
        assert loaded.config.blockswap["substituted"] == [0], family
        assert distill.matched_blocks(loaded, True) == [(0, 0), (1, 2)], family  # its block 1 stands for block 2
        assert distill.matched_blocks(loaded, False) == [(0, 0)], family
        torch.testing.assert_close(_logits(loaded, ids, mask), want[family], atol=0, rtol=0, msg=family)
        assert measure.count_macs(loaded, seq_len=16) == measure.count_macs(student, seq_len=16) | {
            "per_block": measure.count_macs(student, seq_len=16)["per_block"][::2]
        }, family
    got = logits_without_blockswap(folders, ids, mask, tmp_path)
    for family, logits in want.items():
        torch.testing.assert_close(got[family], logits, atol=1e-6, rtol=0, msg=family)
    # dropped only: a plain shorter model of its class, which still knows which blocks it lost
    dropped = tiny_model("bert")
    arch.put_block(dropped, 0, arch.identity_block(dropped))
    folder = export.save(dropped, tmp_path / "dropped")
    assert not (folder / "modeling_blockswap.py").exists()
    assert distill.matched_blocks(export.load(folder), True) == [(0, 1), (1, 2)]


def test_plain_load_without_remote_code_fails_loudly(tmp_path):
    from transformers import AutoModelForSequenceClassification

    folder = export.save(substitute(tiny_model("bert"), [1], TINY_COMPACT), tmp_path / "m")
    with pytest.raises(Exception):  # noqa: B017 - any loud failure beats silently dropping substitutes
        AutoModelForSequenceClassification.from_pretrained(folder)


def test_unsubstituted_model_saves_as_plain_folder(tmp_path):
    teacher = tiny_model("bert")
    folder = export.save(teacher, tmp_path / "t")
    assert not (folder / "modeling_blockswap.py").exists()
    ids, mask = padded_batch()
    torch.testing.assert_close(_logits(export.load(folder), ids, mask), _logits(teacher, ids, mask))


def test_load_model_errors(tmp_path):
    with pytest.raises(export.ModelLoadError, match="does not exist"):
        export.load_model(str(tmp_path / "missing" / "x"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(export.ModelLoadError, match="not a model folder"):
        export.load_model(str(tmp_path / "empty"))
    (tmp_path / "empty" / "teacher.json").write_text("{}")
    for load in (export.load_model, export.load, export.load_tokenizer):
        with pytest.raises(export.ModelLoadError, match="teacher.json is a file; give the model's folder"):
            load(str(tmp_path / "empty" / "teacher.json"))


def test_a_run_folder_names_its_final_student(tmp_path):
    """`predict --model RUN` (and export, evaluate, prune-vocab): the error says which of the run's folders to give."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "run.json").write_text("{}")
    for load in (export.load_model, export.load, export.load_tokenizer):
        with pytest.raises(export.ModelLoadError, match="no saved model yet"):
            load(str(run))
    for name in ("teacher", "model", "model_recovered"):
        (run / name).mkdir()
        (run / name / "config.json").write_text("{}")
        final = "teacher \\(the teacher; no student" if name == "teacher" else f"{name} \\(the final student"
        for load in (export.load_model, export.load, export.load_tokenizer):
            with pytest.raises(
                export.ModelLoadError, match=f"run folder, not a model; give one of its models: .*{final}"
            ):
                load(str(run))


def test_unreachable_hub_id_gets_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(export.ModelLoadError, match="hub cannot be reached"):
        export.load_model("no-such-owner-xyz/no-such-model-xyz")


@pytest.mark.parametrize("blockswap_meta", [False, True])
def test_an_onnx_export_folder_is_named_as_such(tmp_path, capsys, blockswap_meta):
    """export / prune-vocab on an ONNX folder (a config.json, no PyTorch weights): one line that says what it is."""
    from blockswap.cli import main

    folder = tmp_path / "onnx"
    folder.mkdir()
    cfg = {"model_type": "bert", "architectures": ["BertForSequenceClassification"]}
    if blockswap_meta:  # a substituted student's export keeps its blockswap record
        cfg["blockswap"] = {"substituted": [1], "base_model_type": "bert"}
    (folder / "config.json").write_text(json.dumps(cfg))
    (folder / "model.onnx").write_bytes(b"not read")
    for load in (export.load_model, export.load, export.load_classifier):
        with pytest.raises(export.ModelLoadError, match="is an ONNX export"):
            load(str(folder))
    assert main(["prune-vocab", str(folder), "--out", str(tmp_path / "small")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "PyTorch folder" in err[0] and not (tmp_path / "small").exists()
