"""The contract every trainable must honour: reports its metrics each epoch, honours the config,
resumes from a checkpoint exactly, and stops on a non-finite loss."""

import math

import pytest
import torch

from trainables.errors import ConfigError, NonFiniteLossError
from trainables.finetune import fit

CPU = torch.device("cpu")
REQUIRED = {"epoch", "train_loss", "val_loss", "val_accuracy", "val_macro_f1", "lr", "samples_per_s"}


def _run(cfg, data, resume_dir=None, keep=None):
    reports = []

    def report(metrics, write):
        reports.append(metrics)
        if keep is not None and metrics["epoch"] in keep:
            write(keep[metrics["epoch"]])

    fit(cfg, data, device=CPU, report=report, resume_dir=resume_dir)
    return reports


def test_reports_every_epoch_and_learns(tiny_config, demo_data):
    reports = _run(tiny_config.replace(epochs=3, lr=3e-3), demo_data)
    assert [r["epoch"] for r in reports] == [1, 2, 3]
    for r in reports:
        assert REQUIRED <= set(r)
        assert 0.0 <= r["val_accuracy"] <= 1.0 and math.isfinite(r["val_loss"])
    assert reports[-1]["train_loss"] < reports[0]["train_loss"]


def test_honours_schedule_in_reported_lr(tiny_config, demo_data):
    reports = _run(tiny_config.replace(scheduler="constant", warmup_ratio=0.0, lr=2e-3), demo_data)
    assert [r["lr"] for r in reports] == [2e-3, 2e-3]
    reports = _run(tiny_config.replace(scheduler="linear", warmup_ratio=0.0), demo_data)
    assert reports[-1]["lr"] == pytest.approx(0.0)


def test_resume_from_checkpoint_matches_uninterrupted_run(tiny_config, demo_data, tmp_path):
    cfg = tiny_config.replace(epochs=3, classifier_dropout=0.2)
    full = _run(cfg, demo_data, keep={1: str(tmp_path / "ep1")})
    resumed = _run(cfg, demo_data, resume_dir=str(tmp_path / "ep1"))
    assert [r["epoch"] for r in resumed] == [2, 3]
    for a, b in zip(full[1:], resumed):
        assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-5)
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5)
        assert a["val_accuracy"] == b["val_accuracy"]


def test_checkpoint_holds_config_and_label_map(tiny_config, demo_data, tmp_path):
    from trainables.checkpointing import load_checkpoint

    _run(tiny_config.replace(epochs=1), demo_data, keep={1: str(tmp_path / "c")})
    state = load_checkpoint(tmp_path / "c")
    assert state["epoch"] == 1
    assert state["config"] == tiny_config.replace(epochs=1).to_dict()
    assert state["label_map"]["names"] == demo_data.label_map.names
    assert {"model", "optimizer", "scheduler", "rng"} <= set(state)


def test_non_finite_loss_stops_the_trial(tiny_config, demo_data):
    cfg = tiny_config.replace(optimizer="sgd", lr=10.0, momentum=0.99, grad_clip=0.0, epochs=5,
                              head_lr_multiplier=1000.0)
    with pytest.raises(NonFiniteLossError, match="non-finite training loss"):
        _run(cfg, demo_data)


def test_same_seed_same_numbers(tiny_config, demo_data):
    a = _run(tiny_config, demo_data)
    b = _run(tiny_config, demo_data)
    assert [r["val_loss"] for r in a] == [r["val_loss"] for r in b]


def test_layer_counts_checked(tiny_config, demo_data):
    with pytest.raises(ConfigError, match="`freeze_layers` is 5 but model .* has only 2 layers"):
        _run(tiny_config.replace(freeze_layers=5), demo_data)
