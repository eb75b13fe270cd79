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
