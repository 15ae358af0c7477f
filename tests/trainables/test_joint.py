"""The multi-task trainable with the tiny BERT: head learning rates, freezing and unfreezing, the
weighted loss (each against hand-computed values), and training, reporting and resuming on a
small slice of SNIPS (joint) and on two separate datasets."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from trainables.data import DataConfig
from trainables.hparams import MultitaskConfig
from trainables.joint import evaluate_multitask, fit, selection_metric
from trainables.joint_model import (apply_freezing, build_multitask_model,
                                    build_multitask_optimization, multitask_loss)
from trainables.models import load_tokenizer
from trainables.optim import parameter_depth
from trainables.runtime import seed_everything
from trainables.tagging import TAG_IGNORE, collate_joint, encode_joint_splits, load_joint_splits

@pytest.fixture(scope="module")
def _joint_data(snips_slice, tiny_model_dir):
    raw = load_joint_splits(DataConfig(str(snips_slice)))
    return encode_joint_splits(raw, load_tokenizer(tiny_model_dir), model=tiny_model_dir,
                               max_length=48)


@pytest.fixture
def joint_data(_joint_data):
    return copy.deepcopy(_joint_data)


def _cfg(tiny_model_dir, **changes) -> MultitaskConfig:
    values = dict(model=tiny_model_dir, epochs=2, lr=1e-3, batch_size=16, max_length=48,
                  deploy_metrics=False, perturb_eval=None)
    return MultitaskConfig(**{**values, **changes})


# --------------------------------------------------------------------------- optimizer and freezing


def test_each_head_trains_at_its_own_multiple_and_the_encoder_with_llrd(tiny_model_dir, joint_data):
    cfg = _cfg(tiny_model_dir, lr=1e-3, llrd_decay=0.5, head_lr_multiplier=10.0,
               slot_lr_multiplier=30.0)
    model = build_multitask_model(cfg, num_labels=joint_data.num_labels, num_tags=joint_data.num_tags)
    optimizer, _ = build_multitask_optimization(model, cfg, total_steps=10)
    lrs = {g["name"].split("/")[0]: g["initial_lr"] for g in optimizer.param_groups}
    # tiny BERT: 2 layers; top layer at lr, the one below at lr * 0.5, embeddings at lr * 0.25
    assert lrs == pytest.approx({"head": 1e-2, "slot_head": 3e-2, "layer_1": 1e-3,
                                 "layer_0": 5e-4, "embeddings": 2.5e-4})
    in_optimizer = {id(p) for g in optimizer.param_groups for p in g["params"]}
    assert in_optimizer == {id(p) for p in model.parameters()}


def _trainable_depths(model) -> set:
    return {parameter_depth(n, 2) for n, p in model.encoder.named_parameters() if p.requires_grad}


def test_gradual_unfreezing_opens_one_layer_every_n_epochs_top_down(tiny_model_dir, joint_data):
    cfg = _cfg(tiny_model_dir, unfreeze_every=2, epochs=7)
    model = build_multitask_model(cfg, num_labels=joint_data.num_labels, num_tags=joint_data.num_tags)
    seen = {}
    for epoch in range(1, 8):
        apply_freezing(model, cfg, epoch)
        seen[epoch] = _trainable_depths(model)
        assert all(p.requires_grad for p in model.head.parameters())
        assert all(p.requires_grad for p in model.slot_head.parameters())
    # depth 0 = embeddings, 1..2 = layers: top layer first, the next after 2 epochs, embeddings last
    assert seen == {1: {2}, 2: {2}, 3: {1, 2}, 4: {1, 2}, 5: {0, 1, 2}, 6: {0, 1, 2}, 7: {0, 1, 2}}


@pytest.mark.parametrize("changes, depths, heads", [
    ({"freeze": "backbone"}, set(), (True, True)),
    ({"freeze": "slot_head"}, {0, 1, 2}, (True, False)),
    ({"freeze": "intent_head"}, {0, 1, 2}, (False, True)),
    ({"freeze_layers": 1, "freeze_embeddings": True}, {2}, (True, True)),
])
def test_freezing_keeps_the_named_parts_still_through_an_epoch(tiny_model_dir, joint_data, changes,
                                                               depths, heads):
    cfg = _cfg(tiny_model_dir, epochs=1, **changes)
    seed_everything(cfg.seed)  # as fit does before it builds the model: the same initial heads
    before = build_multitask_model(cfg, num_labels=joint_data.num_labels,
                                   num_tags=joint_data.num_tags).state_dict()
    model = fit(cfg, joint_data, device=torch.device("cpu"), report=lambda m, w: None)
    assert _trainable_depths(model) == depths
    after = model.state_dict()
    for name, value in after.items():
        if name.startswith("encoder."):
            moved = parameter_depth(name[len("encoder."):], 2) in depths
        elif name.startswith("slot_head."):
            moved = heads[1]
        else:
            moved = heads[0]
        if "LayerNorm" in name or name.endswith("position_ids") or "token_type" in name:
            continue  # untouched by a batch, or a buffer
        assert (not torch.equal(before[name], value)) is moved, name


def test_the_joint_loss_is_the_weighted_sum_of_the_two_cross_entropies(tiny_model_dir, joint_data):
    cfg = _cfg(tiny_model_dir, intent_loss_weight=0.3, slot_loss_weight=2.5)
    model = build_multitask_model(cfg, num_labels=joint_data.num_labels, num_tags=joint_data.num_tags)
    model.eval()
    train = joint_data.splits["train"]
    tensors = collate_joint(train, np.arange(8), joint_data.pad_token_id)
    batch = (tensors["input_ids"], tensors["attention_mask"], tensors["labels"], tensors["tag_ids"])
    loss = multitask_loss(cfg)(model, batch)
    sentence, tokens = model(batch[0], batch[1])
    intent = F.cross_entropy(sentence, batch[2])
    # the token loss is the mean over first pieces only: pick them by hand
    picked = [(row, pos) for row in range(8) for pos in range(batch[3].shape[1])
              if batch[3][row, pos] != TAG_IGNORE]
    assert len(picked) == sum(int((train.word_starts[i] >= 0).sum()) for i in range(8)) > 0
    slot = torch.stack([F.cross_entropy(tokens[r, p][None], batch[3][r, p][None])
                        for r, p in picked]).mean()
    assert float(loss) == pytest.approx(0.3 * float(intent) + 2.5 * float(slot), rel=1e-5)


# --------------------------------------------------------------------------- training


def test_a_joint_trial_reports_intent_slot_and_sentence_scores_every_epoch(tiny_model_dir, joint_data):
    reports = []
    model = fit(_cfg(tiny_model_dir, epochs=3), joint_data, device=torch.device("cpu"),
                report=lambda metrics, write: reports.append(metrics))
    assert [r["epoch"] for r in reports] == [1, 2, 3]
    for r in reports:
        for key in ("val_loss", "val_accuracy", "val_intent_accuracy", "val_slot_f1",
                    "val_slot_precision", "val_slot_recall", "val_sentence_accuracy",
                    "best_epoch", "best_val_sentence_accuracy"):
            assert key in r and math.isfinite(r[key]), key
        assert r["val_accuracy"] == r["val_intent_accuracy"]
        assert 0 <= r["val_sentence_accuracy"] <= min(r["val_intent_accuracy"], 1.0)
    assert selection_metric(joint_data) == "val_sentence_accuracy"
    best = max(reports, key=lambda r: (r["val_sentence_accuracy"], -r["epoch"]))
    assert reports[-1]["best_epoch"] == best["epoch"]
    # the model handed back is the best epoch's: it scores what that epoch reported
    again = evaluate_multitask(model, joint_data.splits["validation"], joint_data, batch_size=64,
                               device=torch.device("cpu"))
    assert again.metrics["val_sentence_accuracy"] == pytest.approx(best["val_sentence_accuracy"])


def test_training_learns_slots_on_snips(tiny_model_dir, joint_data):
    """Not a benchmark: enough epochs at a high rate that the tiny model beats tagging all O."""
    reports = []
    fit(_cfg(tiny_model_dir, epochs=6, lr=3e-3, slot_lr_multiplier=3.0), joint_data,
        device=torch.device("cpu"), report=lambda metrics, write: reports.append(metrics))
    assert reports[-1]["best_val_slot_f1"] > 0.2


def test_a_resumed_joint_trial_continues_where_it_stopped(tiny_model_dir, joint_data, tmp_path):
    cfg = _cfg(tiny_model_dir, epochs=3)
    full = []

    def keep_first(metrics, write):
        full.append(metrics)
        if metrics["epoch"] == 1:
            write(str(tmp_path / "ckpt"))

    fit(cfg, copy.deepcopy(joint_data), device=torch.device("cpu"), report=keep_first)
    resumed = []
    fit(cfg, copy.deepcopy(joint_data), device=torch.device("cpu"),
        report=lambda m, w: resumed.append(m), resume_dir=str(tmp_path / "ckpt"))
    assert [r["epoch"] for r in resumed] == [2, 3]
    for a, b in zip(full[1:], resumed):
        assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-4)
        assert a["val_slot_f1"] == pytest.approx(b["val_slot_f1"], abs=1e-9)


def test_plain_classification_data_is_refused_with_a_clear_message(tiny_model_dir, demo_data):
    with pytest.raises(Exception, match="needs joint data"):
        fit(_cfg(tiny_model_dir), demo_data, device=torch.device("cpu"), report=lambda m, w: None)


def test_two_datasets_train_together_and_report_the_task_mean(tiny_model_dir, conll_slice):
    """Intents from the demo texts, slots from CoNLL files: one encoder, each batch one dataset."""
    raw = load_joint_splits(DataConfig("demo", second_source=str(conll_slice)))
    data = encode_joint_splits(raw, load_tokenizer(tiny_model_dir), model=tiny_model_dir,
                               max_length=48)
    assert set(np.unique(data.splits["train"].sources)) == {0, 1}
    assert selection_metric(data) == "val_task_mean"
    reports = []
    fit(_cfg(tiny_model_dir, epochs=2, task_mixing="round_robin"), data,
        device=torch.device("cpu"), report=lambda metrics, write: reports.append(metrics))
    for r in reports:
        assert r["val_task_mean"] == pytest.approx((r["val_intent_accuracy"] + r["val_slot_f1"]) / 2)
        assert "val_sentence_accuracy" not in r  # no example has both a label and tags
    assert reports[-1]["best_val_task_mean"] == max(r["val_task_mean"] for r in reports)


def test_perturbed_validation_scores_the_intents_of_perturbed_texts(tiny_model_dir, joint_data):
    from trainables.joint import perturbed_intents

    noisy = perturbed_intents("typo:0.5", joint_data)
    val = joint_data.splits["validation"]
    assert len(noisy) == len(val) and (noisy.labels == val.labels).all()
    assert sum(not np.array_equal(a, b) for a, b in zip(noisy.input_ids, val.input_ids)) > len(val) / 2
    reports = []
    fit(_cfg(tiny_model_dir, epochs=1, perturb_eval="typo:0.5"), joint_data,
        device=torch.device("cpu"), report=lambda metrics, write: reports.append(metrics))
    assert 0 <= reports[0]["val_accuracy_perturbed"] <= 1
    assert reports[0]["best_val_accuracy_perturbed"] == reports[0]["val_accuracy_perturbed"]
