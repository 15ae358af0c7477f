"""A multitask (joint intent + slot) sweep through a real local Ray, Optuna and SQLite MLflow store:
it ranks by sentence accuracy unless told otherwise, every trial logs intent, slot and sentence
scores per epoch, the best config is a multitask one, and a family that does not fit the data is
refused before Ray starts."""

import json

import pytest
from mlflow.tracking import MlflowClient

from trainables.data import DataConfig
from trainables.errors import ConfigError
from tuning.config import SweepConfig
from tuning.sweep.runner import run_sweep
from tuning.tracking.best import best_config, best_run

pytestmark = pytest.mark.slow


def test_a_joint_sweep_ranks_by_sentence_accuracy_and_logs_every_task(ray_local, tiny_model_dir,
                                                                        snips_slice, tmp_path):
    cfg = SweepConfig(name="joint", trainable="multitask", data=DataConfig(str(snips_slice)),
                      model=tiny_model_dir, max_length=48, epochs=2, num_trials=3,
                      storage=str(tmp_path), scheduler="asha", warm_start=("joint-hand",),
                      max_concurrent=2, seed=0)
    outcome = run_sweep(cfg)
    client = MlflowClient(cfg.resolved_tracking_uri())
    experiment = client.get_experiment_by_name("joint")
    runs = client.search_runs([experiment.experiment_id], "tags.`tunebert.kind` = 'trial'")
    assert len(runs) == 3
    for run in runs:
        config = json.loads(run.data.tags["tunebert.config"])
        assert config["trainable"] == "multitask"
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "val_slot_f1")]
        assert steps and steps == sorted(steps) and steps[0] == 1
        assert "best_val_sentence_accuracy" in run.data.metrics
    [hand] = [r for r in runs if r.data.tags.get("tunebert.preset") == "joint-hand"]
    assert json.loads(hand.data.tags["tunebert.config"])["slot_lr_multiplier"] == 10.0
    best = best_run("joint", storage=str(tmp_path))
    expected = max(runs, key=lambda r: r.data.metrics["best_val_sentence_accuracy"])
    assert best.run_id == expected.info.run_id == outcome.best.run_id
    assert best_config("joint", storage=str(tmp_path))["trainable"] == "multitask"
    saved = json.loads((tmp_path / "ray" / "joint" / "tunebert_sweep.json").read_text())
    assert saved["metric"] == "val_sentence_accuracy"


def test_a_classification_sweep_on_joint_data_is_refused_before_ray(snips_slice, tmp_path):
    cfg = SweepConfig(name="wrong", data=DataConfig(str(snips_slice)), storage=str(tmp_path))
    with pytest.raises(ConfigError, match="only multitask trials train on"):
        run_sweep(cfg)
    assert not (tmp_path / "ray" / "wrong").exists()


def test_intent_accuracy_and_slot_f1_as_a_pareto_front(ray_local, tiny_model_dir, snips_slice,
                                                       tmp_path):
    """Two objectives across the tasks: every trial is scored on both, and the front holds exactly
    the trials no other trial beats on both."""
    from tuning.tracking.best import front, pareto_front

    cfg = SweepConfig(name="pareto", trainable="multitask", data=DataConfig(str(snips_slice)),
                      model=tiny_model_dir, max_length=48, epochs=2, num_trials=4,
                      storage=str(tmp_path), scheduler="none", max_concurrent=2, seed=3,
                      metric="val_intent_accuracy", mode="max",
                      objectives=("val_intent_accuracy:max", "val_slot_f1:max"))
    run_sweep(cfg)
    client = MlflowClient(cfg.resolved_tracking_uri())
    experiment = client.get_experiment_by_name("pareto")
    runs = client.search_runs([experiment.experiment_id], "tags.`tunebert.kind` = 'trial'")
    points = [(r.data.metrics["best_val_intent_accuracy"], r.data.metrics["best_val_slot_f1"])
              for r in runs]
    expected = {runs[i].info.run_id for i in pareto_front(points, ("max", "max"))}
    assert {row.run_id for row in front("pareto", storage=str(tmp_path))} == expected


def test_the_family_follows_the_data_unless_given(snips_slice, conll_slice):
    """--trainable left out: multitask for a joint folder or two datasets, finetune for texts."""
    from tuning.cli import build_parser
    from tuning.settings import chosen_trainable

    parser = build_parser()
    assert chosen_trainable(parser.parse_args(["sweep", "--data", str(snips_slice)])) == "multitask"
    assert chosen_trainable(parser.parse_args(
        ["sweep", "--data", "demo", "--second-data", str(conll_slice)])) == "multitask"
    assert chosen_trainable(parser.parse_args(["sweep", "--data", "demo"])) == "finetune"
    assert chosen_trainable(parser.parse_args(
        ["sweep", "--data", str(snips_slice), "--trainable", "finetune"])) == "finetune"
