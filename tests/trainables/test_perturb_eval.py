"""`perturb_eval`: a fine-tuning trial also scores perturbed validation texts (val_accuracy_perturbed)."""

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


def test_without_the_setting_nothing_perturbed_is_reported(tiny_config, demo_data, run_trainable):
    reports, _ = run_trainable(tiny_config.replace(epochs=1), demo_data)
    assert not any("perturbed" in key for key in reports[0])


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


def test_the_setting_is_validated_and_fine_tuning_only():
    assert FinetuneConfig.from_dict({"perturb_eval": "typo:0.1"}).perturb_eval == "typo:0.1"
    with pytest.raises(ConfigError, match=r"`perturb_eval` 'typo:2': the rate of 'typo' must be"):
        FinetuneConfig.from_dict({"perturb_eval": "typo:2"})
    with pytest.raises(ConfigError, match="`perturb_eval` 'tpyo:0.1': unknown kind"):
        FinetuneConfig.from_dict({"perturb_eval": "tpyo:0.1"})
    with pytest.raises(ConfigError, match="apply to"):
        ContrastiveConfig.from_dict({"perturb_eval": "typo:0.1"})


def test_a_sweep_ranks_the_perturbed_metric_by_its_best_epoch():
    assert registry.ranked_metric("val_accuracy_perturbed") == "best_val_accuracy_perturbed"
    assert registry.ranked_metric("val_accuracy") == "best_val_accuracy"


def test_a_space_file_fixes_the_setting_for_every_trial(tmp_path):
    """How a sweep turns it on: `perturb_eval: KIND:RATE,...` in a --space file (refused there,
    before Ray starts, when the spec is wrong)."""
    from search_spaces.finetune import SWEEP_LEVEL, finetune_space
    from search_spaces.overrides import SpaceError, load_space
    from tuning.search import preview_configs

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
