"""`perturb_eval`: every trial also scores perturbed validation texts (val_accuracy_perturbed), by default."""

import numpy as np
import pytest

from trainables import registry
from trainables.errors import ConfigError
from trainables.hparams import ContrastiveConfig, FinetuneConfig


def test_finetune_reports_perturbed_accuracy_every_epoch(tiny_config, demo_data, run_trainable):
    cfg = tiny_config.replace(epochs=2, lr=3e-3, perturb_eval="typo:0.3,delete:0.2")
    reports, _ = run_trainable(cfg, demo_data)
    assert len(reports) == 2
    for r in reports:
        assert 0.0 <= r["val_accuracy_perturbed"] <= 1.0
        assert 0.0 <= r["best_val_accuracy_perturbed"] <= 1.0
    last = reports[-1]
    # the best epoch is chosen by clean accuracy; its perturbed score travels with it
    chosen = reports[last["best_epoch"] - 1]
    assert last["best_val_accuracy_perturbed"] == chosen["val_accuracy_perturbed"]
    assert last["best_val_accuracy"] == chosen["val_accuracy"]


def test_every_trial_reports_it_by_default_and_null_turns_it_off(tiny_config, demo_data, run_trainable):
    assert FinetuneConfig().perturb_eval == ContrastiveConfig().perturb_eval == "typo:0.1,delete:0.05"
    reports, _ = run_trainable(tiny_config.replace(epochs=1, perturb_eval=FinetuneConfig().perturb_eval),
                               demo_data)
    assert 0.0 <= reports[0]["val_accuracy_perturbed"] <= 1.0
    reports, _ = run_trainable(tiny_config.replace(epochs=1, perturb_eval=None), demo_data)
    assert not any("perturbed" in key for key in reports[0])


@pytest.mark.parametrize("mode", ["two-stage", "two-stage-finetune"])
def test_a_contrastive_trial_reports_it_in_its_classifier_stage(mode, tiny_model_dir, demo_data,
                                                                run_trainable):
    """Stage 1 has no classifier (its val_accuracy is a k-NN proxy): nothing perturbed there; every
    classifier epoch scores the perturbed texts (on cached features when the encoder is frozen) and
    its best epoch carries its score, as in fine-tuning."""
    cfg = ContrastiveConfig(model=tiny_model_dir, max_length=64, mode=mode, loss="supcon",
                            contrastive_epochs=1, contrastive_batch_size=32, contrastive_lr=1e-3,
                            epochs=2, batch_size=32, lr=3e-3, perturb_eval="typo:0.3,delete:0.2")
    reports, _ = run_trainable(cfg, demo_data)
    assert [r["stage"] for r in reports] == [1, 2, 2]
    assert "val_accuracy_perturbed" not in reports[0]
    for r in reports[1:]:
        assert 0.0 <= r["val_accuracy_perturbed"] <= 1.0
    last = reports[-1]
    chosen = next(r for r in reports if r["epoch"] == last["best_epoch"])  # epochs count stage 1's
    assert last["best_val_accuracy_perturbed"] == chosen["val_accuracy_perturbed"]
    # the perturbed texts are scored, not the clean ones again: heavy noise moves the score
    assert any(r["val_accuracy_perturbed"] != r["val_accuracy"] for r in reports[1:])


def test_perturbed_validation_changes_texts_not_labels_and_is_seeded(demo_data):
    from trainables.finetune import perturbed_validation

    val = demo_data.splits["validation"]
    noisy = perturbed_validation("typo:0.3", demo_data)
    assert np.array_equal(noisy.labels, val.labels) and len(noisy) == len(val)
    changed = sum(not np.array_equal(a, b) for a, b in zip(noisy.input_ids, val.input_ids))
    assert changed > len(val) // 2
    assert all(len(ids) <= demo_data.max_length for ids in noisy.input_ids)
    again = perturbed_validation("typo:0.3", demo_data)
    assert all(np.array_equal(a, b) for a, b in zip(noisy.input_ids, again.input_ids))


def test_decoding_the_ids_gives_back_what_the_model_reads(demo_data, tiny_model_dir):
    """Unperturbed, decode + encode reproduces every validation text's ids: the decoded text is a
    faithful stand-in for the raw one (also true for all 2033 MASSIVE validation texts)."""
    from trainables.data import encode_texts
    from trainables.models import load_tokenizer

    tokenizer = load_tokenizer(tiny_model_dir)
    val = demo_data.splits["validation"]
    texts = tokenizer.batch_decode([ids.tolist() for ids in val.input_ids], skip_special_tokens=True,
                                   clean_up_tokenization_spaces=True)
    again, _ = encode_texts(tokenizer, texts, demo_data.max_length)
    assert all(np.array_equal(a, b) for a, b in zip(again, val.input_ids))


def test_decoding_round_trip_keeps_a_contraction_perturbable(demo_data, tiny_model_dir):
    """The texts perturbed in a trial are decoded token ids; "don't" must come back as one
    word, or the contraction table would never match."""
    from trainables.data import encode_texts
    from trainables.models import load_tokenizer

    tokenizer = load_tokenizer(tiny_model_dir)
    ids, _ = encode_texts(tokenizer, ["Don't wake me, what's the time?"], 64)
    text = tokenizer.batch_decode([ids[0].tolist()], skip_special_tokens=True,
                                  clean_up_tokenization_spaces=True)[0]
    assert text == "don't wake me, what's the time?"


def test_the_setting_is_validated():
    assert FinetuneConfig.from_dict({"perturb_eval": "typo:0.1"}).perturb_eval == "typo:0.1"
    assert ContrastiveConfig.from_dict({"perturb_eval": "typo:0.1"}).perturb_eval == "typo:0.1"
    with pytest.raises(ConfigError, match=r"`perturb_eval` 'typo:2': the rate of 'typo' must be"):
        FinetuneConfig.from_dict({"perturb_eval": "typo:2"})
    with pytest.raises(ConfigError, match="`perturb_eval` 'tpyo:0.1': unknown kind"):
        ContrastiveConfig.from_dict({"perturb_eval": "tpyo:0.1"})


def test_a_sweep_ranks_the_perturbed_metric_by_its_best_epoch():
    assert registry.ranked_metric("val_accuracy_perturbed") == "best_val_accuracy_perturbed"
    assert registry.ranked_metric("val_accuracy") == "best_val_accuracy"


def test_a_space_file_fixes_the_setting_for_every_trial(tmp_path):
    """How a sweep turns it on: `perturb_eval: KIND:RATE,...` in a --space file (refused there,
    before Ray starts, when the spec is wrong)."""
    from search_spaces.finetune import SWEEP_LEVEL, finetune_space
    from search_spaces.overrides import SpaceError, load_space
    from tuning.sweep.search import preview_configs

    path = tmp_path / "space.yaml"
    path.write_text("perturb_eval: typo:0.1,delete:0.05\n")
    space = load_space(path, finetune_space(model="m", epochs=2), config_cls=FinetuneConfig,
                       fixed_by_sweep=SWEEP_LEVEL)
    configs = preview_configs(space, n=4, seed=0, presets=[])
    assert {c["perturb_eval"] for c in configs} == {"typo:0.1,delete:0.05"}
    path.write_text("perturb_eval: typo:2\n")
    with pytest.raises(SpaceError, match="`perturb_eval` 'typo:2': the rate of 'typo'"):
        load_space(path, finetune_space(model="m", epochs=2), config_cls=FinetuneConfig,
                   fixed_by_sweep=SWEEP_LEVEL)
