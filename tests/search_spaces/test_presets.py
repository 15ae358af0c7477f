import pytest

from search_spaces.presets import PRESETS, STUDY_TEST_ACCURACY, get_preset
from trainables.errors import ConfigError
from trainables.hparams import FinetuneConfig


def test_presets_are_valid_configs_matching_the_study():
    for name in PRESETS:
        cfg = FinetuneConfig.from_dict(get_preset(name))
        assert cfg.lr == 1e-4 and cfg.batch_size == 16 and cfg.epochs == 10
        assert cfg.classifier_dropout == 0.9 and cfg.optimizer == "adamw"
        assert cfg.preset == name
    assert get_preset("baseline")["scheduler"] == "cosine" and get_preset("baseline")["min_lr"] == 1e-6
    llrd = FinetuneConfig.from_dict(get_preset("llrd"))
    assert llrd.llrd_decay == 0.9 and llrd.lr * llrd.head_lr_multiplier == pytest.approx(1e-2)
    warm = FinetuneConfig.from_dict(get_preset("warmup"))
    assert warm.scheduler == "linear" and warm.warmup_ratio == 0.2
    both = FinetuneConfig.from_dict(get_preset("llrd_warmup"))
    assert both.llrd_decay == 0.9 and both.warmup_ratio == 0.2
    assert set(STUDY_TEST_ACCURACY) == set(PRESETS)


def test_unknown_preset_lists_the_known_ones():
    with pytest.raises(ConfigError, match=r"unknown preset 'bert'; available presets: \['baseline'"):
        get_preset("bert")
