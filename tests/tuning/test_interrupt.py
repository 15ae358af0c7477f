"""Ctrl-C and SIGTERM, sent for real to the whole process group of a `tunebert` process: the sweep
ends KILLED in MLflow (parent and open trial runs), the resume command is printed, the exit status
is 130 / 143, and `tunebert resume` then finishes it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]


def _runs(storage: Path, name: str):
    client = MlflowClient(f"sqlite:///{storage / 'mlflow.db'}")
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        return client, [], []
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    return (client, [r for r in runs if r.data.tags.get("tunebert.kind") == "sweep"],
            [r for r in runs if r.data.tags.get("tunebert.kind") == "trial"])


def _start(command: str, name: str, storage: Path, model: str, data: Path) -> subprocess.Popen:
    args = [sys.executable, "-m", "tuning.cli", command, "--name", name, "--model", model,
            "--storage", str(storage), "--max-length", "64", "--data", str(data)]
    if command == "tune":
        args += ["--smoke-test"]
    else:
        args += ["--trials", "3", "--epochs", "3", "--scheduler", "none", "--max-concurrent", "1"]
    # its own process group, as a shell gives a foreground job: the signal reaches the group.
    # Output goes to files: a full pipe nobody reads would block the sweep.
    return subprocess.Popen(args, cwd=REPO, stdout=open(storage / f"{name}.out", "w"),
                            stderr=open(storage / f"{name}.err", "w"), start_new_session=True)


def _signal_mid_sweep(proc: subprocess.Popen, storage: Path, name: str, signum: int,
                      after_a_finished_trial: bool) -> tuple[int, str]:
    """Send ``signum`` to the process group once a trial is training (after its first epoch and
    another trial's end, if asked); return the exit status and stderr."""
    deadline = time.time() + 300
    while time.time() < deadline:
        time.sleep(0.5)
        try:
            _, _, trials = _runs(storage, name)
        except Exception:  # the store is being created
            continue
        finished = any(r.info.status == "FINISHED" for r in trials)
        training = any(r.info.status == "RUNNING" and (r.data.metrics or not after_a_finished_trial)
                       for r in trials)
        if training and (finished or not after_a_finished_trial):
            break
    else:
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail("the sweep never reached the moment to interrupt it")
    os.killpg(proc.pid, signum)
    proc.wait(timeout=120)
    return proc.returncode, (storage / f"{name}.err").read_text()


def _assert_stopped_as_killed(storage: Path, name: str, stderr: str) -> None:
    assert f"resume with: tunebert resume {name} --storage {storage}" in stderr, stderr[-3000:]
    assert "Traceback" not in stderr
    _, parents, trials = _runs(storage, name)
    assert [p.info.status for p in parents] == ["KILLED"]  # not FINISHED with a partial "best"
    assert "tunebert.best_trial_id" not in parents[0].data.tags
    assert not [r for r in trials if r.info.status == "RUNNING"]
    assert any(r.info.status == "KILLED" for r in trials)  # the one that was training
    assert not (storage / "ray" / name / "tunebert.lock").exists()  # the lock was released


def test_ctrl_c_ends_the_sweep_killed_and_resume_finishes_it(tiny_model_dir, massive_dir, tmp_path):
    proc = _start("sweep", "ctrlc", tmp_path, tiny_model_dir, massive_dir)
    status, stderr = _signal_mid_sweep(proc, tmp_path, "ctrlc", signal.SIGINT, after_a_finished_trial=True)
    assert status == 130, stderr[-3000:]
    assert "interrupted by SIGINT" in stderr
    _assert_stopped_as_killed(tmp_path, "ctrlc", stderr)
    resumed = subprocess.run([sys.executable, "-m", "tuning.cli", "resume", "ctrlc", "--storage",
                              str(tmp_path)], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    client, parents, trials = _runs(tmp_path, "ctrlc")
    assert [p.info.status for p in parents] == ["FINISHED"]
    assert len(trials) == 3 and all(r.info.status == "FINISHED" for r in trials)
    for run in trials:  # the interrupted trial continued: every epoch once
        assert sorted(m.step for m in client.get_metric_history(run.info.run_id, "val_accuracy")) == [1, 2, 3]


@pytest.mark.parametrize("command", ["sweep", "tune"])
def test_sigterm_ends_the_sweep_killed(command, tiny_model_dir, massive_dir, tmp_path):
    """SIGTERM to the whole group (systemd, init processes that forward to the group): Ray's own
    processes are spared, so the sweep stops through Ray as with Ctrl-C."""
    name = f"term-{command}"
    proc = _start(command, name, tmp_path, tiny_model_dir, massive_dir)
    status, stderr = _signal_mid_sweep(proc, tmp_path, name, signal.SIGTERM,
                                       after_a_finished_trial=command == "sweep")
    assert status == 143, stderr[-3000:]
    assert "interrupted by SIGTERM" in stderr
    _assert_stopped_as_killed(tmp_path, name, stderr)
    if command == "tune":  # the pipeline stays in its sweep phase, and resume finishes all of it
        state = json.loads((tmp_path / "ray" / name / "tunebert_pipeline.json").read_text())["state"]
        assert state["phase"] == "sweep"
        resumed = subprocess.run([sys.executable, "-m", "tuning.cli", "resume", name, "--storage",
                                  str(tmp_path)], cwd=REPO, capture_output=True, text=True, timeout=600)
        assert resumed.returncode == 0, resumed.stderr[-3000:]
        state = json.loads((tmp_path / "ray" / name / "tunebert_pipeline.json").read_text())["state"]
        assert state["phase"] == "done"
        _, parents, trials = _runs(tmp_path, name)
        assert [p.info.status for p in parents] == ["FINISHED"]
        assert len(trials) == 2 and all(r.info.status == "FINISHED" for r in trials)
