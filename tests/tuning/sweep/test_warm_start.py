"""Exact warm starts (issue 21): a warm-start preset or file names one complete config. Every
searched parameter it leaves unset takes its registry default, never a sample, and the trial's
MLflow params are exactly that config."""

import json

import pytest

from search_spaces.contrastive import mixed_space
from search_spaces.finetune import SWEEP_LEVEL, finetune_space
from search_spaces.overrides import load_space
from search_spaces.presets import get_preset
from trainables.errors import ConfigError
from trainables.hparams import HPARAMS, FinetuneConfig
from tuning.config import SweepConfig, warm_start_config
from tuning.sweep.search import build_searcher, preview_configs, warm_start_values

SWEEP = dict(model="tiny", epochs=1, max_length=32, seed=0, precision="fp32")


def _first_trial(space, names, seed=0):
    """Ray's OptunaSearch as the sweep builds it, asked for its first two trials (no Ray needed):
    the Optuna params and the config of each."""
    presets = [warm_start_values(space, warm_start_config(n), n, SWEEP_LEVEL) for n in names]
    searcher = build_searcher(space, kind="tpe", seed=seed, metric="val_accuracy", mode="max",
                              num_trials=8, presets=presets)
    configs = [searcher.suggest(f"t{i}") for i in range(2)]
    optuna_params = [searcher._ot_trials[f"t{i}"].params for i in range(2)]
    return optuna_params, configs


def _hand_plus_defaults(space) -> dict:
    """Every searched parameter the hand config's branch uses: hand's value, else the default."""
    hand = get_preset("hand")
    return {name: hand.get(name, HPARAMS[name].default) for name in space.searched()
            if space.get(name).active(hand)}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_hand_trial_is_hand_plus_registry_defaults(seed):
    space = finetune_space(**SWEEP)
    (params, sampled), (config, _) = _first_trial(space, ["hand"], seed)
    expected = _hand_plus_defaults(space)
    # the four the issue found sampled: llrd_decay 0.865, head_lr_multiplier 26.9, ...
    assert {k: expected[k] for k in ("llrd_decay", "head_lr_multiplier", "label_smoothing",
                                     "classifier_dropout")} == {
        "llrd_decay": 1.0, "head_lr_multiplier": 1.0, "label_smoothing": 0.0, "classifier_dropout": 0.1}
    assert params == expected  # Optuna's record of the trial: nothing sampled, nothing extra
    assert {k: config[k] for k in expected} == expected
    assert "head_hidden" not in params  # a linear head: the mlp branch is not taken
    assert config["preset"] == "hand" and config["epochs"] == SWEEP["epochs"]
    assert sampled != expected  # the second trial is the searcher's own


def test_the_trial_config_trains_what_train_preset_would():
    space = finetune_space(**SWEEP)
    _, (config, _) = _first_trial(space, ["hand"])
    train_preset = FinetuneConfig.from_dict({**get_preset("hand"), **SWEEP}).to_dict()
    assert FinetuneConfig.from_dict(config).to_dict() == train_preset


def test_every_preset_of_a_family_enqueues_its_whole_branch():
    space = finetune_space(**SWEEP)
    for name in ("baseline", "llrd", "warmup", "llrd_warmup", "hand"):
        preset = get_preset(name)
        enqueued, _ = warm_start_values(space, preset, name, SWEEP_LEVEL, [])
        branch = {n for n in space.searched() if space.get(n).active(preset)}
        assert set(enqueued) == branch, name
        assert all(enqueued[n] == preset.get(n, HPARAMS[n].default) for n in branch), name
    # the study's presets use an mlp head: its hidden size is on their branch, as the preset says
    enqueued, _ = warm_start_values(space, get_preset("baseline"), "baseline", SWEEP_LEVEL, [])
    assert enqueued["head_hidden"] == 10


def test_mixed_space_enqueues_the_family_and_only_its_parameters():
    space = mixed_space(**SWEEP)
    (params, _), (config, _) = _first_trial(space, ["hand"])
    assert params["trainable"] == "finetune"
    assert not set(params) & {"mode", "temperature", "contrastive_lr", "projection_dim"}
    assert params == {"trainable": "finetune", **_hand_plus_defaults(finetune_space(**SWEEP))}


def test_a_partial_warm_start_file_gets_defaults_too(tmp_path):
    good = tmp_path / "good.yaml"
    good.write_text("lr: 3.0e-3\nhead: mlp\npreset: good\n")
    space = finetune_space(**SWEEP)
    (params, _), (config, _) = _first_trial(space, [str(good)])
    defaults = {n: HPARAMS[n].default for n in space.searched()}
    assert params == {**defaults, "lr": 3.0e-3, "head": "mlp"}  # the mlp branch: head_hidden too
    assert params["head_hidden"] == 256 and config["preset"] == "good"


def test_a_parameter_off_the_presets_branch_is_kept_as_the_preset_says(tmp_path):
    # train --preset would carry head_hidden 64 (unused by a linear head): so does the trial
    good = tmp_path / "good.yaml"
    good.write_text("head: linear\nhead_hidden: 64\n")
    space = finetune_space(**SWEEP)
    (params, _), (config, _) = _first_trial(space, [str(good)])
    assert "head_hidden" not in params and config["head_hidden"] == 64


def test_sgd_only_parameters_follow_the_warm_starts_optimizer(tmp_path):
    (tmp_path / "space.yaml").write_text("optimizer: [adamw, sgd]\nmomentum: {low: 0.5, high: 0.99}\n"
                                         "nesterov: [false, true]\n")
    (tmp_path / "sgd.yaml").write_text("optimizer: sgd\nlr: 1.0e-2\n")
    space = load_space(tmp_path / "space.yaml", finetune_space(**SWEEP), config_cls=FinetuneConfig,
                       fixed_by_sweep=SWEEP_LEVEL)
    (hand, _), _ = _first_trial(space, ["hand"])
    assert hand["optimizer"] == "adamw" and not {"momentum", "nesterov"} & set(hand)
    (sgd, _), (config, _) = _first_trial(space, [str(tmp_path / "sgd.yaml")])
    assert (sgd["optimizer"], sgd["momentum"], sgd["nesterov"]) == ("sgd", 0.9, False)
    assert FinetuneConfig.from_dict(config).momentum == 0.9


def test_a_null_value_runs_unset_and_is_not_sampled(tmp_path):
    # a best.yaml from `tunebert best -o` says hidden_dropout: null; a space that searches it
    (tmp_path / "space.yaml").write_text("hidden_dropout: {low: 0.0, high: 0.3}\n")
    space = load_space(tmp_path / "space.yaml", finetune_space(**SWEEP), config_cls=FinetuneConfig,
                       fixed_by_sweep=SWEEP_LEVEL)
    notes = []
    enqueued, overrides = warm_start_values(space, get_preset("hand"), "hand", SWEEP_LEVEL, notes)
    assert "hidden_dropout" not in enqueued and overrides["hidden_dropout"] is None
    assert any("hidden_dropout is null" in n for n in notes)
    configs = preview_configs(space, 3, seed=0, presets=[(enqueued, overrides)])
    assert configs[0]["hidden_dropout"] is None and configs[1]["hidden_dropout"] is not None


def test_a_default_outside_the_spaces_choices_is_refused_before_anything_starts(tmp_path):
    (tmp_path / "space.yaml").write_text("label_smoothing: {low: 0.05, high: 0.2}\n"
                                         "pooling: {choices: [cls, max, mean]}\n"
                                         "head_lr_multiplier: {choices: [10.0, 100.0]}\n")
    space = load_space(tmp_path / "space.yaml", finetune_space(**SWEEP), config_cls=FinetuneConfig,
                       fixed_by_sweep=SWEEP_LEVEL)
    with pytest.raises(ConfigError) as err:
        warm_start_values(space, get_preset("hand"), "hand", SWEEP_LEVEL, [])
    message = str(err.value)
    assert "'hand' does not set head_lr_multiplier" in message and "default 1.0" in message
    assert "[10.0, 100.0]" in message and "add it to the choices" in message


def test_a_default_outside_a_numeric_range_runs_as_it_is_and_is_noted(tmp_path):
    (tmp_path / "space.yaml").write_text("label_smoothing: {low: 0.05, high: 0.2}\n")
    space = load_space(tmp_path / "space.yaml", finetune_space(**SWEEP), config_cls=FinetuneConfig,
                       fixed_by_sweep=SWEEP_LEVEL)
    notes = []
    enqueued, _ = warm_start_values(space, get_preset("hand"), "hand", SWEEP_LEVEL, notes)
    assert enqueued["label_smoothing"] == 0.0
    assert notes == ["preset 'hand' does not set label_smoothing, so its trial takes the default "
                     "0.0, which lies outside the space's range [0.05, 0.2]; its trial runs with it as it is"]


# -------------------------------------------------------------------------- a real sweep


@pytest.mark.slow
def test_first_trial_of_a_sweep_logs_hand_plus_defaults(ray_local, tiny_model_dir, tmp_path):
    from mlflow.tracking import MlflowClient

    from tuning.sweep.runner import run_sweep

    cfg = SweepConfig(name="warm", model=tiny_model_dir, max_length=32, epochs=1, num_trials=1,
                      storage=str(tmp_path), scheduler="none", warm_start=("hand",),
                      max_concurrent=1, seed=4, precision="fp32")
    run_sweep(cfg)
    client = MlflowClient(cfg.resolved_tracking_uri())
    experiment = client.get_experiment_by_name("warm")
    trials = [r for r in client.search_runs([experiment.experiment_id])
              if r.data.tags.get("tunebert.kind") == "trial"]
    assert len(trials) == 1 and trials[0].data.tags["tunebert.preset"] == "hand"
    sweep_level = dict(model=tiny_model_dir, max_length=32, epochs=1, seed=4, precision="fp32")
    expected = FinetuneConfig.from_dict({**get_preset("hand"), **sweep_level}).to_dict()
    assert json.loads(trials[0].data.tags["tunebert.config"]) == expected
    assert trials[0].data.params == {k: str(v) for k, v in expected.items()}


def test_a_warm_start_file_with_a_bad_value_exits_2_naming_it(tmp_path, capsys):
    from tuning.cli import main

    bad = tmp_path / "bad.yaml"
    bad.write_text("lr: fast\n")  # used to end in a TypeError from the range check
    rc = main(["sweep", "--warm-start", str(bad), "--trials", "1", "--storage", str(tmp_path)])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err
    assert f"warm-start preset '{bad}': `lr` must be a number, but got 'fast'" in err
