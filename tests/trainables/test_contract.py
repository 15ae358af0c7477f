"""The contract every trainable family must honour (like optuna's shared sampler tests): it
reports val_accuracy every epoch, honours its config, resumes from a checkpoint exactly where an
uninterrupted run would be, and stops on a non-finite loss."""

import math

import pytest
import torch

from trainables import registry
from trainables.deploy import parameter_count, serialized_bytes
from trainables.errors import NonFiniteLossError

COSTS = ("params_m", "size_mb", "latency_ms_p50", "latency_ms_p95", "throughput_b32", "latency_threads")


CASES = {
    "finetune": {"trainable": "finetune"},
    "contrastive-two-stage": {"trainable": "contrastive", "mode": "two-stage", "loss": "supcon",
                              "contrastive_epochs": 2, "augmentation": "span_cutoff"},
    "contrastive-two-stage-finetune": {"trainable": "contrastive", "mode": "two-stage-finetune",
                                       "loss": "simclr", "contrastive_epochs": 1, "augmentation": "shuffle"},
    "contrastive-joint": {"trainable": "contrastive", "mode": "joint", "joint_lambda": 0.3,
                          "augmentation": "word_deletion"},
    # the recipe knobs change the loss, the evaluated weights and the checkpoint's contents
    "finetune-ema-rdrop": {"trainable": "finetune", "ema_decay": 0.9, "rdrop_alpha": 1.0},
    "finetune-swa-supcon": {"trainable": "finetune", "swa_epochs": 2, "supcon_lambda": 0.5},
}


def _config(tiny_model_dir, case, **changes):
    values = {"model": tiny_model_dir, "max_length": 64, "epochs": 2, "lr": 1e-3, "batch_size": 32,
              "contrastive_lr": 1e-3, "contrastive_batch_size": 32, **CASES[case], **changes}
    if values["trainable"] == "finetune":
        values = {k: v for k, v in values.items() if not k.startswith("contrastive_")}
    return registry.config_class(values["trainable"]).from_dict(values)


def _total(cfg):
    return getattr(cfg, "total_epochs", cfg.epochs)


@pytest.mark.parametrize("case", list(CASES))
def test_reports_val_accuracy_every_epoch(tiny_model_dir, demo_data, case, run_trainable):
    cfg = _config(tiny_model_dir, case)
    reports, model = run_trainable(cfg, demo_data)
    assert [r["epoch"] for r in reports] == list(range(1, _total(cfg) + 1))
    for r in reports:
        assert 0.0 <= r["val_accuracy"] <= 1.0 and math.isfinite(r["lr"]) and r["samples_per_s"] > 0
    # the last report comes from a classifier, with the fine-tuning metric names
    assert {"val_loss", "val_macro_f1", "train_loss"} <= set(reports[-1])
    # what the handed-over classifier costs to serve: measured once, before the first epoch, and in
    # every report (an ASHA-stopped trial has them too); training time and memory every epoch
    first = {k: reports[0][k] for k in COSTS}
    assert all({k: r[k] for k in COSTS} == first for r in reports)
    classifier = getattr(model, "classifier", model)
    assert first["params_m"] == pytest.approx(parameter_count(classifier) / 1e6)
    assert first["size_mb"] == serialized_bytes(classifier) / 1e6
    assert 0 < first["latency_ms_p50"] <= first["latency_ms_p95"] and first["throughput_b32"] > 0
    assert all(r["epoch_seconds"] > 0 and r["peak_memory_mb"] >= 0 for r in reports)
    ids = torch.randint(1000, 2000, (2, 6))
    assert model(ids, torch.ones_like(ids)).shape == (2, demo_data.num_labels)


@pytest.mark.parametrize("case", list(CASES))
def test_resume_matches_an_uninterrupted_run(tiny_model_dir, demo_data, tmp_path, case, run_trainable):
    cfg = _config(tiny_model_dir, case)
    full, _ = run_trainable(cfg, demo_data, keep={1: str(tmp_path / "ep1")})
    resumed, _ = run_trainable(cfg, demo_data, resume_dir=str(tmp_path / "ep1"))
    assert [r["epoch"] for r in resumed] == list(range(2, _total(cfg) + 1))
    for a, b in zip(full[1:], resumed):
        assert a["val_accuracy"] == b["val_accuracy"]
        for key in ("train_loss", "contrastive_loss", "val_loss"):
            if key in a:
                assert a[key] == pytest.approx(b[key], rel=1e-5), key


@pytest.mark.parametrize("case", list(CASES))
def test_honours_config_seed(tiny_model_dir, demo_data, case, run_trainable):
    a, _ = run_trainable(_config(tiny_model_dir, case, seed=1), demo_data)
    b, _ = run_trainable(_config(tiny_model_dir, case, seed=1), demo_data)
    c, _ = run_trainable(_config(tiny_model_dir, case, seed=2), demo_data)
    assert [r["val_accuracy"] for r in a] == [r["val_accuracy"] for r in b]
    key = "train_loss"
    assert [r.get(key) for r in a] != [r.get(key) for r in c]


@pytest.mark.parametrize("case", list(CASES))
def test_non_finite_loss_stops(tiny_model_dir, demo_data, case, run_trainable):
    cfg = _config(tiny_model_dir, case, optimizer="sgd", lr=10.0, momentum=0.99, grad_clip=0.0,
                  head_lr_multiplier=1000.0, epochs=4,
                  **({} if CASES[case]["trainable"] == "finetune" else {"contrastive_optimizer": "sgd", "contrastive_lr": 10.0,
                                                    "temperature": 0.02}))
    with pytest.raises(NonFiniteLossError):
        run_trainable(cfg, demo_data)


@pytest.mark.parametrize("case", list(CASES))
def test_hands_back_its_best_validation_epoch(tiny_model_dir, demo_data, case, run_trainable):
    """The returned model is the best epoch's, and it scores what the reports say it does."""
    from trainables.loops import evaluate

    # fp32: a two-stage trial scores its head on cached encoder features, evaluate() re-encodes;
    # under bf16 autocast the two paths differ in the loss's fourth digit
    cfg = _config(tiny_model_dir, case, epochs=3, precision="fp32")
    reports, model = run_trainable(cfg, demo_data)
    last = reports[-1]
    scored = [r for r in reports if r.get("stage", 2) == 2]
    best = max(scored, key=lambda r: r["val_accuracy"])  # max keeps the first of ties, as fit does
    assert last["best_epoch"] == best["epoch"] and last["best_val_accuracy"] == best["val_accuracy"]
    result = evaluate(model, demo_data.splits["validation"], batch_size=64,
                      pad_token_id=demo_data.pad_token_id, num_labels=demo_data.num_labels,
                      device=torch.device("cpu"), precision=cfg.precision)
    assert result.accuracy == last["best_val_accuracy"]
    assert result.loss == pytest.approx(last["best_val_loss"], rel=1e-5)
