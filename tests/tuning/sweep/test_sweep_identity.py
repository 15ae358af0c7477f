"""A sweep stays one sweep across resumes: the MLflow store it started with, its own experiment,
its data (by fingerprint), its folders from any working directory; and trials are not queued for
resources no node has. Real Ray, real MLflow stores."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from trainables.errors import ConfigError
from tuning.config import SWEEP_FILE, SweepConfig, load_saved_sweep
from tuning.sweep.runner import check_trial_resources, resume_sweep, run_sweep

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[3]


def _parents(uri: str, name: str) -> list:
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        return []
    return client.search_runs([experiment.experiment_id], "tags.`tunebert.kind` = 'sweep'")


def test_resume_logs_to_the_store_the_sweep_started_with(ray_local, tiny_model_dir, tmp_path, monkeypatch):
    """MLFLOW_TRACKING_URI set when the sweep ran and unset at resume: the resumed sweep goes on
    in its own store (one parent run there), not in the default store under --storage."""
    store = f"sqlite:///{tmp_path / 'team.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    cfg = SweepConfig(name="envstore", model=tiny_model_dir, max_length=64, epochs=1, num_trials=1,
                      storage=str(tmp_path / "runs"), scheduler="none")
    run_sweep(cfg)
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    outcome = resume_sweep("envstore", str(tmp_path / "runs"))
    assert outcome.tracking_uri == store
    assert not (tmp_path / "runs" / "mlflow.db").exists()  # no second parent run elsewhere
    [parent] = _parents(store, "envstore")
    assert parent.info.status == "FINISHED"
    # the experiment carries the sweep's uid, as saved with its settings
    saved = load_saved_sweep("envstore", str(tmp_path / "runs"))
    experiment = MlflowClient(store).get_experiment_by_name("envstore")
    assert saved.uid and experiment.tags["tunebert.sweep_uid"] == saved.uid
    assert saved.tracking_uri == store


def _demo_copy(folder: Path) -> Path:
    from trainables.data import DEMO_DIR

    folder.mkdir(parents=True)
    for split in ("train", "validation", "test"):
        (folder / f"{split}.jsonl").write_text((DEMO_DIR / f"{split}.jsonl").read_text())
    return folder


def test_resume_from_another_directory_and_refusal_of_changed_data(tiny_model_dir, tmp_path):
    """Storage, data and space typed as relative paths; resume runs from elsewhere; data whose
    contents changed since is refused, with the reason."""
    start_dir, other_dir = tmp_path / "project", tmp_path / "elsewhere"
    data = _demo_copy(start_dir / "intents")
    other_dir.mkdir()
    (start_dir / "space.yaml").write_text("lr: {low: 1.0e-4, high: 1.0e-3, log: true}\n")
    sweep = subprocess.run(
        [sys.executable, "-m", "tuning.cli", "sweep", "--name", "rel", "--model", tiny_model_dir,
         "--max-length", "64", "--trials", "1", "--epochs", "1", "--storage", "runs", "--data", "intents",
         "--space", "space.yaml"], cwd=start_dir, capture_output=True, text=True, timeout=600,
        env={**os.environ, "PYTHONPATH": str(REPO)})
    assert sweep.returncode == 0, sweep.stderr[-3000:]
    saved = json.loads((start_dir / "runs" / "ray" / "rel" / SWEEP_FILE).read_text())
    assert saved["storage"] == str(start_dir / "runs")
    assert saved["data"]["source"] == str(data) and saved["space_file"] == str(start_dir / "space.yaml")
    assert saved["data_fingerprint"].startswith("sha256:")

    def resume():
        return subprocess.run([sys.executable, "-m", "tuning.cli", "resume", "rel", "--storage",
                               str(start_dir / "runs")], cwd=other_dir, capture_output=True, text=True,
                              timeout=600, env={**os.environ, "PYTHONPATH": str(REPO)})

    lines = (data / "validation.jsonl").read_text().splitlines()
    (data / "validation.jsonl").write_text("\n".join(lines[1:]) + "\n")  # one row fewer
    refused = resume()
    assert refused.returncode == 2, refused.stderr[-3000:]
    assert "the data of sweep 'rel' changed since it started" in refused.stderr
    assert "Put the original files back to resume" in refused.stderr
    assert "Traceback" not in refused.stderr
    (data / "validation.jsonl").write_text("\n".join(lines) + "\n")
    resumed = resume()
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert [p.info.status for p in _parents(f"sqlite:///{start_dir / 'runs' / 'mlflow.db'}", "rel")] == ["FINISHED"]


def test_trials_no_node_can_run_are_refused_before_they_are_queued(ray_local, tmp_path):
    """Against the running Ray (2 CPUs, no GPU): what a trial needs must fit on one node."""
    def cfg(**kw):
        return SweepConfig(name="res", storage=str(tmp_path), **kw)

    check_trial_resources(cfg(cpus_per_trial=2))
    with pytest.raises(ConfigError, match=r"no node of the local Ray can run a trial: one trial needs "
                                          r"3 CPUs, 0 GPUs, and the largest of its 1 node\(s\) has 2 CPUs"):
        check_trial_resources(cfg(cpus_per_trial=3))
    if not ray_local.cluster_resources().get("GPU"):
        with pytest.raises(ConfigError, match="one trial needs 1 CPUs, 1 GPUs.*Lower --cpus-per-trial / --gpus-per-trial"):
            check_trial_resources(cfg(gpus_per_trial=1))
    # on a cluster the message names the address and the way to wait for an autoscaler
    start = time.time()
    with pytest.raises(ConfigError, match=r"--address auto .*pass --wait-for-nodes"):
        check_trial_resources(cfg(cpus_per_trial=3, address="auto"), node_wait_s=3)
    assert time.time() - start >= 3  # nodes still joining got their time
    check_trial_resources(cfg(cpus_per_trial=3, address="auto", wait_for_nodes=True))
