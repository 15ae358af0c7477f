"""The one ranking function: trials are scored by their best validation epoch, and the config
handed back reproduces that epoch's model. MLflow runs are written here as the sweep's callback
writes them (a real SQLite store), without Ray."""

import json

import pytest
from mlflow.tracking import MlflowClient

from tuning import tracking
from tuning.tracking.best import best_config, reproducing_config, score_key, top_k


def _trial(client, experiment_id, trial_id, config, curve, status="FINISHED"):
    """A trial run whose val_accuracy follows ``curve`` (epoch 1, 2, ...), with the best-epoch
    metrics a trainable reports."""
    run = client.create_run(experiment_id, tags={tracking.KIND: "trial", tracking.SWEEP: "s",
                                                 tracking.TRIAL_ID: trial_id,
                                                 tracking.CONFIG: json.dumps(config)})
    best, best_epoch = -1.0, 0
    for epoch, value in enumerate(curve, start=1):
        if value > best:
            best, best_epoch = value, epoch
        for key, v in (("val_accuracy", value), ("best_val_accuracy", best), ("best_epoch", best_epoch)):
            client.log_metric(run.info.run_id, key, v, step=epoch)
    client.set_terminated(run.info.run_id, status)
    return run.info.run_id


@pytest.fixture
def sweep(mlflow_uri):
    client = MlflowClient(mlflow_uri)
    experiment_id = tracking.ensure_experiment(client, "s", None)
    base = {"trainable": "finetune", "epochs": 4, "lr": 1e-4}
    ids = {
        # peaked early then fell: its last epoch (0.80) is the worst, its best (0.93) the best
        "peaked": _trial(client, experiment_id, "a", {**base, "lr": 2e-4}, [0.85, 0.93, 0.88, 0.80]),
        "steady": _trial(client, experiment_id, "b", base, [0.80, 0.85, 0.89, 0.91]),
        "failed": _trial(client, experiment_id, "c", base, [0.95, 0.97], status="FAILED"),
    }
    return mlflow_uri, ids


def test_top_k_ranks_by_the_best_epoch_not_the_last(sweep):
    uri, ids = sweep
    ranked = top_k("s", 3, tracking_uri=uri)
    assert [r.run_id for r in ranked] == [ids["peaked"], ids["steady"]]  # a failed trial never ranks
    assert [r.score() for r in ranked] == [0.93, 0.91]


def test_the_exported_config_stops_at_the_epoch_that_scored(sweep):
    uri, _ = sweep
    assert best_config("s", tracking_uri=uri) == {"trainable": "finetune", "epochs": 4, "lr": 2e-4,
                                                  "stop_epoch": 2}
    second = top_k("s", 2, tracking_uri=uri)[1]
    assert second.config["stop_epoch"] is None  # its last epoch was its best


def test_reproducing_config_counts_classifier_epochs_of_two_stage_trials():
    two_stage = {"trainable": "contrastive", "mode": "two-stage", "contrastive_epochs": 3, "epochs": 5}
    assert reproducing_config(two_stage, {"best_epoch": 5})["stop_epoch"] == 2
    assert reproducing_config(two_stage, {"best_epoch": 8})["stop_epoch"] is None
    joint = {"trainable": "contrastive", "mode": "joint", "contrastive_epochs": 0, "epochs": 5}
    assert reproducing_config(joint, {"best_epoch": 3})["stop_epoch"] == 3
    assert reproducing_config({"epochs": 4}, {}) == {"epochs": 4}  # older runs: nothing to add
    assert score_key("val_accuracy", {"best_val_accuracy": 1.0}) == "best_val_accuracy"
    assert score_key("val_accuracy", {"val_accuracy": 1.0}) == "val_accuracy"


def test_report_picks_the_trial_best_picks(sweep, tmp_path):
    """Issue 11 item 8: report used its own ranking (last epoch, no stage-1 exclusion)."""
    from mlflow.tracking import MlflowClient

    from tuning.tracking.best import best_run
    from tuning.report import load_trials, pick_best

    uri, ids = sweep
    client = MlflowClient(uri)
    experiment_id = client.get_experiment_by_name("s").experiment_id
    # a contrastive trial stopped in its first stage: its "val_accuracy" is a k-NN proxy
    stage1 = _trial(client, experiment_id, "d", {"trainable": "contrastive", "epochs": 4}, [0.99])
    client.log_metric(stage1, "stage", 1, step=1)
    trials = load_trials(uri, "s")
    best = pick_best(trials, "s", uri, str(tmp_path))
    assert best.trial_id == best_run("s", tracking_uri=uri).trial_id == "a"
    # the report's learning curves are of the trials `best --top` ranks, in its order
    from tuning.tracking.best import top_k
    from tuning.report.data import top_curves

    shown = [label.split(" ")[0] for label in top_curves(uri, trials, "s", str(tmp_path), k=5)]
    assert shown == [r.trial_id for r in top_k("s", 5, tracking_uri=uri)] and "d" not in shown
