"""Fine-tuning specifics; the behaviour every trainable shares is in test_contract.py."""

import pytest

from trainables.errors import ConfigError

REQUIRED = {"epoch", "train_loss", "val_loss", "val_accuracy", "val_macro_f1", "lr", "samples_per_s"}


def test_reports_every_metric_and_learns(tiny_config, demo_data, run_trainable):
    reports, _ = run_trainable(tiny_config.replace(epochs=3, lr=3e-3), demo_data)
    assert all(REQUIRED <= set(r) for r in reports)
    assert reports[-1]["train_loss"] < reports[0]["train_loss"]


def test_honours_schedule_in_reported_lr(tiny_config, demo_data, run_trainable):
    reports, _ = run_trainable(tiny_config.replace(scheduler="constant", warmup_ratio=0.0, lr=2e-3), demo_data)
    assert [r["lr"] for r in reports] == [2e-3, 2e-3]
    reports, _ = run_trainable(tiny_config.replace(scheduler="linear", warmup_ratio=0.0), demo_data)
    assert reports[-1]["lr"] == pytest.approx(0.0)


def test_checkpoint_holds_config_and_label_map(tiny_config, demo_data, tmp_path, run_trainable):
    from trainables.checkpointing import load_checkpoint

    cfg = tiny_config.replace(epochs=2)
    run_trainable(cfg, demo_data, keep={1: str(tmp_path / "c1"), 2: str(tmp_path / "c2")})
    state = load_checkpoint(tmp_path / "c1")
    assert state["epoch"] == 1
    assert state["config"] == cfg.to_dict()
    assert state["label_map"]["names"] == demo_data.label_map.names
    assert state["optimizer"] is not None and state["scheduler"] is not None and state["rng"]


def test_last_checkpoint_is_model_only_and_still_resumes(tiny_config, demo_data, tmp_path, run_trainable):
    """Nothing trains after the last epoch, so its checkpoint skips the optimizer state (a third
    of the bytes with AdamW); resuming from it trains nothing and gives back the same model."""
    import torch

    from trainables.checkpointing import load_checkpoint

    cfg = tiny_config.replace(epochs=2)
    _, model = run_trainable(cfg, demo_data, keep={1: str(tmp_path / "c1"), 2: str(tmp_path / "c2")})
    last = load_checkpoint(tmp_path / "c2")
    assert last["optimizer"] is None and last["scheduler"] is None
    assert (tmp_path / "c2" / "state.pt").stat().st_size < 0.6 * (tmp_path / "c1" / "state.pt").stat().st_size
    reports, resumed = run_trainable(cfg, demo_data, resume_dir=str(tmp_path / "c2"))
    assert reports == []
    for a, b in zip(model.state_dict().values(), resumed.state_dict().values()):
        assert torch.equal(a, b)


def test_layer_counts_checked(tiny_config, demo_data, run_trainable):
    with pytest.raises(ConfigError, match="`freeze_layers` is 5 but model .* has only 2 layers"):
        run_trainable(tiny_config.replace(freeze_layers=5), demo_data)


def test_stop_epoch_reproduces_that_epoch_of_the_full_schedule(tiny_config, demo_data, tmp_path, run_trainable):
    """`tunebert best` exports stop_epoch = the best epoch: retraining stops there on the same
    schedule, so the model is the one the trial scored."""
    import torch

    from trainables.checkpointing import load_checkpoint

    cfg = tiny_config.replace(epochs=3, lr=3e-3)
    full, _ = run_trainable(cfg, demo_data, keep={2: str(tmp_path / "e2")})
    short, model = run_trainable(cfg.replace(stop_epoch=2), demo_data)
    assert [r["epoch"] for r in short] == [1, 2]
    assert [r["val_accuracy"] for r in short] == [r["val_accuracy"] for r in full[:2]]
    assert [r["lr"] for r in short] == [r["lr"] for r in full[:2]]  # the 3-epoch schedule
    assert short[-1]["lr"] > 0
    live = load_checkpoint(tmp_path / "e2")["model"]
    if full[1]["best_epoch"] == 2:
        for key, value in model.state_dict().items():
            assert torch.equal(value, live[key]), key


def test_changed_learning_rate_applies_after_resume(tiny_config, demo_data, tmp_path, run_trainable):
    """A trial continued from another's checkpoint with a mutated lr (PBT) trains at its own lr."""
    cfg = tiny_config.replace(epochs=3, scheduler="constant", warmup_ratio=0.0, lr=1e-3,
                              weight_decay=0.0)
    run_trainable(cfg, demo_data, keep={1: str(tmp_path / "e1")})
    resumed, _ = run_trainable(cfg.replace(lr=4e-3, weight_decay=0.05), demo_data,
                               resume_dir=str(tmp_path / "e1"))
    assert [r["lr"] for r in resumed] == [4e-3, 4e-3]


def test_ema_evaluates_and_hands_over_the_averaged_weights(tiny_config, demo_data, run_trainable):
    import torch

    plain, plain_model = run_trainable(tiny_config.replace(lr=3e-3), demo_data)
    ema, ema_model = run_trainable(tiny_config.replace(lr=3e-3, ema_decay=0.9), demo_data)
    # same seed, same data order, same updates: only the evaluated/handed-over weights differ
    assert [r["train_loss"] for r in plain] == [r["train_loss"] for r in ema]
    assert [r["val_loss"] for r in plain] != [r["val_loss"] for r in ema]
    differs = any(not torch.equal(a, b) for a, b in zip(plain_model.state_dict().values(),
                                                        ema_model.state_dict().values()))
    assert differs
