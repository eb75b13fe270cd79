"""ONNX export + parity + int8, `predict`, vocabulary pruning: tiny random models, no network."""

import io
import json

import numpy as np
import pytest
import torch

from blockswap import arch, deploy, export, vocab
from blockswap.cli import main
from blockswap.compact import CompactSpec
from blockswap.errors import DataError, DeployError, MissingDependency
from blockswap.evaluate import predict
from blockswap.substitute import substitute

from .conftest import padded_batch, sentiment_rows, tiny_model, tiny_tokenizer

TEXTS = [t for t, _ in sentiment_rows(64, seed=5)]


def _student(family: str, tmp_path):
    tok = tiny_tokenizer(tmp_path / "tok")
    model = tiny_model(family, layers=3, vocab_size=len(tok))
    return substitute(model, [0, 2], CompactSpec(hidden=8, heads=2, ffn=16)).eval(), tok


def _export_and_compare(family: str, tmp_path):
    student, tok = _student(family, tmp_path)
    meta = deploy.export_onnx(student, tok, tmp_path / "onnx", check_texts=TEXTS, int8=True)
    assert meta["parity"]["passed"] and meta["parity"]["max_abs_logit_diff"] <= 1e-4
    assert {b for b, _ in meta["parity"]["shapes"]} >= {1, 7, 32}
    ort_model = deploy.OnnxClassifier.load(tmp_path / "onnx")
    for lengths in ((9, 3, 6, 1), (2,), (5, 5)):  # padded batches of mixed lengths, independent of the check
        ids, mask = padded_batch(lengths=lengths, seq=max(lengths), seed=len(lengths))
        ids = ids.clamp(max=len(tok) - 1)
        batch = {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids)}
        with torch.no_grad():
            ref = student(**arch.forward_inputs(student, batch)).logits
        torch.testing.assert_close(ort_model.logits(batch), ref, atol=1e-4, rtol=0)
    return student, tok


def test_bert_export_matches_pytorch_and_int8_mostly_agrees(tmp_path):
    student, tok = _export_and_compare("bert", tmp_path)
    q = deploy.OnnxClassifier.load(tmp_path / "onnx", int8=True)
    batch = deploy.parity_batches(tok, TEXTS)[4]  # 32 real sentences
    assert deploy.parity(student, q, [batch])["argmax_agreement"] >= 0.9
    assert (tmp_path / "onnx" / deploy.INT8_FILE).stat().st_size < (tmp_path / "onnx" / deploy.ONNX_FILE).stat().st_size


def _weight_scale_sizes(path) -> set[int]:
    """Sizes of the scales of the int8 graph's quantised weight matrices (1 = one scale per tensor)."""
    import onnx

    graph = onnx.load(str(path)).graph
    return {
        int(np.prod(t.dims, dtype=np.int64))
        for t in graph.initializer
        if t.name.endswith("_scale") and t.data_type == onnx.TensorProto.FLOAT
    }


def test_int8_scales_per_tensor_for_classifiers_by_default_and_per_channel_on_request(tmp_path):
    student, tok = _student("bert", tmp_path)
    auto = deploy.export_onnx(student, tok, tmp_path / "auto", check_texts=TEXTS, int8=True)
    assert auto["int8_scales"] == "per-tensor"
    assert _weight_scale_sizes(tmp_path / "auto" / deploy.INT8_FILE) == {1}
    chan = deploy.export_onnx(student, tok, tmp_path / "chan", check_texts=TEXTS, int8=True, int8_scales="per-channel")
    assert chan["int8_scales"] == "per-channel"
    sizes = _weight_scale_sizes(tmp_path / "chan" / deploy.INT8_FILE)
    assert student.config.intermediate_size in sizes  # the FFN up-projection: a scale per output column
    none = deploy.export_onnx(student, tok, tmp_path / "none", check_texts=TEXTS, int8=False)
    assert "int8_scales" not in none and deploy.INT8_FILE not in none["files"]


@pytest.mark.slow
@pytest.mark.parametrize(
    "family", ["distilbert", "roberta", "electra", "xlm-roberta", "mpnet", "deberta-v2", "modernbert"]
)
def test_every_family_exports_with_parity(family, tmp_path):
    _export_and_compare(family, tmp_path)


def test_parity_failure_keeps_the_export_marked_failed(tmp_path, monkeypatch, capsys, tiny_teacher_dir, tiny_csv):
    monkeypatch.setattr(deploy, "PARITY_TOLERANCE", -1.0)
    out = tmp_path / "onnx"
    capsys.readouterr()
    code = main(["export", str(tiny_teacher_dir), "--onnx", str(out), "--quantize", "none", "--dataset", str(tiny_csv)])
    err = capsys.readouterr().err
    assert code == 2 and "parity failed" in err and len(err.strip().splitlines()) == 1
    assert json.loads((out / deploy.META_FILE).read_text())["parity"]["passed"] is False


def test_export_refuses_a_non_classifier_and_a_missing_extra(tmp_path, monkeypatch, capsys, tiny_csv):
    from transformers import BertConfig, BertModel

    enc = tmp_path / "enc"
    BertModel(BertConfig(vocab_size=40, hidden_size=16, num_hidden_layers=1, num_attention_heads=2)).save_pretrained(
        enc
    )
    assert main(["export", str(enc), "--onnx", str(tmp_path / "o"), "--dataset", str(tiny_csv)]) == 2
    assert "not a sequence or token classifier" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()

    import builtins

    real_import = builtins.__import__

    def no_onnxscript(name, *args, **kwargs):
        if name == "onnxscript":
            raise ImportError("no", name="onnxscript")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_onnxscript)
    with pytest.raises(MissingDependency, match=r"blockswap\[onnx\]"):
        deploy.require_onnx()


def test_predict_equals_evaluate_from_a_file_and_from_stdin(tmp_path, monkeypatch, capsys, tiny_teacher_dir, tiny_csv):
    from blockswap.data import read_local
    from blockswap.loaders import loader, tokenize

    texts = read_local(tiny_csv)["review"].tolist()[:20]
    (tmp_path / "in.txt").write_text("\n".join(texts) + "\n")
    out = tmp_path / "preds.jsonl"
    assert (
        main(["predict", "--model", str(tiny_teacher_dir), "--input", str(tmp_path / "in.txt"), "--out", str(out)]) == 0
    )
    from_file = [json.loads(line) for line in out.read_text().splitlines()]
    monkeypatch.setattr("sys.stdin", io.StringIO("\n".join(texts)))
    capsys.readouterr()
    assert main(["predict", "--model", str(tiny_teacher_dir), "--input", "-", "--batch-size", "3"]) == 0
    from_stdin = [json.loads(line) for line in capsys.readouterr().out.splitlines()]

    model, tok = export.load(tiny_teacher_dir), export.load_tokenizer(tiny_teacher_dir)
    from datasets import Dataset, DatasetDict

    ds = DatasetDict(test=Dataset.from_dict({"text": texts, "label": [0] * len(texts)}))
    logits, _ = predict(model, loader(tokenize(ds, tok, 512)["test"], tok, batch_size=64, shuffle=False))
    # evaluate's loader sorts by length; put its rows back in input order
    order = sorted(range(len(texts)), key=lambda i: len(tok(texts[i])["input_ids"]))
    expected = torch.empty_like(logits)
    expected[torch.tensor(order)] = logits
    probs = expected.softmax(-1)
    for rows in (from_file, from_stdin):
        assert [r["text"] for r in rows] == texts
        got = torch.tensor([[r["probs"]["neg"], r["probs"]["pos"]] for r in rows])
        torch.testing.assert_close(got, probs, atol=1e-5, rtol=0)
        assert [r["label"] for r in rows] == [["neg", "pos"][i] for i in probs.argmax(-1).tolist()]


def test_predict_refuses_empty_input(tmp_path, capsys, tiny_teacher_dir):
    (tmp_path / "empty.txt").write_text("\n\n")
    assert main(["predict", "--model", str(tiny_teacher_dir), "--input", str(tmp_path / "empty.txt")]) == 2
    assert "no texts" in capsys.readouterr().err
    with pytest.raises(DataError, match="does not exist"):
        from blockswap.data import read_texts

        read_texts(str(tmp_path / "missing.csv"))


def test_predict_given_a_run_folder_names_the_final_student(tmp_path, capsys, tiny_teacher_dir):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(tiny_teacher_dir, run / "model_recovered")
    (run / "run.json").write_text("{}")
    (tmp_path / "in.txt").write_text("a fine film\n")
    capsys.readouterr()  # the fixture's own output (saving the tiny teacher when this test runs first)
    assert (
        main(["predict", "--model", str(run), "--input", str(tmp_path / "in.txt"), "--out", str(tmp_path / "p")]) == 2
    )
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"give one of its models: {run / 'model_recovered'}" in err
    assert not (tmp_path / "p").exists()


def test_vocab_pruning_keeps_covered_logits_and_maps_unseen_to_unknown(tmp_path):
    tok = tiny_tokenizer(tmp_path / "tok")
    model = tiny_model("bert", layers=2, vocab_size=len(tok))
    corpus = ["the movie was good", "a dull plot", "great actors and a fun story"]
    pruned, new_tok, stats = vocab.prune_vocabulary(model, tok, corpus)
    assert stats["vocab_after"] == len(new_tok) < len(tok) and pruned.config.vocab_size == len(new_tok)
    assert set(new_tok.all_special_tokens) == set(tok.all_special_tokens)
    covered = ["the plot was fun", "a great movie"]
    a, b = tok(covered, padding=True, return_tensors="pt"), new_tok(covered, padding=True, return_tensors="pt")
    assert tok.batch_decode(a["input_ids"]) == new_tok.batch_decode(b["input_ids"])
    with torch.no_grad():
        torch.testing.assert_close(model(**a).logits, pruned(**b).logits, atol=0, rtol=0)
    assert new_tok("superb")["input_ids"][1] == new_tok.unk_token_id  # "superb" never occurs in the corpus
    assert vocab.coverage(tok, new_tok, ["the movie", "superb"]) == 0.5
    with pytest.raises(DataError, match="empty"):
        vocab.prune_vocabulary(model, tok, [])


def test_vocab_pruning_refuses_bpe(tmp_path):
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    bpe = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.BPE(vocab={"a": 0, "b": 1}, merges=[])))
    with pytest.raises(DeployError, match="WordPiece"):
        vocab.prune_vocabulary(tiny_model("bert"), bpe, ["a b"])


def test_prune_vocab_command_writes_a_smaller_model(tmp_path, capsys, tiny_teacher_dir):
    rows = [("the movie was good", "pos"), ("a bad plot", "neg"), ("good actors", "pos"), ("the film was dull", "neg")]
    corpus = tmp_path / "few_words.csv"
    corpus.write_text("text,label\n" + "".join(f"{t},{label}\n" for t, label in rows * 10))
    out = tmp_path / "small"
    assert main(["prune-vocab", str(tiny_teacher_dir), "--out", str(out), "--dataset", str(corpus)]) == 0
    stats = json.loads((out / "vocab.json").read_text())
    assert stats["params_after"] < stats["params_before"] and "test_score_after" in stats
    assert export.load(out).config.vocab_size == stats["vocab_after"]


@pytest.mark.slow
def test_run_with_vocab_pruning_and_onnx_export(tmp_path, capsys, tiny_csv, tiny_teacher_dir):
    from .test_pipeline import FAST

    out = tmp_path / "run"
    argv = ["run", "--teacher", str(tiny_teacher_dir), "--dataset", str(tiny_csv), "--out", str(out), *FAST]
    assert main([*argv, "--baselines", "none", "--prune-vocab", "--export", "onnx"]) == 0, capsys.readouterr().err
    result = json.loads((out / "export.json").read_text())
    assert result["student"]["parity"]["passed"] and result["teacher"]["parity"]["passed"]
    assert result["student_source"].endswith("model_vocab")
    for name in ("teacher", "student"):
        assert (out / "onnx" / name / deploy.INT8_FILE).is_file()
        assert result[name]["int8_scales"] == "per-tensor"  # auto: per tensor for classifiers
    report = (out / "report.md").read_text()
    assert "## ONNX export" in report and "- exported onnx/student:" in report and "per-tensor scales" in report
