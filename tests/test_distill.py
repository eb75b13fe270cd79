import torch
from accelerate import Accelerator

from blockswap import arch, distill
from blockswap.compact import CompactBlock, CompactSpec
from blockswap.config import DistillConfig
from blockswap.errors import TrainingDiverged

from .conftest import labelled_batches, tiny_model


def _subs(model, n):
    torch.manual_seed(0)
    return {i: CompactBlock(32, CompactSpec(hidden=8, layers=1, heads=2, ffn=16)) for i in range(n)}


def _mse(model, subs, batches):
    from blockswap.losses import masked_mse

    out = {}
    with torch.no_grad(), arch.capture_blocks(model) as rec:
        for i in subs:
            out[i] = 0.0
        for b in batches:
            model(input_ids=b["input_ids"], attention_mask=b["attention_mask"])
            for i, s in subs.items():
                out[i] += masked_mse(s(rec[i]["input"], rec[i]["mask"]), rec[i]["output"], b["attention_mask"]).item()
    return out


def test_blockwise_lowers_every_substitutes_mse():
    teacher = tiny_model("bert", layers=3)
    subs = _subs(teacher, 3)
    batches = labelled_batches(6)
    before = _mse(teacher, subs, batches)
    distill.blockwise(
        teacher, subs, batches, DistillConfig(blockwise_epochs=8, blockwise_lr=3e-3), accelerator=Accelerator(cpu=True)
    )
    after = _mse(teacher, subs, batches)
    for i in subs:
        assert after[i] < 0.7 * before[i], (i, before[i], after[i])


def _blockwise_feeds(mode: str) -> tuple[list[dict], list[dict], dict]:
    """Two block-wise steps on substitutes of blocks 3, 0, 1 of a 4-block teacher (given out of order): per step,
    each substitute's input and output, and the teacher's block inputs on each batch."""
    teacher = tiny_model("bert", layers=4)
    subs = {i: s for i, s in sorted(_subs(teacher, 4).items(), reverse=True) if i != 2}
    batches = labelled_batches(2)
    fed, made = [{}, {}], [{}, {}]
    step = [0]
    for i, sub in subs.items():
        sub.register_forward_pre_hook(lambda m, args, i=i: fed[step[0]].__setitem__(i, args[0]))
        sub.register_forward_hook(lambda m, args, out, i=i: made[step[0]].__setitem__(i, out))
    subs[3].register_forward_hook(lambda *_: step.__setitem__(0, min(1, step[0] + 1)))  # the last of a step
    teacher_in = {}
    with torch.no_grad(), arch.capture_blocks(teacher) as rec:
        for k, b in enumerate(batches):
            teacher(input_ids=b["input_ids"], attention_mask=b["attention_mask"])
            teacher_in[k] = {i: rec[i]["input"].clone() for i in range(4)}
    cfg = DistillConfig(blockwise_epochs=1, blockwise_inputs=mode)
    distill.blockwise(teacher, subs, batches, cfg, accelerator=Accelerator(cpu=True))
    return fed, made, teacher_in


def test_blockwise_feeds_each_substitute_its_teacher_input_or_the_previous_substitutes_output():
    fed, made, teacher_in = _blockwise_feeds("alternate")
    for i in (0, 1, 3):  # step 0: every substitute gets its block's input in the teacher
        torch.testing.assert_close(fed[0][i], teacher_in[0][i])
    # step 1, cascaded: block 1 gets substitute 0's output, detached; 0 and 3 (block 2 is not substituted) the teacher's
    assert torch.equal(fed[1][1], made[1][0]) and not fed[1][1].requires_grad and made[1][0].requires_grad
    torch.testing.assert_close(fed[1][0], teacher_in[1][0])
    torch.testing.assert_close(fed[1][3], teacher_in[1][3])
    fed, made, teacher_in = _blockwise_feeds("cascade")
    assert torch.equal(fed[0][1], made[0][0]) and torch.equal(fed[1][1], made[1][0])
    fed, made, teacher_in = _blockwise_feeds("teacher")
    torch.testing.assert_close(fed[1][1], teacher_in[1][1])
    assert not torch.equal(fed[1][1], made[1][0])


def test_blockwise_inputs_other_than_the_four_are_refused():
    import pytest

    from blockswap.errors import ConfigError

    with pytest.raises(ConfigError, match="blockwise_inputs 'student' unknown; use auto, teacher, cascade, alternate"):
        DistillConfig(blockwise_inputs="student")


def test_blockwise_inputs_auto_is_alternate_for_embeddings_and_teacher_otherwise_and_a_choice_stands():
    from blockswap.config import build_config, dump_config, load_config

    def feeds(task, given=None):
        distill = {"blockwise_inputs": given} if given else {}
        return build_config({"data": {"task": task}, "distill": distill}).distill.blockwise_inputs

    assert feeds("embedding") == "alternate"
    for task in ("auto", "classification", "regression", "token"):
        assert feeds(task) == "teacher"
    assert feeds("embedding", "teacher") == "teacher" and feeds("classification", "cascade") == "cascade"
    assert feeds("embedding", "auto") == "alternate"
    # config.yaml records what ran, so a resumed run or a benchmark reading it feeds the same
    assert "blockwise_inputs: alternate" in dump_config(build_config({"data": {"task": "embedding"}}))
    assert load_config().distill.blockwise_inputs == "teacher"


def test_embedding_task_starts_from_its_own_substitute_shape_and_given_values_stand():
    import dataclasses

    import yaml

    from blockswap.compact import CompactSpec
    from blockswap.config import build_config, dump_config

    def shape(task, overrides=None, **given):
        return build_config({"data": {"task": task}, "compact": given}, overrides).compact

    emb = shape("embedding")
    assert (emb.hidden, emb.layers, emb.heads, emb.ffn_size, emb.activation) == (192, 1, 2, 384, "gelu")
    for task in ("auto", "classification", "regression", "token"):
        assert shape(task) == CompactSpec()
    # what the YAML or a flag gives stands; the rest still comes from the task's shape
    mixed = shape("embedding", hidden=128, activation="relu")
    assert (mixed.hidden, mixed.layers, mixed.ffn_size, mixed.activation) == (128, 1, 384, "relu")
    assert shape("embedding", {"compact": {"layers": 3}}, layers=2) == dataclasses.replace(emb, layers=3)
    assert build_config({}, {"data": {"task": "embedding"}}).compact == emb  # --task given as a flag
    # config.yaml records the shape: read back (a resumed run, a benchmark) it is the same, and a folder written
    # before this default (every field saved, 128 x 2) keeps its own shape
    assert build_config(yaml.safe_load(dump_config(build_config({"data": {"task": "embedding"}})))).compact == emb
    assert shape("embedding", **dataclasses.asdict(CompactSpec())) == CompactSpec()


def test_linear_init_beats_random_and_is_exact_linear_map():
    teacher = tiny_model("bert", layers=2)
    subs = _subs(teacher, 2)
    batches = labelled_batches(6)
    before = _mse(teacher, subs, batches)
    distill.init_linear(teacher, subs, batches)
    after = _mse(teacher, subs, batches)
    for i in subs:
        assert after[i] < before[i]
    x = torch.randn(2, 5, 32)
    b = subs[0]
    torch.testing.assert_close(b(x), x + b.up(b.down(x)))  # inner layers start as the identity


def test_end_to_end_trains_substitutes_and_logs_parts():
    from blockswap.compact import CompactSpec
    from blockswap.substitute import substitute

    teacher = tiny_model("bert", layers=3)
    teacher.requires_grad_(False)
    student = substitute(teacher, [1], CompactSpec(hidden=8, heads=2, ffn=16, dropout=0.0))
    student.requires_grad_(True)
    w0 = arch.blocks(student)[1].up.weight.clone()
    kept0 = arch.blocks(student)[0].output.dense.weight.clone()
    log = distill.end_to_end(
        student,
        teacher,
        labelled_batches(6),
        DistillConfig(freeze_kept=True),
        steps=5,
        accelerator=Accelerator(cpu=True),
    )
    assert log and {"kl", "ce", "mse", "total"} <= set(log[0])
    assert not torch.equal(arch.blocks(student)[1].up.weight, w0)
    assert torch.equal(arch.blocks(student)[0].output.dense.weight, kept0)  # frozen


def test_nan_loss_stops_with_the_step():
    import pytest

    teacher = tiny_model("bert", layers=2)
    subs = _subs(teacher, 2)
    with torch.no_grad():
        subs[0].up.weight.fill_(float("nan"))
    with pytest.raises(TrainingDiverged, match="step 0"):
        distill.blockwise(teacher, subs, labelled_batches(1), DistillConfig(), accelerator=Accelerator(cpu=True))


def test_linear_init_of_a_post_norm_substitute_fits_the_block():
    from blockswap.compact import CompactSpec
    from blockswap.substitute import make_compact

    teacher = tiny_model("bert", layers=2)
    cfg = CompactSpec(hidden=8, heads=2, ffn=16, dropout=0.0, norm="post")
    subs = {i: make_compact(teacher, cfg, i).eval() for i in range(2)}
    batches = labelled_batches(6)
    before = _mse(teacher, subs, batches)
    distill.init_linear(teacher, subs, batches)
    after = _mse(teacher, subs, batches)
    for i in subs:
        assert after[i] < 0.5 * before[i], (before[i], after[i])
