import torch
from accelerate import Accelerator

from blockswap import distill
from blockswap.compact import CompactBlock, CompactSpec
from blockswap.config import DistillConfig
from blockswap.teacher_cache import TeacherCache

from .conftest import labelled_batches, padded_batch, tiny_model


def _outputs(teacher, batch, cache=None, masks=True):
    return distill.teacher_outputs(teacher, batch, Accelerator(cpu=True), cache, masks=masks)


def _blockwise_runs(teacher, batches, epochs: int, **caches) -> dict:
    """``{name: (history, substitutes, cache)}``: the same seeded block-wise training with each cache."""
    results = {}
    for name, cache in caches.items():
        torch.manual_seed(0)
        subs = {i: CompactBlock(32, CompactSpec(hidden=8, layers=1, heads=2, ffn=16)) for i in range(3)}
        cfg = DistillConfig(blockwise_epochs=epochs, blockwise_lr=3e-3)
        history = distill.blockwise(teacher, subs, batches, cfg, accelerator=Accelerator(cpu=True), cache=cache)
        results[name] = (history, subs, cache)
    return results


def _assert_masks_equal(got, want):
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        if w is None or g is None:
            assert g is None and w is None
        elif isinstance(w, dict):  # ModernBERT-style: one mask per attention type
            assert g.keys() == w.keys()
            for k in w:
                torch.testing.assert_close(g[k], w[k], rtol=0, atol=0)
        else:
            torch.testing.assert_close(g, w, rtol=0, atol=0)


def test_cached_outputs_equal_the_teachers_on_real_tokens_for_every_family(family):
    """Served from the cache, a batch regrouped with other texts (other padding) gets the teacher's own hidden
    states (fp16-rounded) at real tokens, its logits, and each block's own mask (sliding windows included)."""
    teacher = tiny_model(family, layers=3)
    cache = TeacherCache(2**30)
    first = labelled_batches(2)
    for b in first:
        _outputs(teacher, b, cache)  # fills the cache
    assert cache.enabled and len(cache.rows) == 8 and cache.hits == 0
    # a new batch of texts from both earlier batches, in another order and padded to another width
    ids = torch.cat([first[1]["input_ids"][:2], first[0]["input_ids"][2:]])
    mask = torch.cat([first[1]["attention_mask"][:2], first[0]["attention_mask"][2:]])
    regrouped = {"input_ids": ids[[3, 0, 2, 1]], "attention_mask": mask[[3, 0, 2, 1]]}
    width = int(regrouped["attention_mask"].sum(1).max())
    regrouped = {k: v[:, :width] for k, v in regrouped.items()}
    want_in, want_out, want_logits, want_masks = _outputs(teacher, regrouped)
    got_in, got_out, got_logits, got_masks = _outputs(teacher, regrouped, cache)
    assert cache.hits == 1
    real = regrouped["attention_mask"].bool()
    for got, want in zip(got_in + got_out, want_in + want_out, strict=True):
        torch.testing.assert_close(got[real], want[real].to(torch.float16).float(), rtol=0, atol=0)
        assert (got[~real] == 0).all()
    torch.testing.assert_close(got_logits, want_logits, rtol=1e-5, atol=1e-5)
    _assert_masks_equal([got_masks[i] for i in range(3)], want_masks)


def test_a_batch_with_an_unseen_text_is_recomputed_and_then_cached():
    teacher = tiny_model("bert", layers=2)
    cache = TeacherCache(2**30)
    a, b = labelled_batches(2)
    _outputs(teacher, a, cache)
    mixed = {k: torch.cat([a[k][:2], b[k][:2]]) for k in ("input_ids", "attention_mask")}
    assert cache.get(mixed) is None and cache.misses == 2  # the first fill missed too
    _outputs(teacher, mixed, cache)
    assert len(cache.rows) == 6 and cache.get(mixed) is not None


def test_a_partly_cached_batch_runs_the_teacher_on_its_missing_texts_only(family):
    """A batch with cached and uncached texts: the teacher's blocks see only the uncached ones, and the batch
    gets the teacher's own outputs (fp16-rounded) for every text, its logits and each block's mask."""
    from blockswap import arch

    teacher = tiny_model(family, layers=3)
    cache = TeacherCache(2**30)
    a, b = labelled_batches(2)
    _outputs(teacher, a, cache)
    mixed = {k: torch.cat([a[k][:2], b[k][2:]]) for k in ("input_ids", "attention_mask", "labels")}
    mixed = {k: v[[2, 0, 3, 1]] for k, v in mixed.items()}  # cached and uncached texts interleaved
    seen = []  # batch sizes the teacher's first block ran on (the masks' identity forward replaces it)
    pre = arch.blocks(teacher)[0].register_forward_pre_hook(
        lambda m, args, kwargs: seen.append((args[0] if args else kwargs["hidden_states"]).shape[0]),
        with_kwargs=True,
    )
    got_in, got_out, got_logits, got_masks = _outputs(teacher, mixed, cache)
    pre.remove()
    assert seen == [2] and cache.partial == 1 and cache.hits == 0  # the two uncached texts, once
    assert len(cache.rows) == 6  # and they are cached now
    want_in, want_out, want_logits, want_masks = _outputs(teacher, mixed)
    real = mixed["attention_mask"].bool()
    for got, want in zip(got_in + got_out, want_in + want_out, strict=True):
        torch.testing.assert_close(got[real], want[real].to(torch.float16).float(), rtol=2e-3, atol=2e-3)
        assert (got[~real] == 0).all()
    torch.testing.assert_close(got_logits, want_logits, rtol=1e-4, atol=1e-4)
    _assert_masks_equal([got_masks[i] for i in range(3)], want_masks)
    assert cache.get(mixed) is not None and cache.hits == 1


def test_a_cache_too_small_for_every_text_still_saves_teacher_work_and_trains_alike():
    """Block-wise distillation with a budget for about half the texts: later epochs run the teacher on the
    uncached texts only, and the substitutes train as without a cache (up to fp16 rounding)."""
    teacher, epochs = tiny_model("bert", layers=3), 3
    batches = labelled_batches(4)
    full = TeacherCache(2**30)
    for b in batches:
        _outputs(teacher, b, full, masks=False)
    half = sorted(sum(t.numel() * t.element_size() for t in row) for row in full.rows.values())
    budget = sum(half[: len(half) // 2])
    results = _blockwise_runs(teacher, batches, epochs, half=TeacherCache(budget), plain=None)
    cache = results["half"][2]
    assert 0 < len(cache.rows) < 16 and cache.partial > 0
    for i in range(3):
        torch.testing.assert_close(results["half"][0][i], results["plain"][0][i], rtol=2e-3, atol=1e-6)
        for p, q in zip(results["half"][1][i].parameters(), results["plain"][1][i].parameters(), strict=True):
            torch.testing.assert_close(p, q, rtol=1e-2, atol=1e-3)


def test_budget_bounds_the_cache_and_zero_turns_it_off():
    teacher = tiny_model("bert", layers=2)
    batch = labelled_batches(1)[0]
    per_text = TeacherCache(2**30)
    _outputs(teacher, batch, per_text)
    one = min(h.numel() * 2 + lg.numel() * 4 for h, lg in per_text.rows.values())
    small = TeacherCache(one)
    _outputs(teacher, batch, small)
    assert small.bytes <= one and len(small.rows) <= 1 and small.get(batch) is None
    off = TeacherCache(0)
    _outputs(teacher, batch, off)
    assert not off.rows and off.get(batch) is None


def test_token_types_are_part_of_the_key():
    ids, mask = padded_batch(lengths=(6, 6), seed=0)
    ids[1] = ids[0]
    types = torch.zeros_like(ids)
    types[1, 3:] = 1  # the same ids, another segmentation: another pair
    keys = TeacherCache.keys({"input_ids": ids, "attention_mask": mask, "token_type_ids": types})
    assert keys[0] != keys[1]


def test_token_logits_are_stored_per_real_token():
    cache = TeacherCache(2**30)
    ids, mask = padded_batch(lengths=(5, 3), seed=0)
    batch = {"input_ids": ids, "attention_mask": mask}
    hidden = [torch.randn(2, ids.shape[1], 4) for _ in range(3)]
    logits = torch.randn(2, ids.shape[1], 7)
    cache.put(batch, hidden, logits)
    got_hidden, got_logits = cache.get(batch)
    real = mask.bool()
    torch.testing.assert_close(got_logits[real], logits[real])
    assert (got_logits[~real] == 0).all()
    torch.testing.assert_close(got_hidden[2][real], hidden[2][real].half().float())


def test_fp16_overflow_is_not_cached():
    cache = TeacherCache(2**30)
    ids, mask = padded_batch(lengths=(5, 3), seed=0)
    batch = {"input_ids": ids, "attention_mask": mask}
    cache.put(batch, [torch.full((2, ids.shape[1], 4), 1e6)], torch.zeros(2, 2))
    assert not cache.rows


def test_blockwise_second_epoch_is_served_from_the_cache_and_trains_like_without_it():
    teacher, epochs = tiny_model("bert", layers=3), 2
    batches = labelled_batches(4)
    results = _blockwise_runs(teacher, batches, epochs, cached=TeacherCache(2**30), plain=None)
    cache = results["cached"][2]
    assert cache.hits == len(batches) * (epochs - 1) and cache.misses == len(batches)  # the first epoch fills it
    for i in range(3):  # the same training up to fp16 rounding of the teacher's hidden states
        torch.testing.assert_close(results["cached"][0][i], results["plain"][0][i], rtol=2e-3, atol=1e-6)
        for p, q in zip(results["cached"][1][i].parameters(), results["plain"][1][i].parameters(), strict=True):
            torch.testing.assert_close(p, q, rtol=1e-2, atol=1e-3)


def test_recovery_reads_the_teacher_from_the_cache():
    from blockswap.substitute import substitute

    from .conftest import TINY_COMPACT

    teacher = tiny_model("bert", layers=3).requires_grad_(False)
    batches = labelled_batches(3)
    cache = TeacherCache(2**30)
    for b in batches:
        _outputs(teacher, b, cache, masks=False)
    student = substitute(teacher, [1], TINY_COMPACT)
    calls = []
    handle = teacher.register_forward_hook(lambda *a: calls.append(1))
    cfg = DistillConfig(recovery_epochs=2)
    budget = distill.recover(student, teacher, batches, cfg, accelerator=Accelerator(cpu=True), cache=cache)
    handle.remove()
    assert budget["steps"] == 6 and cache.hits == 6 and not calls  # the teacher never ran
