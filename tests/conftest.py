"""Tiny random models of every supported architecture: no downloads, milliseconds per forward."""

from __future__ import annotations

import pytest
import torch
from accelerate.state import AcceleratorState
from transformers import AutoConfig

from blockswap import arch
from blockswap.compact import CompactSpec


@pytest.fixture(autouse=True)
def _fresh_accelerator_state():
    """Each test may build an Accelerator with its own device and precision; accelerate keeps one per process (on a
    GPU machine a test's ``Accelerator(cpu=True)`` after a GPU test failed while the partial state was kept)."""
    AcceleratorState._reset_state(reset_partial_state=True)
    yield


ARCHS = ["bert", "distilbert", "roberta", "electra", "xlm-roberta", "mpnet", "deberta-v2", "modernbert"]
# Families whose transformers code has no sdpa kernel (their blocks only run eager attention).
EAGER_ONLY = {"mpnet", "deberta-v2"}
TINY_COMPACT = CompactSpec(hidden=8, layers=2, heads=2, ffn=16, dropout=0.0)
IDENTITY_COMPACT = CompactSpec(hidden=8, layers=2, heads=2, ffn=16, dropout=0.0, norm="none")


def tiny_config(model_type: str = "bert", *, layers: int = 3, num_labels: int = 2, **extra):
    kw = dict(
        vocab_size=99,
        hidden_size=32,
        num_hidden_layers=layers,
        num_attention_heads=4,
        intermediate_size=37,
        max_position_embeddings=64,
        num_labels=num_labels,
    )
    if model_type == "distilbert":
        kw = dict(
            vocab_size=99,
            dim=32,
            n_layers=layers,
            n_heads=4,
            hidden_dim=37,
            max_position_embeddings=64,
            num_labels=num_labels,
        )
    if model_type == "electra":
        kw["embedding_size"] = 32
    if model_type in ("roberta", "xlm-roberta"):
        kw["pad_token_id"] = 1
    if model_type == "deberta-v2":  # DeBERTa-v3's shape: relative attention, shared keys, no token types
        kw.update(
            relative_attention=True,
            position_buckets=8,
            max_relative_positions=-1,
            pos_att_type=["p2c", "c2p"],
            share_att_key=True,
            norm_rel_ebd="layer_norm",
            type_vocab_size=0,
            position_biased_input=False,
            pooler_hidden_size=32,
        )
    if model_type == "modernbert":  # a local (sliding-window) layer between global ones, window < seq
        kw.update(
            global_attn_every_n_layers=2,
            local_attention=4,
            pad_token_id=0,
            bos_token_id=2,
            eos_token_id=3,
            cls_token_id=2,
            sep_token_id=3,
        )
    kw.update(extra)
    return AutoConfig.for_model(model_type, **kw)


def tiny_model(model_type: str = "bert", *, seed: int = 0, **kw):
    torch.manual_seed(seed)
    return arch.model_from_config(tiny_config(model_type, **kw)).eval()


def set_attention_or_skip(model, family: str, attn: str) -> None:
    if attn == "sdpa" and family in EAGER_ONLY:
        pytest.skip(f"{family} has no sdpa attention in transformers")
    arch.set_attention(model, attn)


def padded_batch(lengths=(7, 4, 2), seq=9, seed=1):
    """Token ids with right padding: sample i has lengths[i] real tokens."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 99, (len(lengths), seq), generator=g)
    mask = torch.zeros_like(ids)
    for i, n in enumerate(lengths):
        mask[i, :n] = 1
        ids[i, n:] = 0
    return ids, mask


def labelled_batches(n: int = 2) -> list[dict[str, torch.Tensor]]:
    """``n`` padded batches of 4 samples with labels."""
    out = []
    for s in range(n):
        ids, mask = padded_batch(lengths=(9, 6, 4, 8), seed=s)
        out.append({"input_ids": ids, "attention_mask": mask, "labels": torch.tensor([0, 1, 1, 0])})
    return out


@pytest.fixture(params=ARCHS)
def family(request):
    return request.param


POSITIVE = ["good", "great", "fine", "lovely", "superb", "fun", "moving", "smart"]
NEGATIVE = ["bad", "awful", "dull", "boring", "weak", "messy", "flat", "silly"]
NEUTRAL = ["the", "movie", "film", "plot", "actors", "was", "is", "and", "story", "very", "quite", "a"]


def tiny_tokenizer(folder):
    """A WordPiece tokenizer over a 40-word vocabulary, written to ``folder`` (no download)."""
    from transformers import BertTokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + POSITIVE + NEGATIVE + NEUTRAL
    tok = BertTokenizerFast(vocab={w: i for i, w in enumerate(vocab)})
    tok.save_pretrained(folder)
    return tok


def sentiment_rows(n: int, seed: int = 0, classes=("neg", "pos")):
    """Short texts whose label is decided by their sentiment words."""
    import random

    rng = random.Random(seed)
    words = {"neg": NEGATIVE, "pos": POSITIVE, "meh": NEUTRAL[:4]}
    rows = []
    for i in range(n):
        label = classes[i % len(classes)]
        text = " ".join(rng.choice(NEUTRAL) for _ in range(rng.randint(2, 6)))
        text += " " + " ".join(rng.choice(words[label]) for _ in range(rng.randint(1, 3)))
        rows.append((text, label))
    return rows


@pytest.fixture
def tiny_csv(tmp_path):
    import csv

    path = tmp_path / "reviews.csv"
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["review", "sentiment"])
        w.writerows(sentiment_rows(120))
    return path


@pytest.fixture
def tiny_teacher_dir(tmp_path):
    """A tiny random BERT classifier + tokenizer folder (vocab of 37 words)."""
    folder = tmp_path / "teacher"
    tok = tiny_tokenizer(folder)
    model = tiny_model("bert", layers=3, vocab_size=len(tok))
    model.config.id2label = {0: "neg", 1: "pos"}
    model.config.label2id = {"neg": 0, "pos": 1}
    model.save_pretrained(folder)
    return folder


def logits_without_blockswap(folders: dict, ids: torch.Tensor, mask: torch.Tensor, tmp_path) -> dict:
    """Each saved classifier folder's logits on (ids, mask), computed in a process where blockswap cannot be
    imported (``AutoModelForSequenceClassification`` with the folder's remote code)."""
    import json
    import subprocess
    import sys
    import textwrap

    torch.save({"ids": ids, "mask": mask}, tmp_path / "inputs.pt")
    script = textwrap.dedent(
        f"""
        import json, sys
        sys.modules["blockswap"] = None  # blockswap must not be importable here
        import torch
        from transformers import AutoModelForSequenceClassification
        try:
            import blockswap  # noqa: F401
            raise SystemExit("blockswap was importable")
        except ImportError:
            pass
        t = torch.load({str(tmp_path / "inputs.pt")!r})
        out = {{}}
        for name, folder in { ({k: str(v) for k, v in folders.items()})!r}.items():
            m = AutoModelForSequenceClassification.from_pretrained(folder, trust_remote_code=True).eval()
            with torch.no_grad():
                out[name] = m(input_ids=t["ids"], attention_mask=t["mask"]).logits.tolist()
        print(json.dumps(out))
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return {k: torch.tensor(v) for k, v in json.loads(done.stdout.strip().splitlines()[-1]).items()}
