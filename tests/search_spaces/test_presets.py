import pytest

from search_spaces.presets import PRESETS, STUDY_TEST_ACCURACY, get_preset
from trainables.errors import ConfigError
from trainables.hparams import FinetuneConfig


FINETUNE_PRESETS = ("baseline", "llrd", "warmup", "llrd_warmup")


def test_presets_are_valid_configs_matching_the_study():
    for name in FINETUNE_PRESETS:
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
    assert set(STUDY_TEST_ACCURACY) == set(PRESETS) - {"hand", "joint-hand"}


def test_the_hand_preset_is_the_hand_written_config_the_search_is_measured_against():
    hand = FinetuneConfig.from_dict(get_preset("hand"))
    assert (hand.optimizer, hand.lr, hand.batch_size, hand.epochs) == ("adamw", 1e-4, 32, 4)
    assert (hand.pooling, hand.head, hand.scheduler) == ("mean", "linear", "linear")
    assert (hand.warmup_ratio, hand.weight_decay) == (0.1, 0.01)


def test_the_joint_hand_preset_is_the_issues_hand_joint_baseline():
    from trainables.hparams import MultitaskConfig

    hand = MultitaskConfig.from_dict(get_preset("joint-hand"))
    assert (hand.optimizer, hand.lr, hand.batch_size, hand.epochs, hand.max_length) == \
        ("adamw", 1e-4, 32, 4, 64)
    assert hand.lr * hand.head_lr_multiplier == hand.lr * hand.slot_lr_multiplier == pytest.approx(1e-3)
    assert (hand.pooling, hand.head, hand.slot_head, hand.classifier_dropout) == \
        ("mean", "linear", "linear", 0.1)
    assert (hand.warmup_ratio, hand.intent_loss_weight, hand.slot_loss_weight) == (0.1, 1.0, 1.0)


def test_unknown_preset_lists_the_known_ones():
    with pytest.raises(ConfigError, match=r"unknown preset 'bert'; available presets: \['baseline'"):
        get_preset("bert")


def test_contrastive_presets_match_the_study():
    from trainables.hparams import ContrastiveConfig
    from trainables.registry import resolve_config

    supcon = ContrastiveConfig.from_dict(get_preset("supcon"))
    assert (supcon.loss, supcon.mode, supcon.contrastive_batch_size, supcon.contrastive_epochs) == \
        ("supcon", "two-stage", 64, 10)
    assert supcon.contrastive_lr == supcon.lr == 1e-4 and supcon.contrastive_optimizer == "adamw"
    assert (supcon.llrd_decay, supcon.warmup_ratio, supcon.head) == (0.9, 0.2, "linear")
    simclr = ContrastiveConfig.from_dict(get_preset("simclr"))
    assert (simclr.loss, simclr.contrastive_batch_size, simclr.contrastive_epochs, simclr.epochs) == \
        ("simclr", 256, 13, 20)
    assert (simclr.contrastive_optimizer, simclr.optimizer, simclr.momentum, simclr.contrastive_lr, simclr.lr) == \
        ("sgd", "sgd", 0.99, 1e-5, 1e-2)  # the study's row: SGD, momentum 0.99, in both stages
    assert simclr.classifier_dropout == 0.9
    assert resolve_config(get_preset("simclr"))["trainable"] == "contrastive"
