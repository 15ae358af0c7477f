import optuna
import pytest

from search_spaces.finetune import finetune_space
from search_spaces.space import Categorical, Fixed, FloatRange, IntRange, Param, SearchSpace, sample


def _trial(seed=0):
    return optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed)).ask()


def test_default_space_leaves_sgd_out():
    # measured: SGD trails AdamW on MASSIVE at every learning rate tried (docs/search-space.md)
    space = finetune_space()
    assert space.get("optimizer") is None and space.get("momentum") is None


def test_conditional_parameters_only_when_active():
    from search_spaces.overrides import apply_overrides
    from trainables.hparams import FinetuneConfig

    space = apply_overrides(finetune_space(model="m", epochs=3),
                            {"optimizer": ["adamw", "sgd"], "momentum": {"low": 0.8, "high": 0.99},
                             "nesterov": [False, True]}, config_cls=FinetuneConfig)
    seen_sgd = seen_adamw = False
    for seed in range(30):
        config = sample(_trial(seed), space)
        if config["optimizer"] == "sgd":
            seen_sgd = True
            assert "momentum" in config and "nesterov" in config
        else:
            seen_adamw = True
            assert "momentum" not in config and "nesterov" not in config
        assert ("head_hidden" in config) == (config["head"] == "mlp")
        assert config["model"] == "m" and config["epochs"] == 3 and config["trainable"] == "finetune"
        assert 1e-5 <= config["lr"] <= 3e-4 and config["batch_size"] in (16, 32, 64, 128)
    assert seen_sgd and seen_adamw


def test_fixed_values_and_overrides():
    space = SearchSpace((Param("lr", FloatRange(0.1, 0.2)), Param("head", Fixed("linear")),
                         Param("freeze_layers", IntRange(0, 2))), {"epochs": 2})
    config = sample(_trial(), space)
    assert config["head"] == "linear" and config["epochs"] == 2
    # a warm-start preset adds what the space does not mention; the space's fixed value wins
    warm = sample(_trial(), space, {"head": "mlp", "head_hidden": 10})
    assert warm["head"] == "linear" and warm["head_hidden"] == 10
    assert space.searched() == ("lr", "freeze_layers")


def test_describe_round_trips_through_overrides():
    from search_spaces.overrides import apply_overrides
    from trainables.hparams import FinetuneConfig

    space = finetune_space()
    again = apply_overrides(SearchSpace((), space.constants), space.describe(), config_cls=FinetuneConfig)
    assert again.params == space.params


def test_joint_space_takes_the_measured_ranges_inside_the_registry_bounds():
    from search_spaces.multitask import JOINT_RANGES, multitask_space
    from search_spaces.presets import PRESETS
    from trainables.hparams import HPARAMS

    space = multitask_space()
    assert space.get("lr").dist == FloatRange(5e-5, 5e-4, log=True)
    assert space.get("llrd_decay").dist.low == 0.9
    assert space.get("slot_head").dist == Fixed("linear")
    assert "freeze" not in space.names() and "unfreeze_every" not in space.names()
    # fine-tuning keeps its own ranges
    assert finetune_space().get("lr").dist == FloatRange(1e-5, 3e-4, log=True)
    for name, dist in JOINT_RANGES.items():
        spec = HPARAMS[name]
        values = [dist.value] if isinstance(dist, Fixed) else [dist.low, dist.high]
        for value in values:
            spec.check(value)  # raises ConfigError outside the registry's bounds
    # the hand joint baseline, which `tune` tries first, is a point of the space
    hand = PRESETS["joint-hand"]
    for name in ("lr", "llrd_decay", "head_lr_multiplier", "slot_lr_multiplier", "slot_loss_weight"):
        dist = space.get(name).dist
        assert dist.low <= hand.get(name, HPARAMS[name].default) <= dist.high, name
    # sampling gives values inside the measured ranges
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(20):
        values = sample(study.ask(), space)
        assert 5e-5 <= values["lr"] <= 5e-4 and 3.0 <= values["slot_lr_multiplier"] <= 100.0
        assert values["slot_head"] == "linear" and values["intent_loss_weight"] == 1.0
