"""Tasks beyond single-sentence classification: sentence pairs."""

import csv
import json
import random

import pytest

from blockswap.cli import main
from blockswap.config import DataConfig
from blockswap.data import load_source, read_texts
from blockswap.errors import DataError
from blockswap.loaders import tokenize

from .conftest import NEUTRAL, tiny_tokenizer
from .test_pipeline import ARTIFACTS, FAST


def _pair_rows(n: int, seed: int = 0):
    """Paraphrase-style pairs: label 'same' when both sentences share their last word."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        a = [rng.choice(NEUTRAL) for _ in range(rng.randint(2, 5))]
        b = [rng.choice(NEUTRAL) for _ in range(rng.randint(2, 5))]
        same = i % 2 == 0
        b[-1] = a[-1] if same else rng.choice([w for w in NEUTRAL if w != a[-1]])
        rows.append((" ".join(a), " ".join(b), "same" if same else "different"))
    return rows


@pytest.fixture
def pair_csv(tmp_path):
    path = tmp_path / "pairs.csv"
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["sentence1", "sentence2", "label"])
        w.writerows(_pair_rows(120))
    return path


def test_pairs_are_detected_and_reach_the_model_as_pairs(pair_csv, tmp_path):
    dsd = load_source(DataConfig(dataset=str(pair_csv)))
    assert dsd["train"].column_names == ["text", "text_pair", "label"]
    assert dsd["train"].features["label"].names == ["different", "same"]
    tok = tiny_tokenizer(tmp_path / "tok")
    enc = tokenize(dsd, tok, 64)
    row, raw = enc["test"][0], dsd["test"][0]
    assert row["input_ids"] == tok(raw["text"], raw["text_pair"])["input_ids"]
    sep = tok.sep_token_id
    assert row["input_ids"].count(sep) == 2, "[CLS] a [SEP] b [SEP]"
    second = row["input_ids"].index(sep) + 1
    assert set(row["token_type_ids"][:second]) == {0} and set(row["token_type_ids"][second:]) == {1}


def test_explicit_pair_column_and_its_errors(tmp_path):
    path = tmp_path / "p.csv"
    path.write_text("a,b,label\nx y,y z,0\nx,z,1\n" * 10)
    dsd = load_source(DataConfig(dataset=str(path), text_column="a", text_pair_column="b"))
    assert dsd["train"][0]["text_pair"] in ("y z", "z")
    with pytest.raises(DataError, match="text-pair column 'c' not found"):
        load_source(DataConfig(dataset=str(path), text_column="a", text_pair_column="c"))
    assert read_texts(str(path), text_column="a", text_pair_column="b")[0] == ("x y", "y z")
    with pytest.raises(DataError, match="needs a table"):
        read_texts("-", text_pair_column="b")


def test_run_on_sentence_pairs_end_to_end(tmp_path, capsys, pair_csv, tiny_teacher_dir):
    out = tmp_path / "run"
    argv = ["run", "--teacher", str(tiny_teacher_dir), "--dataset", str(pair_csv), "--out", str(out), *FAST]
    assert main(argv) == 0, capsys.readouterr().err
    for name in ARTIFACTS:
        assert (out / name).exists(), name
    config = (out / "config.yaml").read_text()
    assert "text_pair_column" in config
    table = tmp_path / "in.csv"
    table.write_text("s1,s2\nthe movie,the film\nplot and story,the plot\n")
    capsys.readouterr()
    argv = ["predict", "--model", str(out / "model"), "--input", str(table), "--text-column", "s1"]
    assert main([*argv, "--text-pair-column", "s2"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["text_pair"] for r in rows] == ["the film", "the plot"]
    assert all(r["label"] in ("neg", "pos") for r in rows)  # the tiny teacher's own label names


# --- regression -------------------------------------------------------------------------------------------


def _score_rows(n: int, seed: int = 0):
    """Texts whose score (0..5, non-integer) rises with the number of positive words."""
    from .conftest import POSITIVE

    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        k = rng.randint(0, 3)
        words = [rng.choice(NEUTRAL) for _ in range(rng.randint(2, 5))] + [rng.choice(POSITIVE) for _ in range(k)]
        rng.shuffle(words)
        rows.append((" ".join(words), round(k * 1.5 + rng.random() * 0.5, 3)))
    return rows


@pytest.fixture
def score_csv(tmp_path):
    path = tmp_path / "scores.csv"
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        w.writerows(_score_rows(120))
    return path


def test_regression_is_detected_and_split_by_quintile(score_csv):
    dsd = load_source(DataConfig(dataset=str(score_csv)))
    assert dsd["train"].features["label"].dtype == "float32"
    assert isinstance(dsd["train"][0]["label"], float)
    sizes = {k: len(v) for k, v in dsd.items()}
    assert sizes == {"train": 100, "validation": 10, "test": 10}  # 10 % of each quintile (24 rows): 2
    # every split spans the label range (stratified on quintiles), not just a slice of it
    for split in ("validation", "test"):
        labels = dsd[split]["label"]
        assert min(labels) < 1.0 and max(labels) > 3.0


def test_task_flag_forces_regression_on_whole_numbers_and_refuses_words(tmp_path, tiny_csv):
    path = tmp_path / "stars.csv"
    path.write_text("text,label\n" + "".join(f"review {i},{i % 5 + 1}\n" for i in range(60)))
    assert hasattr(load_source(DataConfig(dataset=str(path)))["train"].features["label"], "names")
    forced = load_source(DataConfig(dataset=str(path), task="regression"))
    assert forced["train"].features["label"].dtype == "float32"
    with pytest.raises(DataError, match="numeric labels"):
        load_source(DataConfig(dataset=str(tiny_csv), task="regression"))


def test_regression_metrics_match_hand_computed_values():
    import torch

    from blockswap.evaluate import kept_interval, metrics

    preds = torch.tensor([[1.0], [2.0], [3.0], [5.0]])
    labels = torch.tensor([1.0, 3.0, 2.0, 4.0])
    m = metrics(preds, labels, 1)
    # Pearson by hand: centred x = [-1.75, -0.75, 0.25, 2.25], y = [-1.5, 0.5, -0.5, 1.5]
    sxy, sxx, syy = 2.625 - 0.375 - 0.125 + 3.375, 8.75, 5.0
    assert m["metric"] == "pearson" and m["score"] == pytest.approx(sxy / (sxx * syy) ** 0.5)
    # Spearman: ranks [1, 2, 3, 4] vs [1, 3, 2, 4] -> 1 - 6 * 2 / (4 * 15) = 0.8
    assert m["spearman"] == pytest.approx(0.8)
    assert m["mse"] == pytest.approx((0 + 1 + 1 + 1) / 4)
    ties = metrics(torch.tensor([[1.0], [1.0], [2.0]]), torch.tensor([1.0, 2.0, 3.0]), 1)
    assert ties["spearman"] == pytest.approx(0.8660254, abs=1e-6)  # scipy.stats.spearmanr([1, 1, 2], [1, 2, 3])
    same = kept_interval(m, m)
    assert same["kept"] == 1.0 and same["ci95"] == [1.0, 1.0]
    g = torch.Generator().manual_seed(0)
    labels = torch.randn(200, generator=g)
    preds = (labels + 0.3 * torch.randn(200, generator=g))[:, None]
    m = metrics(preds, labels, 1)
    worse = metrics(preds + torch.randn(200, 1, generator=g), labels, 1)
    ci = kept_interval(m, worse)
    assert ci["kept"] == pytest.approx(worse["score"] / m["score"]) and ci["ci95"][0] < ci["ci95"][1]


def test_regression_losses():
    import torch

    from blockswap.losses import kd_logits, task_loss

    s, t = torch.tensor([[1.0], [3.0]]), torch.tensor([[2.0], [3.0]])
    assert task_loss(s, torch.tensor([1.0, 1.0])).item() == pytest.approx((0 + 4) / 2)
    assert kd_logits(s, t, temperature=2.0).item() == pytest.approx(0.5)
    assert kd_logits(t, t, temperature=2.0).item() == 0.0


def test_run_on_a_regression_task_end_to_end(tmp_path, capsys, score_csv):
    from blockswap.cli import main as cli

    base = tmp_path / "base"
    tok = tiny_tokenizer(base)
    from .conftest import tiny_model

    tiny_model("bert", layers=3, vocab_size=len(tok)).save_pretrained(base)
    out = tmp_path / "run"
    argv = [
        "run",
        "--finetune-model",
        str(base),
        "--dataset",
        str(score_csv),
        "--out",
        str(out),
        "--finetune-epochs",
        "2",
    ]
    assert cli([*argv, *FAST]) == 0, capsys.readouterr().err
    for name in ARTIFACTS:
        assert (out / name).exists(), name
    summary = json.loads((out / "summary.json").read_text())
    assert summary["metric"] == "pearson"
    low, high = summary["kept_test_ci95"]
    assert low <= summary["kept_test"] <= high
    curve = json.loads((out / "curve.json").read_text())
    assert curve["metric"] == "pearson" and all("test_score" in r for r in curve["rows"])
    teacher = json.loads((out / "teacher.json").read_text())
    assert set(teacher["test"]) >= {"pearson", "spearman", "mse", "preds"}
    assert "test pearson" in (out / "report.md").read_text()
    capsys.readouterr()
    texts = tmp_path / "t.txt"
    texts.write_text("good great fine\nthe movie\n")
    assert cli(["predict", "--model", str(out / "model"), "--input", str(texts)]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [sorted(r) for r in rows] == [["index", "text", "value"]] * 2
    assert main(["evaluate", "--model", str(out / "model"), "--dataset", str(score_csv)]) == 0
    assert "Spearman" in capsys.readouterr().out


# --- token classification ---------------------------------------------------------------------------------


def _tagged_rows(n: int, seed: int = 0):
    """Sentences of known words; sentiment words are entities: POS (B-POS, I-POS for a run) and NEG."""
    from .conftest import NEGATIVE, POSITIVE

    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        tokens, tags = [], []
        for _ in range(rng.randint(3, 7)):
            r = rng.random()
            if r < 0.6:
                tokens.append(rng.choice(NEUTRAL))
                tags.append("O")
            else:
                kind, words = ("POS", POSITIVE) if r < 0.8 else ("NEG", NEGATIVE)
                for j in range(rng.randint(1, 2)):
                    tokens.append(rng.choice(words))
                    tags.append(("B-" if j == 0 else "I-") + kind)
        rows.append({"tokens": tokens, "tags": tags})
    return rows


@pytest.fixture
def tagged_jsonl(tmp_path):
    path = tmp_path / "ner.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in _tagged_rows(120)))
    return path


def test_entity_spans_follow_seqeval():
    from blockswap.tagging import entities, sentence_counts

    tags = ["B-PER", "I-PER", "O", "I-LOC", "B-LOC", "B-LOC", "I-ORG", "I-ORG"]
    assert entities(tags) == {("PER", 0, 1), ("LOC", 3, 3), ("LOC", 4, 4), ("LOC", 5, 5), ("ORG", 6, 7)}
    # a wrong boundary is a miss and a false alarm: 1 of 2 predicted right, 1 of 2 gold found
    assert sentence_counts(["B-PER", "I-PER", "O", "B-LOC"], ["B-PER", "B-PER", "O", "B-LOC"]) == (1, 2, 3)


def test_tagging_metrics_by_hand():
    from blockswap.evaluate import kept_interval
    from blockswap.tagging import tagging_metrics

    names = ["O", "B-X", "I-X"]
    gold = [[1, 2, 0, 1], [0, 0, 1]]
    pred = [[1, 2, 0, 0], [0, 1, 1]]  # sentence 1: 1 of 2 found; sentence 2: 1 right + 1 false alarm
    m = tagging_metrics(pred, gold, names)
    assert m["metric"] == "f1" and m["precision"] == pytest.approx(2 / 3) and m["recall"] == pytest.approx(2 / 3)
    assert m["f1"] == pytest.approx(2 / 3) and m["word_accuracy"] == pytest.approx(5 / 7)
    same = kept_interval(m, m)
    assert same["kept"] == 1.0 and same["ci95"] == [1.0, 1.0]


def test_labels_go_to_the_first_sub_token(tmp_path, tagged_jsonl):
    from blockswap.tagging import IGNORE

    from .conftest import tiny_tokenizer

    dsd = load_source(DataConfig(dataset=str(tagged_jsonl)))
    names = dsd["train"].features["label"].feature.names
    assert names == ["O", "B-NEG", "B-POS", "I-NEG", "I-POS"]
    tok = tiny_tokenizer(tmp_path / "tok")
    from datasets import ClassLabel, Dataset, DatasetDict, Features, Sequence, Value

    feats = Features({"tokens": Sequence(Value("string")), "label": Sequence(ClassLabel(names=names))})
    ds = Dataset.from_dict({"tokens": [["the", "good", "movie"]], "label": [[0, 2, 0]]}, features=feats)
    enc = tokenize(DatasetDict(test=ds), tok, 64)["test"][0]
    assert enc["labels"] == [IGNORE, 0, 2, 0, IGNORE]  # [CLS] the good movie [SEP]
    from transformers import BertTokenizerFast

    pieces = BertTokenizerFast(
        vocab={w: i for i, w in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "good", "##ish", "x"])}
    )
    ds = Dataset.from_dict({"tokens": [["goodish", "x"]], "label": [[2, 0]]}, features=feats)
    enc = tokenize(DatasetDict(test=ds), pieces, 64)["test"][0]
    assert enc["input_ids"] == [2, 4, 5, 6, 3] and enc["labels"] == [IGNORE, 2, IGNORE, 0, IGNORE]


def test_run_on_token_classification_end_to_end(tmp_path, capsys, tagged_jsonl):
    from transformers import BertForTokenClassification

    from .conftest import tiny_config

    base = tmp_path / "base"
    tok = tiny_tokenizer(base)
    import torch

    torch.manual_seed(0)
    BertForTokenClassification(tiny_config("bert", vocab_size=len(tok))).save_pretrained(base)
    out = tmp_path / "run"
    argv = ["run", "--finetune-model", str(base), "--dataset", str(tagged_jsonl), "--out", str(out)]
    train = ["--finetune-epochs", "10", "--finetune-lr", "3e-3", "--finetune-batch-size", "8"]
    assert main([*argv, *train, *FAST]) == 0, capsys.readouterr().err
    for name in ARTIFACTS:
        assert (out / name).exists(), name
    teacher = json.loads((out / "teacher.json").read_text())
    assert teacher["test"]["metric"] == "f1" and teacher["validation"]["f1"] > 0.5, "the tiny tagger learns the words"
    summary = json.loads((out / "summary.json").read_text())
    assert (
        summary["metric"] == "f1"
        and summary["kept_test_ci95"][0] <= summary["kept_test"] <= summary["kept_test_ci95"][1]
    )
    # the saved student reloads without blockswap as a token classifier with identical outputs
    from blockswap import export

    student = export.load(out / "model")
    assert type(student).__name__ == "BertForTokenClassification"
    remote = __import__("transformers").AutoModelForTokenClassification.from_pretrained(
        out / "model", trust_remote_code=True
    )
    ids = torch.tensor([[2, 10, 20, 3]])
    with torch.no_grad():
        torch.testing.assert_close(student(input_ids=ids).logits, remote.eval()(input_ids=ids).logits)
    capsys.readouterr()
    assert main(["evaluate", "--model", str(out / "model"), "--dataset", str(tagged_jsonl)]) == 0
    assert "entity F1" in capsys.readouterr().out
    assert main(["finetune", "--model", str(base), "--dataset", str(tagged_jsonl), "--out", str(tmp_path / "ft"),
                 "--max-steps", "2"]) == 0  # fmt: skip
    assert "test f1" in capsys.readouterr().out
    texts = tmp_path / "t.txt"
    texts.write_text("the good movie\n")
    assert main(["predict", "--model", str(out / "model"), "--input", str(texts)]) == 0
    row = json.loads(capsys.readouterr().out.splitlines()[0])
    assert row["words"] == ["the", "good", "movie"] and len(row["tags"]) == 3


# --- hub layouts (datasets.load_dataset replaced by local DatasetDicts of the same shape) --------------------


def _fake_hub(monkeypatch, dsd):
    import datasets

    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: dsd)


def test_glue_style_pairs_and_regression_from_the_hub(monkeypatch):
    from datasets import ClassLabel, Dataset, DatasetDict, Features, Value

    pairs = Features({"sentence1": Value("string"), "sentence2": Value("string"),
                      "label": ClassLabel(names=["not_equivalent", "equivalent"]), "idx": Value("int32")})  # fmt: skip
    rows = lambda n, label: {"sentence1": [f"a {i}" for i in range(n)], "sentence2": [f"b {i}" for i in range(n)],  # noqa: E731
                             "label": [label(i) for i in range(n)], "idx": list(range(n))}  # fmt: skip
    mrpc = DatasetDict(
        train=Dataset.from_dict(rows(40, lambda i: i % 2), features=pairs),
        validation=Dataset.from_dict(rows(10, lambda i: i % 2), features=pairs),
        test=Dataset.from_dict(rows(10, lambda i: -1), features=pairs),  # GLUE hides test labels
    )
    _fake_hub(monkeypatch, mrpc)
    dsd = load_source(DataConfig(dataset="glue", dataset_config="mrpc"))
    assert dsd["train"].column_names == ["text", "text_pair", "label"]
    assert len(dsd["test"]) == 10 and set(dsd["test"]["label"]) <= {0, 1}, "hidden test labels: validation is the test"
    scores = Features({"sentence1": Value("string"), "sentence2": Value("string"), "label": Value("float32")})
    stsb = DatasetDict(
        train=Dataset.from_dict(
            {k: v for k, v in rows(50, lambda i: (i % 11) / 2.2).items() if k != "idx"}, features=scores
        ),
        validation=Dataset.from_dict(
            {k: v for k, v in rows(10, lambda i: i / 2.5).items() if k != "idx"}, features=scores
        ),
    )
    _fake_hub(monkeypatch, stsb)
    dsd = load_source(DataConfig(dataset="glue", dataset_config="stsb"))
    assert dsd["train"].features["label"].dtype == "float32" and "text_pair" in dsd["test"].column_names


def test_conll_style_tagging_from_the_hub(monkeypatch):
    from datasets import ClassLabel, Dataset, DatasetDict, Features, Sequence, Value

    names = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]
    feats = Features(
        {"id": Value("string"), "tokens": Sequence(Value("string")), "ner_tags": Sequence(ClassLabel(names=names))}
    )
    make = lambda n: Dataset.from_dict(  # noqa: E731
        {
            "id": [str(i) for i in range(n)],
            "tokens": [["Ann", "lives", "in", "Oslo"]] * n,
            "ner_tags": [[1, 0, 0, 3]] * n,
        },
        features=feats,
    )
    _fake_hub(monkeypatch, DatasetDict(train=make(20), validation=make(5), test=make(5)))
    dsd = load_source(DataConfig(dataset="conll2003"))
    assert dsd["train"].features["label"].feature.names == names
    assert dsd["test"][0] == {"tokens": ["Ann", "lives", "in", "Oslo"], "label": [1, 0, 0, 3]}
    assert [len(dsd[k]) for k in ("train", "validation", "test")] == [20, 5, 5]


# --- newer encoders through the whole run ------------------------------------------------------------------


@pytest.mark.parametrize("family", ["mpnet", "deberta-v2", "modernbert", "ernie"])
def test_run_end_to_end_on_newer_and_unlisted_encoders(family, tmp_path, capsys, tiny_csv):
    import torch

    from blockswap import arch, export

    from .conftest import padded_batch, tiny_config

    teacher_dir = tmp_path / "teacher"
    tok = tiny_tokenizer(teacher_dir)
    torch.manual_seed(0)
    model = arch.model_from_config(tiny_config(family, vocab_size=len(tok)))
    model.config.id2label, model.config.label2id = {0: "neg", 1: "pos"}, {"neg": 0, "pos": 1}
    model.save_pretrained(teacher_dir)
    out = tmp_path / "run"
    argv = ["run", "--teacher", str(teacher_dir), "--dataset", str(tiny_csv), "--out", str(out), *FAST]
    assert main(argv) == 0, capsys.readouterr().err
    for name in ARTIFACTS:
        assert (out / name).exists(), name
    curve = json.loads((out / "curve.json").read_text())
    assert curve["rows"][-1]["substituted"] == [0, 1, 2] and curve["rows"][-1]["gmacs_cut"] > 0
    student = export.load(out / "model")
    ids, mask = padded_batch(seq=6)
    ids = ids.clamp(max=len(tok) - 1)
    from transformers import AutoModelForSequenceClassification

    remote = AutoModelForSequenceClassification.from_pretrained(out / "model", trust_remote_code=True).eval()
    with torch.no_grad():
        torch.testing.assert_close(
            student(input_ids=ids, attention_mask=mask).logits, remote(input_ids=ids, attention_mask=mask).logits
        )
