"""`tunebert train` on joint intent + slot data: the multitask family trains, logs intent, slot and
sentence scores every epoch, reads test once (with per-slot-type F1), hands over a model folder
that predicts intents and slot spans; a family that does not fit the data is refused first."""

from __future__ import annotations

import json

import mlflow
import pytest

from search_spaces.presets import get_preset
from trainables.data import DataConfig
from trainables.export import load_model
from trainables.joint_predict import predict_utterances
from tuning.cli import main
from tuning.results.train import train_config


def _joint_config(model: str) -> dict:
    return {**get_preset("joint-hand"), "model": model, "epochs": 2, "max_length": 48,
            "lr": 1e-3, "deploy_metrics": False, "perturb_eval": None}


def test_a_joint_model_trains_logs_every_task_and_hands_over_a_folder(tiny_model_dir, snips_slice,
                                                                      mlflow_uri, tmp_path):
    outcome = train_config(_joint_config(tiny_model_dir), DataConfig(str(snips_slice)),
                           tracking_uri=mlflow_uri, output_dir=str(tmp_path / "model"))
    client = mlflow.MlflowClient(mlflow_uri)
    run = client.get_run(outcome.run_id)
    for key in ("val_intent_accuracy", "val_slot_f1", "val_sentence_accuracy", "val_loss"):
        assert [m.step for m in client.get_metric_history(run.info.run_id, key)] == [1, 2], key
    test = run.data.metrics
    assert {"test_intent_accuracy", "test_slot_f1", "test_sentence_accuracy"} <= set(test)
    per_type = {k for k in test if k.startswith("test_slot_f1_")}
    assert per_type and all(0 <= test[k] <= 1 for k in per_type)
    assert test["test_sentence_accuracy"] <= test["test_intent_accuracy"]
    assert outcome.test == {k: v for k, v in test.items() if k.startswith("test_")}
    assert run.data.params["trainable"] == "multitask"

    loaded = load_model(tmp_path / "model")
    assert loaded.kind == "multitask"
    [answer] = predict_utterances(loaded, ["play  some Jazz on spotify"])
    assert answer["intent"] in loaded.label_map["names"] and 0 < answer["probability"] <= 1
    for slot in answer["slots"]:  # each span's value is the text between its offsets
        assert answer["text"][slot["start"]:slot["end"]] == slot["value"]
    meta = json.loads((tmp_path / "model" / "tunebert.json").read_text())
    assert meta["format"] == "tunebert-multitask"


def test_a_classification_config_on_joint_data_is_refused_with_the_fix(snips_slice, tmp_path, capsys):
    rc = main(["train", "--preset", "hand", "--data", str(snips_slice), "--storage", str(tmp_path)])
    err = capsys.readouterr().err
    assert rc == 2 and "holds word tags (seq layout)" in err and "--preset joint-hand" in err
    if (tmp_path / "mlflow.db").exists():  # refused before any run was recorded
        client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
        experiment = client.get_experiment_by_name("tunebert-train")
        assert experiment is None or not client.search_runs([experiment.experiment_id])


def test_a_multitask_config_on_text_only_data_is_refused_with_the_fix(tmp_path, capsys):
    rc = main(["train", "--preset", "joint-hand", "--data", "demo", "--storage", str(tmp_path)])
    err = capsys.readouterr().err
    assert rc == 2 and "holds texts with labels only" in err and "--second-data" in err


def test_two_datasets_from_the_command_line(tiny_model_dir, conll_slice, tmp_path, capsys):
    rc = main(["train", "--preset", "joint-hand", "--data", "demo", "--second-data", str(conll_slice),
               "--model", tiny_model_dir, "--set", "max_length=48", "--set", "deploy_metrics=false",
               "--smoke-test", "--storage", str(tmp_path)])
    out = capsys.readouterr()
    assert rc == 0, out.err
    assert "test_intent_accuracy" in out.out and "test_slot_f1" in out.out
    assert "test_sentence_accuracy" not in out.out  # no example has both an intent and tags
