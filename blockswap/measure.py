"""Honest cost measurement: parameters, operator-level MACs (eager attention), latency, memory."""

from __future__ import annotations

import functools
import gc
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch
from torch.utils.flop_counter import FlopCounterMode
from transformers import PreTrainedModel

from . import arch
from .compact import attention_kernel


def count_params(model: PreTrainedModel) -> dict:
    """Parameter counts: total, embeddings, encoder blocks (total and per block), the rest (head)."""
    total = sum(p.numel() for p in model.parameters())
    emb = sum(p.numel() for p in arch.embeddings(model).parameters())
    per_block = [sum(p.numel() for p in b.parameters()) for b in arch.blocks(model)]
    encoder = sum(per_block)
    return {
        "total": total,
        "embeddings": emb,
        "encoder": encoder,
        "non_embedding": total - emb,
        "head": total - emb - encoder,
        "per_block": per_block,
    }


def dummy_batch(model: PreTrainedModel, batch: int, seq_len: int) -> dict[str, torch.Tensor]:
    """A full-length batch of token ids (no padding), on the model's device."""
    device = next(model.parameters()).device
    vocab = int(getattr(model.config, "vocab_size", 1000))
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, max(6, vocab), (batch, seq_len), generator=g).to(device)
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    return inputs


def count_macs(model: PreTrainedModel, *, batch: int = 1, seq_len: int = 128) -> dict:
    """Multiply-accumulates of one forward pass, counted at the operator level.

    Attention runs in eager mode during counting, because the CPU SDPA kernel is invisible to
    ``FlopCounterMode`` (BERT-base would read 10.87 instead of 11.17 GMACs at seq 128).
    Returns totals and per-block MACs for ``(batch, seq_len)``; FLOPs = 2 x MACs.
    """
    previous = arch.set_attention(model, "eager")
    was_training = model.training
    model.eval()
    counter = FlopCounterMode(display=False)
    try:
        with counter, torch.no_grad(), attention_kernel("explicit"):
            model(**dummy_batch(model, batch, seq_len))
    finally:
        arch.set_attention(model, previous)
        model.train(was_training)
    per_module = {k: sum(v.values()) // 2 for k, v in counter.get_flop_counts().items()}
    root = type(model).__name__
    path = arch.block_path(model)
    n = arch.num_blocks(model)
    per_block = [per_module.get(f"{root}.{path}.{i}", 0) for i in range(n)]
    total = counter.get_total_flops() // 2
    return {
        "macs": total,
        "gmacs": total / 1e9,
        "per_block": per_block,
        "encoder": sum(per_block),
        "batch": batch,
        "seq_len": seq_len,
    }


@dataclass
class Latency:
    median_ms: float
    p10_ms: float
    p90_ms: float
    min_ms: float
    repeats: int
    warmup: int
    batch: int
    seq_len: int
    threads: int
    device: str
    dtype: str
    attention: str
    cpu: str

    def as_dict(self) -> dict:
        return asdict(self)


def _quantile(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q * (len(s) - 1))))]


def wall_times(
    fn: Callable[[], object], *, repeats: int, warmup: int, sync: Callable[[], None] | None = None
) -> list[float]:
    """Milliseconds of ``repeats`` calls of ``fn`` after ``warmup`` untimed ones (``sync`` waits for a device)."""
    sync = sync or (lambda: None)
    times = []
    for i in range(warmup + repeats):
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        if i >= warmup:
            times.append((time.perf_counter() - t0) * 1000)
    return times


ROUND_ROBIN_BURST = 4  # timed calls per callable per round


def round_robin(runners: dict, *, repeats: int, warmup: int, seed: int = 0) -> dict:
    """Median and spread (``spread``) of each of ``runners`` (name -> callable with no arguments): shuffled rounds,
    in each a warm burst per callable of ``warmup`` untimed and up to ``ROUND_ROBIN_BURST`` timed calls, until each
    has ``repeats``. On a shared machine whose speed drifts, the drift falls on every callable alike."""
    import random

    rng, times = random.Random(seed), {k: [] for k in runners}
    while min(len(t) for t in times.values()) < repeats:
        order = list(runners)
        rng.shuffle(order)
        for key in order:
            n = min(ROUND_ROBIN_BURST, repeats - len(times[key]))  # every runner has as many as the others
            times[key] += wall_times(runners[key], repeats=n, warmup=warmup)
    return {k: spread(v) for k, v in times.items()}


def session_rounds(open_runners: Callable[[int], dict], *, sessions: int, repeats: int, warmup: int) -> dict:
    """``round_robin`` over ``sessions`` draws, one after another: ``open_runners(k)`` opens the k-th draw's runners
    (key -> callable), timed together in shuffled rounds and let go before the next draw opens. Results are keyed
    ``(*key, k)``, for ``by_session``. Every draw open at once multiplies the memory: the 3 draws of a run's export
    stage (teacher and student, fp32 and int8: 12 ONNX Runtime sessions) held 3 GB on 2 cores (session 26)."""
    timed = {}
    for k in range(sessions):
        runners = open_runners(k)
        for key, stats in round_robin(runners, repeats=repeats, warmup=warmup, seed=k).items():
            timed[(*key, k)] = stats
        del runners  # the last reference to this draw's sessions
    return timed


def session_summary(sessions: list[dict]) -> dict:
    """One model and runtime timed in several independent sessions (each a ``spread``): the median of the sessions'
    medians (what is compared), their p10/p90 medians, and each session's median. One ONNX Runtime session of a
    small int8 model can run its element-wise operators 2-3x slower than another session of the same file for its
    whole life (measured on a 2-core AMD EPYC, cause not found): one session is one draw. Sessions of one process
    are not independent draws, though: once all three of a process's sessions of a model were slow together
    (benchmarks/ort_compare.py), so compare models timed in the same process, interleaved."""
    medians = sorted(s["median_ms"] for s in sessions)
    return {
        "median_ms": statistics.median(medians), "session_medians_ms": medians,
        "p10_ms": statistics.median(s["p10_ms"] for s in sessions), "p90_ms": statistics.median(s["p90_ms"] for s in sessions),
        "min_ms": min(s["min_ms"] for s in sessions), "repeats": sum(s["repeats"] for s in sessions), "sessions": len(sessions),
    }  # fmt: skip


def by_session(timed: dict[tuple, dict]) -> dict[tuple, dict]:
    """``round_robin`` results keyed ``(*key, session)`` -> ``{key: session_summary}`` over each key's sessions."""
    groups: dict[tuple, list[dict]] = {}
    for (*key, _session), stats in timed.items():
        groups.setdefault(tuple(key), []).append(stats)
    return {key: session_summary(sessions) for key, sessions in groups.items()}


def spread(times: list[float]) -> dict[str, float]:
    """Median, p10, p90 and minimum of timings (ms)."""
    return {"median_ms": statistics.median(times), "p10_ms": _quantile(times, 0.1), "p90_ms": _quantile(times, 0.9),
            "min_ms": min(times), "repeats": len(times)}  # fmt: skip


def latency(
    model: PreTrainedModel,
    *,
    batch: int = 1,
    seq_len: int = 128,
    repeats: int = 10,
    warmup: int = 3,
    inputs: dict[str, torch.Tensor] | None = None,
) -> Latency:
    """Wall time of one forward pass: warm-up, then ``repeats`` timed runs; median and spread."""
    model.eval()
    inputs = inputs if inputs is not None else dummy_batch(model, batch, seq_len)
    device = next(model.parameters()).device
    sync = torch.cuda.synchronize if device.type == "cuda" else None
    with torch.inference_mode():
        times = wall_times(lambda: model(**inputs), repeats=repeats, warmup=warmup, sync=sync)
    ids = inputs["input_ids"]
    return Latency(
        **spread(times),
        warmup=warmup,
        batch=int(ids.shape[0]),
        seq_len=int(ids.shape[1]),
        threads=torch.get_num_threads(),
        device=str(device),
        dtype=str(next(model.parameters()).dtype).replace("torch.", ""),
        attention=str(model.config._attn_implementation),
        cpu=cpu_name(),
    )


_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "avx512_vnni", "avx_vnni", "amx_int8")  # what kernels pick


def cpu_name() -> str:
    """The CPU's model name (Linux: /proc/cpuinfo), else what ``platform`` knows."""
    for line in _cpuinfo().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


@functools.cache  # model name and flags do not change while the process runs; latency() asks on every call
def _cpuinfo() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            return f.read()
    except OSError:  # not Linux
        return ""


def machine() -> dict:
    """What a timing depends on besides the code: CPU model and the features its kernels use, cores, torch's
    threads and vector ISA (``ATEN_CPU_CAPABILITY`` lowers it), and whether bf16 is native (``--mixed-precision
    auto`` trains in bf16 there, in fp32 elsewhere). Timings from different machines are not comparable."""
    flags = set(_cpuinfo().split())
    from .train import resolve_precision  # late: train imports the heavy training stack

    return {
        "cpu": cpu_name(),
        "cpu_flags": sorted(f for f in flags if f in _FLAGS),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "native_bf16": resolve_precision("auto", cpu=True) == "bf16",
    }


def busy_cpu_seconds(stat: str = "/proc/stat") -> float | None:
    """CPU seconds the whole machine has spent busy since boot (every process, every core; Linux ``/proc/stat``),
    or None elsewhere. The difference across a timed job, minus the job's own CPU time, is what other processes
    took: on 2 cores a second torch job makes both far slower than half speed (their threads contend), so a
    timing with other work beside it is not the code's."""
    try:
        with open(stat) as f:
            fields = f.readline().split()
    except OSError:
        return None
    if not fields or fields[0] != "cpu":
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in fields[1:9])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def peak_memory_mb(model: PreTrainedModel, *, batch: int = 1, seq_len: int = 128) -> float | None:
    """Peak accelerator memory of one forward pass in MiB (None on CPU, where it is not isolable)."""
    device = next(model.parameters()).device
    if device.type != "cuda":
        return None
    gc.collect()
    torch.cuda.reset_peak_memory_stats(device)
    with torch.inference_mode():
        model(**dummy_batch(model, batch, seq_len))
    return torch.cuda.max_memory_allocated(device) / 2**20


def process_peak_rss_mb() -> float:
    """Peak resident memory of this process so far (CPU memory cannot be attributed to one forward)."""
    import resource
    import sys

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024  # bytes on macOS, KiB on Linux


def cut(before: float, after: float) -> float:
    """Fraction removed: 1 - after / before."""
    return 1.0 - after / before if before else 0.0


LATENCY_REPEATS = 5  # timed passes of a run's measurements (config: run.latency_repeats)
LATENCY_WARMUP = 2


@dataclass
class Cost:
    """What one model costs: parameters, MACs of one forward pass, latency per batch size, memory."""

    params: dict
    macs: dict
    latency: dict[int, Latency] = field(default_factory=dict)
    peak_memory_mb: float | None = None
    process_peak_rss_mb: float | None = None

    @property
    def gmacs(self) -> float:
        return self.macs["gmacs"]

    def cut(self, reference: Cost) -> dict[str, float]:
        """Fractions cut against ``reference`` (params, GMACs) and speed-ups at the shared batch sizes."""
        out = {
            "params_cut": cut(reference.params["total"], self.params["total"]),
            "gmacs_cut": cut(reference.macs["macs"], self.macs["macs"]),
        }
        for b, lat in self.latency.items():
            if b in reference.latency:
                out[f"speedup_b{b}"] = reference.latency[b].median_ms / lat.median_ms
        return out

    def as_dict(self) -> dict:
        out = {"params": self.params, "macs": self.macs}
        out.update({f"latency_b{b}": lat.as_dict() for b, lat in self.latency.items()})
        out.update(peak_memory_mb=self.peak_memory_mb, process_peak_rss_mb=self.process_peak_rss_mb)
        return out


def cost(
    model: PreTrainedModel,
    *,
    seq_len: int = 128,
    batch: int = 1,
    latency_batches: tuple[int, ...] = (1,),
    repeats: int = LATENCY_REPEATS,
    warmup: int = LATENCY_WARMUP,
) -> Cost:
    """Parameters, MACs at ``(batch, seq_len)`` and latency at each of ``latency_batches``."""
    return Cost(
        params=count_params(model),
        macs=count_macs(model, batch=batch, seq_len=seq_len),
        latency={b: latency(model, batch=b, seq_len=seq_len, repeats=repeats, warmup=warmup) for b in latency_batches},
        peak_memory_mb=peak_memory_mb(model, batch=batch, seq_len=seq_len),
        process_peak_rss_mb=process_peak_rss_mb(),
    )
