"""Budgets in steps (``eval_every``): the arithmetic of ``trainables.rounds`` and round mode of the
fine-tuning loop (``trainables.finetune.fit``)."""

import math

import numpy as np
import pytest

from trainables.data import steps_per_epoch
from trainables.encoding import epoch_batches
from trainables.errors import ConfigError
from trainables.hparams import ContrastiveConfig, FinetuneConfig, MultitaskConfig
from trainables.rounds import (EvalEvery, canonical_eval_every, most_rounds, parse_eval_every,
                               position, round_count)


# ---------------------------------------------------------------- the setting


@pytest.mark.parametrize("text, parsed", [
    (500, EvalEvery(500)), ("500", EvalEvery(500)), ("500 steps", EvalEvery(500)),
    ("1 step", EvalEvery(1)), ("20000ex", EvalEvery(20000, True)), ("20_000 examples", EvalEvery(20000, True)),
    ("3 Ex", EvalEvery(3, True)), (0, None), ("0", None), (None, None),
])
def test_eval_every_syntax(text, parsed):
    assert parse_eval_every(text) == parsed


@pytest.mark.parametrize("bad", ["", "abc", "-5", "1.5", "500 epochs", "ex500", True, 2.0])
def test_bad_eval_every_says_the_syntax(bad):
    with pytest.raises(ConfigError, match=r"`eval_every` must be N or 'N steps'.*but got"):
        parse_eval_every(bad)


def test_config_keeps_eval_every_as_canonical_text():
    assert FinetuneConfig.from_dict({"eval_every": 500}).eval_every == "500"
    assert FinetuneConfig.from_dict({"eval_every": "2000 examples"}).eval_every == "2000ex"
    assert FinetuneConfig.from_dict({"eval_every": 0}).eval_every is None
    assert canonical_eval_every("7 steps") == "7"
    with pytest.raises(ConfigError, match="`eval_every` must be"):
        FinetuneConfig.from_dict({"eval_every": "often"})
    with pytest.raises(ConfigError, match="`eval_every` must be"):
        FinetuneConfig(eval_every="often")


def test_round_mode_refusals_name_the_option():
    with pytest.raises(ConfigError, match=r"`swa_epochs` \(1\).*`eval_every` \('10'\)"):
        FinetuneConfig.from_dict({"eval_every": 10, "swa_epochs": 1})
    with pytest.raises(ConfigError, match="`eval_every`.*fine-tuning trials only, not to contrastive"):
        ContrastiveConfig.from_dict({"eval_every": 10})
    with pytest.raises(ConfigError, match="`eval_every`.*fine-tuning trials only, not to multitask"):
        MultitaskConfig.from_dict({"eval_every": "10ex"})
    assert ContrastiveConfig.from_dict({"eval_every": 0}).eval_every is None
    # stop_epoch counts rounds then: more than `epochs` is fine here, fit checks the round count
    assert FinetuneConfig.from_dict({"eval_every": 10, "epochs": 2, "stop_epoch": 5}).stop_epoch == 5


def test_round_arithmetic():
    assert EvalEvery(100, examples=True).steps(32) == 4  # rounded up
    assert round_count(epochs=2, steps_per_epoch=5, steps_per_round=3) == 4  # 10 steps: 3+3+3+1
    assert position(0, 5) == (1, 0) and position(7, 5) == (2, 2) and position(10, 5) == (3, 0)


def test_most_rounds_is_asha_max_t_in_rounds():
    # 1000 examples, 3 epochs; 16 per batch: 63 steps/epoch, 189 steps, 10 per round -> 19 rounds
    assert most_rounds("10", epochs=3, train_size=1000, batch_sizes=[16, 32, 64]) == 19
    assert most_rounds("10", epochs=3, train_size=1000, batch_sizes=[32]) == math.ceil(3 * 32 / 10)
    # in examples about the same for every batch size: ceil(3 * ceil(1000/b) / ceil(300/b))
    assert most_rounds("300ex", epochs=3, train_size=1000, batch_sizes=[16, 32, 64]) == max(
        math.ceil(3 * math.ceil(1000 / b) / math.ceil(300 / b)) for b in (16, 32, 64))
    assert most_rounds(None, epochs=3, train_size=1000, batch_sizes=[16]) == 3


# ---------------------------------------------------------------- the loop


def _sizes(cfg, data):
    """(steps per epoch, rounds) of ``cfg`` (``eval_every`` in steps, or unset: per step) on ``data``."""
    per_epoch = steps_per_epoch(len(data.splits["train"]), cfg.batch_size)
    return per_epoch, round_count(cfg.epochs, per_epoch, int(cfg.eval_every or 1))


def test_rounds_report_keys_and_cross_epoch_boundaries(tiny_config, demo_data, tmp_path, run_trainable):
    from trainables.checkpointing import load_checkpoint

    cfg = tiny_config.replace(epochs=2, batch_size=16)
    per_epoch, _ = _sizes(cfg, demo_data)
    assert per_epoch >= 4
    every = per_epoch // 2 + 1  # does not divide an epoch: the second round crosses into epoch 2
    cfg = cfg.replace(eval_every=str(every))
    per_epoch, rounds = _sizes(cfg, demo_data)
    total = 2 * per_epoch
    keep = {r: str(tmp_path / f"r{r}") for r in range(1, rounds + 1)}
    reports, _ = run_trainable(cfg, demo_data, keep=keep)
    assert [r["epoch"] for r in reports] == list(range(1, rounds + 1))
    steps = [min(r * every, total) for r in range(1, rounds + 1)]
    assert [r["step"] for r in reports] == steps
    assert steps[-1] - steps[-2] < every  # the last round is shorter: it ends with the last epoch
    assert [r["epoch_progress"] for r in reports] == pytest.approx([s / per_epoch for s in steps])
    assert all(r["rounds"] == rounds for r in reports)
    n = len(demo_data.splits["train"])
    first_epoch = epoch_batches(demo_data.splits["train"], 16, rng=np.random.default_rng([cfg.seed, 1]))
    assert reports[0]["examples_seen"] == sum(len(b) for b in first_epoch[:every])
    assert reports[-1]["examples_seen"] == 2 * n
    assert 1 <= reports[-1]["best_epoch"] <= rounds
    assert all(r["val_accuracy"] >= 0 for r in reports)
    crossing = load_checkpoint(tmp_path / "r2")["extra"]["position"]
    assert crossing == {"step": 2 * every, "epoch": 2, "batches_done": 2 * every - per_epoch,
                        "steps_per_epoch": per_epoch, "steps_per_round": every}
    assert load_checkpoint(tmp_path / "r1")["epoch"] == 1  # checkpoints count rounds
    assert load_checkpoint(tmp_path / f"r{rounds}")["optimizer"] is None  # the last: model only


def test_schedule_spans_the_epochs_and_examples_convert_with_batch_size(tiny_config, demo_data, run_trainable):
    cfg = tiny_config.replace(epochs=1, batch_size=16, scheduler="linear", warmup_ratio=0.0,
                              eval_every="40ex")  # 40 examples: 3 steps of 16
    reports, _ = run_trainable(cfg, demo_data)
    per_epoch = steps_per_epoch(len(demo_data.splits["train"]), 16)
    assert [r["step"] for r in reports] == [min(3 * k, per_epoch) for k in range(1, len(reports) + 1)]
    assert len(reports) == math.ceil(per_epoch / 3)
    assert reports[0]["lr"] == pytest.approx(cfg.lr * (1 - 3 / per_epoch))
    assert reports[-1]["lr"] == pytest.approx(0.0)


def test_resume_mid_epoch_equals_the_unbroken_run(tiny_config, demo_data, tmp_path, run_trainable):
    """Stopped after round k, inside an epoch, and resumed: the same batches, the same dropout,
    the same numbers as a run that never stopped."""
    cfg = tiny_config.replace(epochs=2, batch_size=16, lr=3e-3, classifier_dropout=0.3, ema_decay=0.9)
    per_epoch, _ = _sizes(cfg, demo_data)
    every = max(2, per_epoch // 3)
    cfg = cfg.replace(eval_every=str(every))
    k = next(r for r in range(1, 10) if (r * every) % per_epoch and r * every > per_epoch)  # in epoch 2
    full, full_model = run_trainable(cfg, demo_data, keep={k: str(tmp_path / "stop")})
    first, _ = run_trainable(cfg.replace(stop_epoch=k), demo_data)
    rest, resumed_model = run_trainable(cfg, demo_data, resume_dir=str(tmp_path / "stop"))
    assert [r["epoch"] for r in first + rest] == [r["epoch"] for r in full]
    for key in ("train_loss", "val_loss", "val_accuracy", "lr", "step", "examples_seen", "best_epoch",
                "best_val_accuracy"):
        assert [r[key] for r in first + rest] == pytest.approx([r[key] for r in full], rel=1e-5), key
    for a, b in zip(full_model.state_dict().values(), resumed_model.state_dict().values()):
        assert a.float().sub(b.float()).abs().max() < 1e-5


def test_stop_epoch_counts_rounds_and_is_checked(tiny_config, demo_data, run_trainable):
    cfg = tiny_config.replace(epochs=1, batch_size=16, eval_every="2")
    per_epoch, rounds = _sizes(cfg, demo_data)
    reports, _ = run_trainable(cfg.replace(stop_epoch=2), demo_data)
    assert [r["epoch"] for r in reports] == [1, 2] and reports[-1]["rounds"] == 2
    with pytest.raises(ConfigError, match=rf"`stop_epoch` \({rounds + 1}\) counts rounds.*has {rounds}"):
        run_trainable(cfg.replace(stop_epoch=rounds + 1), demo_data)


def test_an_epoch_checkpoint_does_not_resume_in_round_mode(tiny_config, demo_data, tmp_path, run_trainable):
    run_trainable(tiny_config, demo_data, keep={1: str(tmp_path / "e1")})
    with pytest.raises(ConfigError, match="written without `eval_every`"):
        run_trainable(tiny_config.replace(eval_every="3"), demo_data, resume_dir=str(tmp_path / "e1"))
