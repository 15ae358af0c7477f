"""The `tunebert` command: bad input gives one clear message and exit 2 before Ray starts; a real
sweep through the CLI; best/export; train with a test-split evaluation; resume after SIGKILL."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tuning.cli import main

REPO = Path(__file__).resolve().parents[2]


def cli(*args, cwd=None, timeout=600, env=None):
    return subprocess.run([sys.executable, "-m", "tuning.cli", *args], cwd=cwd or REPO,
                          capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


@pytest.mark.parametrize("args, message", [
    (["sweep", "--data", "/no/such/folder"], "data folder '/no/such/folder' does not exist"),
    (["sweep", "--trials", "0"], "`num_trials` must be an integer >= 1"),
    (["sweep", "--warm-start", "bert"], "unknown preset 'bert'"),
    (["sweep", "--name", "bad name!"], "sweep name 'bad name!' is not allowed"),
    (["sweep", "--epochs", "2", "--grace-period", "3"], "`grace_period` (3) cannot exceed `epochs` (2)"),
    (["sweep", "--space", "/no/space.yaml"], "search-space file '/no/space.yaml' does not exist"),
    (["sweep", "--model", "./no-such-model-dir"], "no such folder"),
    (["sweep", "--label-column", "intent"], "no label column 'intent'"),
    (["resume", "never-ran"], "no sweep named 'never-ran'"),
    (["best", "never-ran"], "no MLflow store at"),
    (["train", "--preset", "nope"], "unknown preset 'nope'"),
    (["train", "--config", "/no/config.yaml"], "no such file"),
    (["train", "--preset", "baseline", "--set", "lr=-1"], "`lr` must lie in"),
])
def test_bad_input_exits_2_with_a_message(args, message, tmp_path, capsys):
    rc = main([*args, "--storage", str(tmp_path)] if args[0] != "presets" else args)
    err = capsys.readouterr().err
    assert rc == 2
    assert message in err
    assert err.startswith(f"tunebert {args[0]}: error:")
    assert not (tmp_path / "ray").exists()  # nothing was started


def test_bad_space_file_from_the_shell_has_no_traceback(tmp_path):
    space = tmp_path / "s.yaml"
    space.write_text("lr: {low: 0.1, high: 0.01}\n")
    proc = cli("sweep", "--space", str(space), "--storage", str(tmp_path))
    assert proc.returncode == 2
    assert "`lr`: `low <= high` must hold, but got (low=0.1, high=0.01)" in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    assert "Ray" not in proc.stdout


def test_space_and_presets_print_yaml(capsys):
    assert main(["space"]) == 0
    space = yaml.safe_load(capsys.readouterr().out)
    assert space["lr"] == {"low": 1e-5, "high": 3e-4, "log": True}
    assert main(["presets"]) == 0
    assert "llrd_warmup" in capsys.readouterr().out


@pytest.mark.slow
def test_cli_sweep_best_export_and_train(tiny_model_dir, tmp_path):
    proc = cli("sweep", "--smoke-test", "--name", "cli", "--model", tiny_model_dir, "--storage",
               str(tmp_path), "--max-length", "64")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "best config:" in proc.stdout and "mlflow ui --backend-store-uri" in proc.stdout
    # best as JSON equals the Python API's answer
    from tuning.best import best_config

    proc = cli("best", "cli", "--format", "json", "--storage", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == best_config("cli", storage=str(tmp_path))
    out = tmp_path / "best.yaml"
    assert cli("best", "cli", "-o", str(out), "--storage", str(tmp_path)).returncode == 0
    # train the exported config; the test split is evaluated and logged
    proc = cli("train", "--config", str(out), "--set", "epochs=1", "--storage", str(tmp_path),
               "--output-dir", str(tmp_path / "model"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "test_accuracy" in proc.stdout
    assert (tmp_path / "model" / "state.pt").is_file()
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.get_experiment_by_name("tunebert-train")
    run = client.search_runs([exp.experiment_id])[0]
    assert run.info.status == "FINISHED" and "test_accuracy" in run.data.metrics


def _children(tmp_path, name):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.get_experiment_by_name(name)
    if exp is None:
        return client, []
    runs = client.search_runs([exp.experiment_id], "tags.`tunebert.kind` = 'trial'")
    return client, runs


@pytest.mark.slow
def test_resume_after_the_driver_is_killed(tiny_model_dir, massive_dir, tmp_path):
    """SIGKILL the sweep mid-way; `tunebert resume` finishes exactly the requested trials, keeps
    finished ones, continues the rest from checkpoints, one MLflow run per trial, none RUNNING."""
    args = [sys.executable, "-m", "tuning.cli", "sweep", "--name", "killed", "--model", tiny_model_dir,
            "--storage", str(tmp_path), "--trials", "4", "--epochs", "3", "--scheduler", "none",
            "--max-concurrent", "1", "--max-length", "64", "--data", str(massive_dir)]
    # MASSIVE makes an epoch of the tiny model take seconds: time to kill a trial mid-way
    proc = subprocess.Popen(args, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.time() + 300
    try:
        while time.time() < deadline:
            time.sleep(0.5)
            _, runs = _children(tmp_path, "killed")
            finished = [r for r in runs if r.info.status == "FINISHED"]
            running = [r for r in runs if r.info.status == "RUNNING" and r.data.metrics]
            if finished and running:
                break
        else:
            pytest.fail("sweep never reached a finished and a running trial")
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    client, before = _children(tmp_path, "killed")
    done_before = {r.data.tags["tunebert.trial_id"]: r.info.run_id for r in before
                   if r.info.status == "FINISHED"}
    proc = cli("resume", "killed", "--storage", str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    client, after = _children(tmp_path, "killed")
    assert len(after) == 4  # exactly the requested trials, one run each
    assert len({r.data.tags["tunebert.trial_id"] for r in after}) == 4
    assert all(r.info.status == "FINISHED" for r in after)
    for r in after:
        steps = [m.step for m in client.get_metric_history(r.info.run_id, "val_accuracy")]
        assert sorted(steps) == [1, 2, 3], steps  # nothing lost, nothing logged twice
    for trial_id, run_id in done_before.items():  # finished trials kept their run and were not re-run
        assert any(r.info.run_id == run_id for r in after)
        result_files = list((tmp_path / "ray" / "killed").glob(f"*{trial_id}*/result.json"))
        assert len(result_files[0].read_text().splitlines()) == 3
    # the searcher kept its history: still Optuna, with all four trials
    import pickle

    import optuna

    state_files = sorted((tmp_path / "ray" / "killed").glob("searcher-state-*.pkl"))
    state = pickle.loads(state_files[-1].read_bytes())
    assert isinstance(state["_sampler"], optuna.samplers.TPESampler)
    trials = state["_ot_study"].trials
    assert len(trials) == 4
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    by_lr = sorted(t.params["lr"] for t in trials)
    assert by_lr == sorted(json.loads(r.data.tags["tunebert.config"])["lr"] for r in after)
