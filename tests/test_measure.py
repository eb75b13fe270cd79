import os
import time

import pytest
import torch

from blockswap import arch, measure
from blockswap.compact import attention_kernel
from blockswap.substitute import substitute

from .conftest import TINY_COMPACT, tiny_model


def analytic_bert_macs(*, batch, seq, layers, hidden, inter, labels):
    per_token = layers * (4 * hidden * hidden + 2 * hidden * inter)
    attention = layers * 2 * seq * seq * hidden  # QK^T and AV per sample
    head = hidden * hidden + hidden * labels  # pooler + classifier on the first token
    return batch * (seq * per_token + attention + head)


@pytest.mark.parametrize("batch, seq", [(1, 16), (3, 10)])
def test_tiny_bert_macs_equal_the_analytic_count(batch, seq):
    model = tiny_model("bert")
    got = measure.count_macs(model, batch=batch, seq_len=seq)
    want = analytic_bert_macs(batch=batch, seq=seq, layers=3, hidden=32, inter=37, labels=2)
    assert got["macs"] == want
    per_block = batch * (seq * (4 * 32 * 32 + 2 * 32 * 37) + 2 * seq * seq * 32)
    assert got["per_block"] == [per_block] * 3
    assert model.config._attn_implementation == "sdpa", "counting must restore the attention kernel"


def test_compact_block_macs_are_counted_with_attention():
    student = substitute(tiny_model("bert"), [1], TINY_COMPACT)
    seq = 10
    macs = measure.count_macs(student, batch=1, seq_len=seq)["per_block"][1]
    h, H, f = 8, 32, 16
    want = seq * (2 * H * h) + 2 * (seq * (4 * h * h + 2 * h * f) + 2 * seq * seq * h)
    assert macs == want
    with attention_kernel("fused"):  # as on a GPU: counted as the same explicit matmuls all the same
        assert measure.count_macs(student, batch=1, seq_len=seq)["per_block"][1] == want


def test_param_counts_add_up():
    model = tiny_model("bert")
    p = measure.count_params(model)
    assert p["total"] == sum(x.numel() for x in model.parameters())
    assert p["embeddings"] + p["encoder"] + p["head"] == p["total"]
    assert len(p["per_block"]) == arch.num_blocks(model)
    student = substitute(model, [0], TINY_COMPACT)
    q = measure.count_params(student)
    compact = sum(x.numel() for x in arch.blocks(student)[0].parameters())
    assert q["total"] == p["total"] - p["per_block"][0] + compact


def test_latency_records_its_conditions():
    lat = measure.latency(tiny_model("bert"), batch=2, seq_len=8, repeats=3, warmup=1)
    d = lat.as_dict()
    assert d["batch"] == 2 and d["seq_len"] == 8 and d["repeats"] == 3
    assert d["min_ms"] <= d["median_ms"] <= d["p90_ms"]
    assert d["threads"] >= 1 and d["device"] == "cpu" and d["dtype"] == "float32"


def _per_layer(*, seq, hidden, linear_per_token, extra=0):
    return seq * linear_per_token + 2 * seq * seq * hidden + extra  # + QK^T and AV


@pytest.mark.parametrize(
    "family", ["distilbert", "roberta", "xlm-roberta", "electra", "mpnet", "deberta-v2", "modernbert"]
)
def test_every_family_macs_equal_the_analytic_count(family):
    """Eager attention, batch 2, seq 10, hidden 32, FFN 37, 3 blocks, 2 labels (tiny_config)."""
    batch, seq, h, f, labels = 2, 10, 32, 37, 2
    model = tiny_model(family)
    if family != "deberta-v2" and family != "modernbert":
        # BERT's block; heads on the first token: DistilBERT pre_classifier + classifier, RoBERTa / ELECTRA /
        # MPNet dense + out_proj
        block = _per_layer(seq=seq, hidden=h, linear_per_token=4 * h * h + 2 * h * f)
        head = h * h + h * labels
    elif family == "deberta-v2":  # + disentangled attention: c2p and p2c against 2k relative positions
        k2 = 2 * 8  # position_buckets = 8
        rel_proj = 2 * k2 * h * h  # query_proj and key_proj of the relative embeddings, once per batch
        block = _per_layer(seq=seq, hidden=h, linear_per_token=4 * h * h + 2 * h * f, extra=2 * seq * k2 * h)
        head = h * h + h * labels  # ContextPooler dense + classifier
        got = measure.count_macs(model, batch=batch, seq_len=seq)
        assert got["per_block"] == [batch * block + rel_proj] * 3
        assert got["macs"] == 3 * (batch * block + rel_proj) + batch * head
        return
    else:  # ModernBERT: fused QKV, GLU feed-forward (h -> 2f -> f -> h); head: dense + classifier
        block = _per_layer(seq=seq, hidden=h, linear_per_token=4 * h * h + 3 * h * f)
        head = h * h + h * labels
    got = measure.count_macs(model, batch=batch, seq_len=seq)
    assert got["per_block"] == [batch * block] * 3
    assert got["macs"] == batch * (3 * block + head) + (_rope_matmul_macs(model, seq) if family == "modernbert" else 0)


def _rope_matmul_macs(model, seq: int) -> int:
    """ModernBERT's rotary frequencies: transformers 5.17 computes them as a matmul per attention type over positions
    ``(1, S)`` (counted: the lower bound's device image failed this test without it), later versions as a broadcast
    product (no MACs)."""
    import inspect

    from transformers.models.modernbert import modeling_modernbert

    if "@ position_ids" not in inspect.getsource(modeling_modernbert.ModernBertRotaryEmbedding.forward):
        return 0
    c = model.config
    return len(set(c.layer_types)) * seq * (c.hidden_size // c.num_attention_heads) // 2


def test_machine_names_what_timings_depend_on():
    m = measure.machine()
    assert m["cpu"] and m["cores"] == os.cpu_count() and m["torch_threads"] == torch.get_num_threads()
    assert m["torch_cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert isinstance(m["native_bf16"], bool) and set(m["cpu_flags"]) <= set(measure._FLAGS)


def test_busy_cpu_seconds_counts_busy_time_only(tmp_path):
    stat = tmp_path / "stat"
    # user nice system idle iowait irq softirq steal guest guest_nice, in clock ticks
    stat.write_text("cpu  100 20 30 1000 50 5 6 7 0 0\ncpu0 50 10 15 500 25 2 3 3 0 0\n")
    assert measure.busy_cpu_seconds(str(stat)) == pytest.approx(168 / os.sysconf("SC_CLK_TCK"))  # not idle, iowait
    assert measure.busy_cpu_seconds(str(tmp_path / "absent")) is None


def test_busy_cpu_seconds_sees_this_process_working():
    if not os.path.exists("/proc/stat"):
        assert measure.busy_cpu_seconds() is None
        return
    busy0, cpu0 = measure.busy_cpu_seconds(), time.process_time()
    while time.process_time() - cpu0 < 0.5:  # half a CPU-second of our own
        sum(i * i for i in range(1000))
    busy, own = measure.busy_cpu_seconds() - busy0, time.process_time() - cpu0
    # the machine was busy at least as long as this process (others only add); idle time would not count
    assert busy >= 0.8 * own, (busy, own)
