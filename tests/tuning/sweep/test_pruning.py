"""A trial that has ended keeps one checkpoint holding its best epoch's model only, and the sweep
reports its disk use (printed and logged to the parent run). Real local Ray, Optuna, SQLite MLflow."""

import json
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

from trainables.checkpointing import load_checkpoint
from tuning.config import SweepConfig
from tuning.sweep.pruning import checkpoint_folders

EPOCHS = 3


# -- without Ray running: what pruning removes, given Ray's saved state


def _checkpoint(folder, epoch):
    from trainables.checkpointing import save_checkpoint

    model = torch.nn.Linear(4, 2)
    return save_checkpoint(folder, model=model, optimizer=torch.optim.AdamW(model.parameters()),
                           scheduler=None, scaler=None, epoch=epoch, config={"trainable": "finetune"},
                           label_map={"names": ["a", "b"]})


def _save_ray_state(sweep_dir, trial_id, status, checkpoint):
    """Ray's experiment state as Ray 2.60 writes it: the trial's JSON and its run metadata, whose
    checkpoint manager (cloudpickled inside) names the checkpoint a restore resumes from."""
    from ray.train._internal.session import _TrainingResult
    from ray.tune import Checkpoint, CheckpointConfig
    from ray.train._internal.checkpoint_manager import _CheckpointManager
    from ray.tune.trainable.metadata import _TrainingRunMetadata

    metadata = _TrainingRunMetadata()
    metadata.checkpoint_manager = _CheckpointManager(checkpoint_config=CheckpointConfig())
    metadata.checkpoint_manager.register_checkpoint(
        _TrainingResult(checkpoint=Checkpoint.from_directory(str(checkpoint)), metrics={}))
    trial = json.dumps({"trial_id": trial_id, "status": status})
    (sweep_dir / "experiment_state-2026-01-01_00-00-00.json").write_text(
        json.dumps({"trial_data": [[trial, metadata.get_json_state()]]}))


def test_pruning_keeps_the_checkpoint_rays_saved_state_points_at(tmp_path):
    """Ray's saved state records the trial ended but names checkpoint_000001 (the driver holds
    checkpoint_000002): a restore would read checkpoint_000001, so it stays, whole and resumable,
    until the saved state names the latest one."""
    from types import SimpleNamespace

    from tuning.sweep.pruning import CheckpointPruner

    trial_dir = tmp_path / "sweep" / "trainable_T1"
    folders = [_checkpoint(trial_dir / f"checkpoint_00000{i}", epoch=i + 1) for i in range(3)]
    _save_ray_state(tmp_path / "sweep", "T1", "TERMINATED", folders[1])
    trial = SimpleNamespace(trial_id="T1", path=str(trial_dir), status="TERMINATED",
                            checkpoint=SimpleNamespace(path=str(folders[2])))
    pruner = CheckpointPruner("s", str(tmp_path / "sweep"), population_based=False)
    pruner.CHECK_EVERY_S = 0.0
    pruner.on_trial_complete(1, [trial], trial)
    pruner.on_step_end(1, [trial])
    assert folders[1].is_dir(), "pruning removed the checkpoint a restore would read"
    assert load_checkpoint(folders[1])["optimizer"] is not None  # whole, and still resumable

    _save_ray_state(tmp_path / "sweep", "T1", "TERMINATED", folders[2])  # Ray caught up
    pruner.on_step_end(2, [trial])
    assert checkpoint_folders(trial_dir) == [folders[2]]
    assert load_checkpoint(folders[2])["extra"]["model_only"] is True


def test_a_killed_removal_leaves_no_folder_that_looks_like_a_checkpoint(tmp_path, monkeypatch):
    """A kill in the middle of deleting a checkpoint (rmtree goes file by file) must not leave
    a checkpoint_<N> folder with some of its files: Ray or a reader would take it for one."""
    from tuning.sweep import pruning

    trial_dir = tmp_path / "trial"
    folders = [_checkpoint(trial_dir / f"checkpoint_00000{i}", epoch=i + 1) for i in range(2)]

    class Killed(BaseException):
        pass

    def killed_midway(path, ignore_errors=False):
        path = Path(path)
        if path.is_dir():
            (path / "state.pt").unlink()
            raise Killed

    monkeypatch.setattr(pruning.shutil, "rmtree", killed_midway)
    with pytest.raises(Killed):
        pruning.prune_trial(trial_dir, folders[1])
    assert checkpoint_folders(trial_dir) == [folders[1]]
    monkeypatch.undo()
    pruning.prune_trial(trial_dir, folders[1])  # the next pruning clears what was left
    assert sorted(p.name for p in trial_dir.iterdir()) == ["checkpoint_000001"]


@pytest.mark.slow
def test_ended_trials_keep_only_their_best_model(ray_local, tiny_model_dir, demo_data, tmp_path, capsys):
    from trainables.loops import evaluate
    from tuning.report import rebuild_model
    from tuning.sweep.runner import run_sweep

    # ASHA with one trial at a time: a good config first (warm start), then configs that barely
    # learn, which fall below the first rung's top half and are stopped after epoch 1 with the
    # resumable state (optimizer, best weights) still in their checkpoint; two checkpoints are
    # kept per running trial
    (tmp_path / "space.yaml").write_text("lr: {low: 1.0e-7, high: 1.0e-6, log: true}\n")
    (tmp_path / "good.yaml").write_text("lr: 3.0e-3\n")
    cfg = SweepConfig(name="prune", model=tiny_model_dir, max_length=64, epochs=EPOCHS, num_trials=4,
                      storage=str(tmp_path), scheduler="asha", grace_period=1, reduction_factor=2,
                      max_concurrent=1, keep_checkpoints=2, precision="fp32", seed=3,
                      space_file=str(tmp_path / "space.yaml"), warm_start=(str(tmp_path / "good.yaml"),))
    from tuning import console

    console.setup(1)  # the disk line is a -v detail
    try:
        run_sweep(cfg)
    finally:
        console.setup(0)
    client = MlflowClient(cfg.resolved_tracking_uri())
    experiment = client.get_experiment_by_name("prune")
    runs = client.search_runs([experiment.experiment_id], max_results=100)
    trials = {r.data.tags["tunebert.trial_id"]: r for r in runs if r.data.tags.get("tunebert.kind") == "trial"}
    parent = next(r for r in runs if r.data.tags.get("tunebert.kind") == "sweep")
    last_epoch = {t: max(m.step for m in client.get_metric_history(r.info.run_id, "val_accuracy"))
                  for t, r in trials.items()}
    stopped = [t for t in trials if last_epoch[t] < EPOCHS]
    assert len(trials) == 4 and stopped, "ASHA stopped no trial: the test needs one"

    for trial_id, run in trials.items():
        (trial_dir,) = cfg.sweep_dir.glob(f"*_{trial_id}")
        folders = checkpoint_folders(trial_dir)
        assert len(folders) == 1, f"trial {trial_id} kept {[f.name for f in folders]}"
        state = load_checkpoint(folders[0])
        assert state["extra"]["model_only"] is True
        assert state["optimizer"] is None and state["scheduler"] is None and state["best_model"] is None
        assert state["epoch"] == last_epoch[trial_id]  # the last epoch it reported
        # what is left is the model it hands over: it scores its best epoch's validation accuracy
        model = rebuild_model(state["config"], state, demo_data.num_labels)
        result = evaluate(model, demo_data.splits["validation"], batch_size=64,
                          pad_token_id=demo_data.pad_token_id, num_labels=demo_data.num_labels,
                          device=torch.device("cpu"), precision="fp32")
        assert result.accuracy == run.data.metrics["best_val_accuracy"], trial_id

    printed = capsys.readouterr().out
    assert "[tunebert] disk: the sweep folder" in printed and "freed" in printed
    metrics = client.get_run(parent.info.run_id).data.metrics
    assert metrics["disk_pruned_mb"] > 0
    assert 0 < metrics["disk_checkpoints_mb"] <= metrics["disk_sweep_mb"]


def _trial_runs(db) -> dict[str, str]:
    """Trial id -> its MLflow run's status, straight from the SQLite file (cheap to poll)."""
    import sqlite3

    if not db.is_file():
        return {}
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=2)
        try:
            return dict(con.execute(
                "select t.value, r.status from runs r join tags t on t.run_uuid = r.run_uuid "
                "and t.key = 'tunebert.trial_id'"))
        finally:
            con.close()
    except sqlite3.Error:
        return {}


def _finished_trials(db) -> set[str]:
    """Trial ids whose MLflow run is FINISHED."""
    return {trial for trial, status in _trial_runs(db).items() if status == "FINISHED"}


@pytest.mark.slow
def test_a_trial_is_pruned_only_once_rays_saved_state_records_its_end(tiny_model_dir, tmp_path):
    """Ray saves its experiment state every few seconds (here: only at its first step and at the
    end), so a driver killed just after a trial ended resumes that trial from its checkpoint: the
    checkpoint must still be the resumable one. After the resume every trial ends pruned."""
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    repo = Path(__file__).resolve().parents[3]
    args = ["sweep", "--name", "lagging", "--model", tiny_model_dir, "--max-length", "64", "--storage",
            str(tmp_path), "--trials", "3", "--epochs", "2", "--scheduler", "none", "--max-concurrent", "1",
            "--keep-checkpoints", "3", "--seed", "0"]
    proc = subprocess.Popen([sys.executable, "-m", "tuning.cli", *args], cwd=repo,
                            env={**os.environ, "TUNE_GLOBAL_CHECKPOINT_S": "3600"},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 300
    try:
        # a trial has ended and the driver has moved on: the next trial's run exists. Ray creates
        # it in a later step than the one whose callbacks saw the end (on_trial_complete,
        # on_step_end), so a pruner that went by the in-memory status has acted by then.
        while not (_finished_trials(tmp_path / "mlflow.db") and
                   len(_trial_runs(tmp_path / "mlflow.db")) > len(_finished_trials(tmp_path / "mlflow.db"))):
            assert proc.poll() is None and time.time() < deadline, (
                f"no trial started after one finished within 300 s (exit {proc.poll()})")
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    sweep_dir = tmp_path / "ray" / "lagging"
    saved = json.loads(sorted(sweep_dir.glob("experiment_state-*.json"))[-1].read_text())
    saved_ended = {json.loads(t)["trial_id"] for t, _ in saved["trial_data"] if json.loads(t)["status"] == "TERMINATED"}
    ended = _finished_trials(tmp_path / "mlflow.db") - saved_ended
    assert ended, "Ray's saved state caught up with MLflow: the case this test is about did not happen"
    for trial_id in ended:
        (trial_dir,) = sweep_dir.glob(f"*_{trial_id}")
        folders = checkpoint_folders(trial_dir)
        assert len(folders) == 2, [f.name for f in folders]  # both epochs: Ray may resume from either
        assert not any(load_checkpoint(f)["extra"].get("model_only") for f in folders)
        assert load_checkpoint(folders[0])["optimizer"] is not None

    resumed = subprocess.run([sys.executable, "-m", "tuning.cli", "resume", "lagging", "--storage", str(tmp_path)],
                             cwd=repo, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    final = json.loads(sorted(sweep_dir.glob("experiment_state-*.json"))[-1].read_text())
    trial_ids = [json.loads(t)["trial_id"] for t, _ in final["trial_data"]]
    assert len(trial_ids) == 3
    for trial_id in trial_ids:  # (a trial Ray never recorded before the kill is not one of them)
        (trial_dir,) = sweep_dir.glob(f"*_{trial_id}")
        folders = checkpoint_folders(trial_dir)
        assert len(folders) == 1 and load_checkpoint(folders[0])["extra"]["model_only"] is True, trial_id
