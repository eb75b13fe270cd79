"""ONNX export + parity + int8, `predict`, vocabulary pruning: tiny random models, no network."""

import io
import json

import numpy as np
import pytest
import torch

from blockswap import arch, deploy, export, ort_attention, vocab
from blockswap.cli import main
from blockswap.compact import CompactSpec
from blockswap.errors import DataError, DeployError, MissingDependency
from blockswap.evaluate import predict
from blockswap.substitute import substitute

from .conftest import logits_without_blockswap, padded_batch, sentiment_rows, tiny_model, tiny_tokenizer

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


def test_the_int8_quantiser_reads_the_graph_without_shape_annotations(tmp_path, monkeypatch):
    # ONNX Runtime before 1.32 re-infers shapes before quantising and refused our exports (an annotation traced at the
    # sample's batch of 2 against the fused Attention's inferred shape): seen with onnxruntime 1.30 on a GPU machine
    import onnx
    import onnxruntime.quantization as quantization

    student, tok = _student("bert", tmp_path)
    deploy.export_onnx(student, tok, tmp_path / "onnx", check_texts=TEXTS, int8=False)
    src = tmp_path / "onnx" / deploy.ONNX_FILE
    assert len(onnx.load(str(src)).graph.value_info) > 0  # the exporter annotates
    seen = {}

    def quantize_dynamic(model_input, model_output, **kwargs):
        graph = model_input if isinstance(model_input, onnx.ModelProto) else onnx.load(str(model_input))
        seen["value_info"] = len(graph.graph.value_info)
        seen["options"] = kwargs.get("extra_options", {})

    monkeypatch.setattr(quantization, "quantize_dynamic", quantize_dynamic)
    deploy.quantize_int8(src, tmp_path / "q.onnx", scales="per-tensor")
    assert seen == {"value_info": 0, "options": {"DefaultTensorType": onnx.TensorProto.FLOAT}}


def _op_types(path) -> list[str]:
    import onnx

    return [n.op_type for n in onnx.load(str(path)).graph.node]


def test_attention_exports_as_one_fused_operator_for_kept_blocks_and_substitutes(tmp_path):
    student, tok = _student("bert", tmp_path)  # block 1 kept, blocks 0 and 2 substituted (2 compact layers each)
    meta = deploy.export_onnx(student, tok, tmp_path / "onnx", check_texts=TEXTS, int8=True)
    assert meta["parity"]["passed"] and meta["attention_fused"] == 1 + 2 * 2
    ops = _op_types(tmp_path / "onnx" / deploy.ONNX_FILE)
    assert ops.count("Attention") == 5 and "Softmax" not in ops and "Transpose" not in ops
    assert "SkipLayerNormalization" not in ops and "LayerNormalization" in ops  # deploy.SLOW_FUSIONS
    assert _op_types(tmp_path / "onnx" / deploy.INT8_FILE).count("QAttention") == 5


def test_fused_attention_computes_what_the_modules_did():
    ids, mask = padded_batch(lengths=(9, 3, 6), seq=9)
    batch = {"input_ids": ids, "attention_mask": mask}
    for family in ("bert", "distilbert", "roberta"):
        model = substitute(tiny_model(family, layers=2), [1], CompactSpec(hidden=8, heads=2, ffn=16)).eval()
        with torch.no_grad():
            ref = model(**arch.forward_inputs(model, batch)).logits
            with ort_attention.fused_attention(model) as (table, fused):
                got = model(**arch.forward_inputs(model, batch)).logits
            after = model(**arch.forward_inputs(model, batch)).logits
        assert table and fused == 1 + 2, family  # one plain self-attention, the substitute's two layers
        torch.testing.assert_close(got, ref, atol=1e-5, rtol=0)
        assert torch.equal(after, ref)  # the modules' own forward is back


def test_only_plain_attention_of_padding_mask_families_is_fused():
    counts = {f: sum(arch.plain_attention_parts(m) is not None for m in tiny_model(f, layers=2).modules())
              for f in ("bert", "distilbert", "electra", "mpnet", "deberta-v2", "modernbert")}  # fmt: skip
    assert counts == {"bert": 2, "distilbert": 2, "electra": 2, "mpnet": 0, "deberta-v2": 0, "modernbert": 0}
    local = substitute(tiny_model("modernbert", layers=2), [0], CompactSpec(hidden=8, heads=2, ffn=16))
    with ort_attention.fused_attention(local) as (table, fused):  # sliding windows: one key mask would be wrong
        assert (table, fused) == ({}, 0)


def test_fused_attention_is_dropped_where_it_breaks_parity(tmp_path, monkeypatch):
    student, tok = _student("bert", tmp_path)
    real = deploy.parity

    def fails_when_fused(model, onnx_model, batches):
        check = real(model, onnx_model, batches)
        graph = onnx_model.session._model_path if hasattr(onnx_model.session, "_model_path") else None
        if graph and "Attention" in _op_types(graph):
            check = {**check, "passed": False}
        return check

    monkeypatch.setattr(deploy, "parity", fails_when_fused)
    meta = deploy.export_onnx(student, tok, tmp_path / "onnx", check_texts=TEXTS, int8=False)
    assert meta["parity"]["passed"] and meta["attention_fused"] == 0
    ops = _op_types(tmp_path / "onnx" / deploy.ONNX_FILE)
    assert "Attention" not in ops and "SkipLayerNormalization" not in ops  # deploy.SLOW_FUSIONS, unfused graph too


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


def _row(model, tok, token):
    return model.get_input_embeddings()(torch.tensor([[tok.convert_tokens_to_ids(token)]]))[0, 0]


def test_vocab_pruning_keeps_covered_logits_and_maps_dropped_tokens_to_the_nearest_kept_row(tmp_path):
    tok = tiny_tokenizer(tmp_path / "tok")
    model = tiny_model("bert", layers=2, vocab_size=len(tok)).eval()
    emb = model.get_input_embeddings().weight
    # 'dull' never occurs in the corpus; the kept row nearest to it, and answered alike, is 'movie'
    with torch.no_grad():
        emb[tok.convert_tokens_to_ids("dull")] = emb[tok.convert_tokens_to_ids("movie")] + 1e-4
    corpus = ["the movie was good", "a super plot", "great actors and a fun story"]
    pruned, stats = vocab.prune_vocabulary(model, tok, corpus)
    kept = vocab.used_ids(tok, corpus)
    assert stats["vocab_after"] == len(kept) < len(tok) == stats["vocab_before"] == pruned.config.vocab_size
    assert set(tok.all_special_ids) <= set(kept)
    cut = (len(tok) - len(kept)) * emb.shape[1]
    assert sum(p.numel() for p in pruned.parameters()) == sum(p.numel() for p in model.parameters()) - cut
    covered = tok(["the plot was fun", "a great movie"], padding=True, return_tensors="pt")
    with torch.no_grad():
        torch.testing.assert_close(model(**covered).logits, pruned(**covered).logits, atol=0, rtol=0)
        torch.testing.assert_close(_row(pruned, tok, "dull"), _row(model, tok, "movie"), atol=0, rtol=0)
        for token in ("bad", "boring", "superb"):  # every dropped token reads some kept token's row
            assert any(
                torch.equal(_row(pruned, tok, token), _row(model, tok, k)) for k in tok.convert_ids_to_tokens(kept)
            )
    assert 0 < stats["dropped_mean_cosine_to_row_read"] < 1
    assert vocab.coverage(tok, kept, ["the movie", "superb"]) == 0.5
    with pytest.raises(DataError, match="empty"):
        vocab.prune_vocabulary(model, tok, [])
    with pytest.raises(DeployError, match="already pruned"):
        vocab.prune_vocabulary(pruned, tok, corpus)


def test_nearest_rows_by_cosine():
    weight = torch.tensor([[1.0, 0.0], [0.0, 1.0], [5.0, 0.5], [-1.0, 2.0], [0.0, 1.0]])
    rows, similarity = vocab.nearest_rows(weight, [1, 2, 4])  # rows 1 and 4 are equal: each maps to itself
    assert rows.tolist() == [1, 0, 1, 0, 2]
    assert similarity[[1, 2, 4]].tolist() == [1.0, 1.0, 1.0] and 0.99 < similarity[0] < 1 and 0.89 < similarity[3] < 0.9


def test_nearest_rows_chooses_among_the_most_similar_by_the_models_answer():
    weight = torch.tensor([[1.0, 0.0], [0.9, 0.3], [1.0, 0.1], [0.0, 1.0]])  # row 2 is dropped: nearest is row 0
    answers = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.1, 0.9], [0.5, 0.5]])  # ... but it is answered like row 1
    assert vocab.nearest_rows(weight, [0, 1, 3])[0][2] == 0
    assert vocab.nearest_rows(weight, [0, 1, 3], answers, candidates=1)[0][2] == 0
    for candidates in (2, 3):  # row 3 is a candidate too, but answered less alike
        rows, similarity = vocab.nearest_rows(weight, [0, 1, 3], answers, candidates=candidates)
        assert rows.tolist() == [0, 1, 1, 2]
        assert similarity[2].item() == pytest.approx(0.93 / (0.9487 * 1.00499), abs=1e-3)  # to the row it reads


def test_token_responses_are_the_models_answer_to_each_token_alone(tmp_path):
    tok = tiny_tokenizer(tmp_path / "tok")
    model = tiny_model("bert", layers=2, vocab_size=len(tok)).eval()
    answers = vocab.token_responses(model, tok, len(tok), batch_size=7)  # batches of 7: several, the last partial
    assert answers.shape == (len(tok), model.config.num_labels)
    for token in ("movie", "dull", "[UNK]"):
        enc = tok(token, return_tensors="pt")  # [CLS] token [SEP]
        assert enc["input_ids"].shape[1] == 3
        with torch.no_grad():
            expected = model(**enc).logits.softmax(-1)[0]
        torch.testing.assert_close(answers[tok.convert_tokens_to_ids(token)], expected)


def test_token_responses_of_a_token_classifier_and_a_regression_head(tmp_path):
    from .conftest import tiny_config

    tok = tiny_tokenizer(tmp_path / "tok")
    tagger = arch.model_from_config(tiny_config("bert", vocab_size=len(tok), num_labels=3), head="token").eval()
    regressor = tiny_model("bert", layers=2, vocab_size=len(tok), num_labels=1).eval()
    enc = tok("movie", return_tensors="pt")  # [CLS] movie [SEP]
    movie = tok.convert_tokens_to_ids("movie")
    with torch.no_grad():
        tags, score = tagger(**enc).logits[0, 1].softmax(-1), regressor(**enc).logits[0]
    torch.testing.assert_close(vocab.token_responses(tagger, tok, len(tok))[movie], tags)  # its answer at the token
    torch.testing.assert_close(vocab.token_responses(regressor, tok, len(tok))[movie], score)  # the value, no softmax


def test_vocab_pruning_works_for_bpe():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    merges = [("a", "b"), ("ab", "c")]
    bpe = Tokenizer(models.BPE(vocab={"[UNK]": 0, "a": 1, "b": 2, "c": 3, "ab": 4, "abc": 5}, merges=merges))
    bpe.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, unk_token="[UNK]")
    model = tiny_model("bert", vocab_size=6).eval()
    pruned, stats = vocab.prune_vocabulary(model, tok, ["ab c"])  # keeps [UNK], ab, c
    assert stats["vocab_after"] == 3 and pruned.get_input_embeddings().weight.shape[0] == 3
    covered, uncovered = tok(["c ab"], return_tensors="pt"), tok(["abc a"], return_tensors="pt")
    with torch.no_grad():
        assert torch.equal(model(**covered).logits, pruned(**covered).logits)
        assert pruned(**uncovered).logits.isfinite().all()
        kept_rows = [_row(model, tok, t) for t in ("[UNK]", "ab", "c")]
        assert any(torch.equal(_row(pruned, tok, "abc"), r) for r in kept_rows)


def test_vocab_pruned_models_reload_with_and_without_blockswap(tmp_path):
    tok = tiny_tokenizer(tmp_path / "tok")
    teacher = tiny_model("bert", layers=3, vocab_size=len(tok)).eval()
    corpus = ["the movie was good", "a dull plot"]
    ids, mask = padded_batch(seq=6)
    ids = ids % len(tok)  # every id of the tiny vocabulary, dropped ones included
    want, folders = {}, {}
    for name, model in (("teacher", teacher), ("student", substitute(teacher, [1], CompactSpec(hidden=8, heads=2)))):
        pruned, _ = vocab.prune_vocabulary(model.eval(), tok, corpus)
        folders[name] = export.save(pruned, tmp_path / name, tokenizer=tok)
        assert export.load_tokenizer(folders[name]).get_vocab() == tok.get_vocab()  # no remote-code prompt either
        with torch.no_grad():
            want[name] = pruned(input_ids=ids, attention_mask=mask).logits
            torch.testing.assert_close(
                export.load(folders[name])(input_ids=ids, attention_mask=mask).logits, want[name], atol=0, rtol=0
            )
    got = logits_without_blockswap(folders, ids, mask, tmp_path)
    for name in want:
        torch.testing.assert_close(got[name], want[name], atol=1e-6, rtol=0, msg=name)


def test_vocab_pruned_student_exports_to_onnx_with_parity(tmp_path):
    pytest.importorskip("onnxruntime")
    student, tok = _student("bert", tmp_path)
    pruned, _ = vocab.prune_vocabulary(student, tok, ["the movie was good", "a dull plot"])
    meta = deploy.export_onnx(pruned, tok, tmp_path / "onnx", check_texts=TEXTS, int8=False)
    assert meta["parity"]["passed"], meta["parity"]


def test_prune_vocab_command_writes_a_smaller_model(tmp_path, capsys, tiny_teacher_dir):
    rows = [("the movie was good", "pos"), ("a bad plot", "neg"), ("good actors", "pos"), ("the film was dull", "neg")]
    corpus = tmp_path / "few_words.csv"
    corpus.write_text("text,label\n" + "".join(f"{t},{label}\n" for t, label in rows * 10))
    out = tmp_path / "small"
    assert main(["prune-vocab", str(tiny_teacher_dir), "--out", str(out), "--dataset", str(corpus)]) == 0
    stats = json.loads((out / "vocab.json").read_text())
    assert stats["params_after"] < stats["params_before"] and "test_score_after" in stats
    small = export.load(out)
    assert small.get_input_embeddings().weight.shape[0] == stats["vocab_after"] < small.config.vocab_size
    assert (out / "tokenizer.json").is_file() and "test_texts_all_tokens_kept" in stats
    assert stats["dropped_rows"].startswith("the kept row the model answers most alike among the 10")
    nearest = tmp_path / "nearest"
    assert (
        main(
            ["prune-vocab", str(tiny_teacher_dir), "--out", str(nearest), "--dataset", str(corpus), "--candidates", "1"]
        )
        == 0
    )
    assert (
        json.loads((nearest / "vocab.json").read_text())["dropped_rows"]
        == "the kept row most similar to its own (cosine)"
    )
    capsys.readouterr()
    assert main(["prune-vocab", str(tiny_teacher_dir), "--out", str(tmp_path / "x"), "--candidates", "0"]) == 2
    assert "--candidates" in capsys.readouterr().err and not (tmp_path / "x").exists()


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
    assert result["teacher"]["attention_fused"] >= 1 and "attention layers as one fused operator" in report
    for name in ("teacher", "student"):  # ONNX Runtime latency of both, same batches, fp32 and int8
        latency = result[name]["latency"]
        assert set(latency) == {"b1", "b32", "b32_real"} and latency["b32"]["ort_int8"]["batch"][0] == 32
        assert all(set(v) == {"ort_fp32", "ort_int8"} and v["ort_fp32"]["median_ms"] > 0 for v in latency.values())
        # 3 sessions per model and precision (one process), their medians' median reported
        assert len(latency["b32_real"]["ort_int8"]["session_medians_ms"]) == 3
        assert latency["b32_real"]["ort_int8"]["median_ms"] == latency["b32_real"]["ort_int8"]["session_medians_ms"][1]
    setup = result["latency_setup"]
    assert setup["sessions"] == 3 and setup["repeats"] * setup["sessions"] >= 20
    assert "| ONNX Runtime, median ms | fp32 1×" in report and "Median of 3 sessions' medians, each of 7" in report
    pruned = json.loads((out / "vocab.json").read_text())
    assert "## Smaller vocabulary (model_vocab)" in report
    assert f"{pruned['vocab_before']:,} → {pruned['vocab_after']:,} word-embedding rows kept" in report
    assert f"→ {pruned['test_score_after']:.4f}, kept {pruned['kept']:.4f}" in report


def test_vocab_benchmark_pools_its_models(tmp_path, tiny_teacher_dir):
    import subprocess
    import sys
    from pathlib import Path

    rows = [("the movie was good", "pos"), ("a bad plot", "neg"), ("good actors", "pos"), ("the film was dull", "neg")]
    corpus = tmp_path / "few_words.csv"
    corpus.write_text("text,label\n" + "".join(f"{t},{label}\n" for t, label in rows * 10))
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "vocab.py"
    out = tmp_path / "vocab.json"
    pairs = [f"{corpus}={tiny_teacher_dir}"] * 2
    done = subprocess.run([sys.executable, str(script), *pairs, "--json", str(out)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(out.read_text())
    first = result["models"][0]
    assert first["vocab_after"] < first["vocab_before"] and first["params_after"] < first["params_before"]
    assert first["points_lost"] == pytest.approx(100 * (first["test_score_before"] - first["test_score_after"]))
    summary = result["summary"]
    assert summary["all"]["models"] == 2 and summary[tiny_teacher_dir.name]["models"] == 2
    assert summary["all"]["test_sentences"] == 2 * first["n_test"]


def test_every_family_prunes_and_reloads_with_identical_covered_logits(family, tmp_path):
    student, tok = _student(family, tmp_path)
    corpus = ["the movie was good", "a dull plot", "great actors"]
    pruned, _ = vocab.prune_vocabulary(student, tok, corpus)
    reloaded = export.load(export.save(pruned, tmp_path / "small", tokenizer=tok))
    covered = tok(["the plot was good", "a great movie"], padding=True, return_tensors="pt")
    with torch.no_grad():
        want = student(**covered).logits
        torch.testing.assert_close(pruned(**covered).logits, want, atol=0, rtol=0)
        torch.testing.assert_close(reloaded(**covered).logits, want, atol=0, rtol=0)
    assert reloaded.get_input_embeddings().weight.shape[0] == len(vocab.used_ids(tok, corpus))


def test_report_words_for_new_and_older_vocab_files():
    from blockswap import report

    base = {"vocab_before": 30522, "vocab_after": 12818, "word_embedding_cut": 0.58, "params_before": 17.6e6,
            "params_after": 10.8e6, "metric": "accuracy", "test_score_before": 0.8373, "test_score_after": 0.8392}  # fmt: skip
    new = report._vocab_lines({**base, "kept": 1.0023, "kept_ci95": [0.993, 1.011], "n_test": 1057,
                               "test_texts_all_tokens_kept": 0.689})  # fmt: skip
    assert "nearest its own (cosine)" in new[0] and "kept 1.0023 [0.993, 1.011] (n = 1057)" in new[1]
    older = report._vocab_lines({**base, "test_texts_tokenised_identically": 0.689})  # before the tokenizer was kept
    assert "older blockswap" in older[0] and older[1] == "- test accuracy: 0.8373 → 0.8392"


def test_round_robin_times_every_runner_in_interleaved_rounds():
    from blockswap import measure

    calls = []
    runners = {name: (lambda name=name: calls.append(name)) for name in ("a", "b", "c")}
    timed = measure.round_robin(runners, repeats=10, warmup=1)
    assert {k: v["repeats"] for k, v in timed.items()} == {"a": 10, "b": 10, "c": 10}
    rounds = -(-10 // measure.ROUND_ROBIN_BURST)
    assert calls.count("a") == 10 + rounds  # each round: one untimed warm-up call, then the burst
    switches = sum(x != y for x, y in zip(calls[:-1], calls[1:], strict=True))
    assert switches >= 2 * rounds  # runners alternate round by round (one after the other: 2 switches)


def test_ort_latency_keeps_one_session_of_each_export_and_precision_open_at_a_time(tmp_path, monkeypatch):
    # 3 draws of a teacher and a student in fp32 and int8, all open at once, held 3 GB in a run's export stage
    import weakref

    live, most = [0], [0]

    class Session:
        def __init__(self):
            live[0] += 1
            most[0] = max(most[0], live[0])
            weakref.finalize(self, lambda: live.__setitem__(0, live[0] - 1))

        def logits(self, batch):
            return batch["input_ids"] * 2

    monkeypatch.setattr(
        deploy.OnnxClassifier, "load", classmethod(lambda cls, folder, int8=False, threads=None: Session())
    )
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / deploy.INT8_FILE).write_bytes(b"")  # "a" has an int8 file, "b" does not
    batch = {"input_ids": torch.ones(2, 3, dtype=torch.long)}
    exports = {"a": (tmp_path / "a", {"b1": batch, "b2": batch}), "b": (tmp_path / "b", {"b1": batch})}
    out = deploy.ort_latency(exports, threads=1, repeats=3, warmup=0, sessions=3)
    assert most[0] == 3 and live[0] == 0  # a fp32, a int8, b fp32; each draw let go before the next opens
    assert set(out["a"]["b2"]) == {"ort_fp32", "ort_int8"} and set(out["b"]["b1"]) == {"ort_fp32"}
    assert all(len(out[n][c][rt]["session_medians_ms"]) == 3 for n in out for c in out[n] for rt in out[n][c])
    assert out["a"]["b1"]["ort_int8"]["repeats"] == 9 and out["b"]["b1"]["ort_fp32"]["batch"] == [2, 3]


def test_latency_texts_are_the_longer_half_longest_first():
    texts = ["a", "bbb", "cc", "dddd", "eeeee", "f"]
    assert deploy.latency_texts(texts) == ["eeeee", "dddd", "bbb"]
    assert deploy.latency_texts(texts, n=2) == ["eeeee", "dddd"]


def test_commands_run_pytorch_models_on_the_gpu_when_present_unless_told_cpu(
    tmp_path, monkeypatch, capsys, tiny_teacher_dir, tiny_csv
):
    from blockswap import commands

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert commands.compute_device().type == "cuda" and commands.compute_device(cpu=True).type == "cpu"
    # open_model places the model where compute_device says ('meta' stands in for a GPU here)
    monkeypatch.setattr(commands, "compute_device", lambda cpu=False: torch.device("cpu" if cpu else "meta"))
    model, _ = commands.open_model(str(tiny_teacher_dir))
    assert {p.device.type for p in model.parameters()} == {"meta"}
    model, _ = commands.open_model(str(tiny_teacher_dir), cpu=True)
    assert {p.device.type for p in model.parameters()} == {"cpu"}
    # --cpu reaches it from evaluate, predict and prune-vocab
    seen = []
    monkeypatch.setattr(commands, "compute_device", lambda cpu=False: seen.append(cpu) or torch.device("cpu"))
    (tmp_path / "in.txt").write_text("a fine film\n")
    model_dir, data, texts = str(tiny_teacher_dir), ["--dataset", str(tiny_csv)], str(tmp_path / "in.txt")
    assert main(["predict", "--model", model_dir, "--input", texts, "--out", str(tmp_path / "p"), "--cpu"]) == 0
    assert main(["evaluate", "--model", model_dir, *data, "--json", str(tmp_path / "e.json"), "--cpu"]) == 0
    assert main(["prune-vocab", model_dir, "--out", str(tmp_path / "small"), *data, "--candidates", "1", "--cpu"]) == 0
    assert main(["predict", "--model", model_dir, "--input", texts, "--out", str(tmp_path / "q")]) == 0
    assert seen == [True, True, True, False]
