"""Soak: a sweep whose driver is SIGKILLed (its whole process group) at >= 10 random moments and
resumed each time keeps a whole MLflow record: exactly N trial runs and one parent, none RUNNING,
every metric step logged once and contiguous, Optuna's study and the best config consistent with
MLflow. Once with the default SQLite store, once with a real `mlflow server` on 127.0.0.1 that is
stopped and restarted in the middle.

The kill moments are drawn from ``TUNEBERT_SOAK_SEED`` (printed with every failure): set it to
replay a failing schedule. While trials run, each kill waits for an event seen in the MLflow
store (a trial run created, a metric logged, a run finished), for one seen in the sweep folder
(a checkpoint folder appearing, which Ray then fills file by file; a checkpoint folder removed or
shrunk by pruning) or for a random delay into a driver's start-up and restore, then kills at once
or a moment later. No trial may end FAILED or hit a CheckpointError on the way. While the last trial runs,
the kill waits for it to finish (the driver then flushes and records the sweep's end); once
every trial finished, kills land at random moments of a resume of the finished sweep. A driver
that exits by itself first is resumed without counting a kill.
"""

from __future__ import annotations

import json
import math
import os
import pickle
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.entities import ViewType
from mlflow.tracking import MlflowClient

from tuning import tracking

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[3]
SEED = int(os.environ.get("TUNEBERT_SOAK_SEED", "20261124"))
TRIALS, EPOCHS, KILLS = 8, 2, 10
REACHABLE_AGAIN = "MLflow reachable again"  # tuning.tracking's message once a queue drained
METRICS = ("train_loss", "val_loss", "val_accuracy", "val_macro_f1", "lr", "samples_per_s")
# moments while trials run, drawn at random; then "end" (once the last trial finished) and
# "restore" (a random moment of a resume of the finished sweep)
DURING = ("startup", "trial-created", "metric", "trial-finished", "checkpoint-written", "pruned")
WEIGHTS = (2, 1, 1, 2, 2, 2)


class Store:
    """What the driver has written, read straight from the SQLite file behind the store, and the
    trials' checkpoint folders in the sweep folder (cheap enough to poll twenty times a second
    without disturbing the driver)."""

    def __init__(self, db: Path, sweep_dir: Path):
        self.db, self.sweep_dir = db, sweep_dir

    def snapshot(self) -> dict:
        return {**self._mlflow(), **self._checkpoints()}

    def _checkpoints(self) -> dict:
        """Checkpoint folders by path with their state.pt size (pruning shrinks it), and how
        many folders are being removed (tuning.sweep.pruning renames them first)."""
        folders, removing = {}, 0
        for folder in self.sweep_dir.glob("*/*"):
            if folder.name.startswith("checkpoint_"):
                try:
                    folders[str(folder)] = (folder / "state.pt").stat().st_size
                except OSError:
                    folders[str(folder)] = None
            elif folder.name.startswith(".removing-"):
                removing += 1
        return {"checkpoints": folders, "removing": removing}

    def _mlflow(self) -> dict:
        if not self.db.is_file():
            return {"runs": {}, "metrics": 0}
        try:
            con = sqlite3.connect(f"file:{self.db}?mode=ro", uri=True, timeout=2)
            try:
                rows = con.execute(
                    "select r.run_uuid, r.status, r.lifecycle_stage from runs r join tags t on "
                    "t.run_uuid = r.run_uuid and t.key = 'tunebert.kind' and t.value = 'trial'").fetchall()
                metrics = con.execute(
                    "select count(*) from metrics m join tags t on t.run_uuid = m.run_uuid and "
                    "t.key = 'tunebert.kind' and t.value = 'trial'").fetchone()[0]
            finally:
                con.close()
        except sqlite3.Error:  # no tables yet, or a writer holds the lock: ask again later
            return {"runs": {}, "metrics": 0}
        return {"runs": {run: status for run, status, stage in rows if stage == "active"},
                "metrics": metrics}


def _trigger(kind: str, before: dict, now: dict) -> bool:
    if kind == "trial-created":
        return bool(set(now["runs"]) - set(before["runs"]))
    if kind == "metric":
        return now["metrics"] > before["metrics"]
    if kind == "trial-finished":
        done_before = {r for r, s in before["runs"].items() if s == "FINISHED"}
        return bool({r for r, s in now["runs"].items() if s == "FINISHED"} - done_before)
    if kind == "end":
        return sum(s == "FINISHED" for s in now["runs"].values()) >= TRIALS
    if kind == "checkpoint-written":  # a new folder: Ray is copying the checkpoint's files into it
        return bool(set(now["checkpoints"]) - set(before["checkpoints"]))
    if kind == "pruned":  # a folder removed (or being removed), or a state.pt shrunk
        kept = set(before["checkpoints"]) & set(now["checkpoints"])
        return (bool(set(before["checkpoints"]) - set(now["checkpoints"])) or now["removing"] > 0
                or any(None not in (before["checkpoints"][f], now["checkpoints"][f])
                       and now["checkpoints"][f] < before["checkpoints"][f] for f in kept))
    raise ValueError(kind)


def _summary(snapshot: dict) -> str:
    statuses = sorted(snapshot["runs"].values())
    return " ".join(f"{statuses.count(s)} {s}" for s in sorted(set(statuses))) or "none"


def _driver(args: list[str], log: Path) -> subprocess.Popen:
    """`tunebert ARGS` in its own process group (so the whole group can be SIGKILLed)."""
    with open(log, "ab") as out:  # the child keeps its own descriptor
        return subprocess.Popen([sys.executable, "-m", "tuning.cli", *args], cwd=REPO, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def _wait_for(kind: str, store: Store, proc: subprocess.Popen, rng: random.Random) -> bool:
    """Wait for the moment ``kind`` names; False if the driver exited first."""
    before, began = store.snapshot(), time.time()
    if kind in ("startup", "restore", "after-outage"):
        delay = rng.uniform(0.0, 1.0) if kind == "after-outage" else rng.uniform(0.5, 12.0)
        while time.time() - began < delay and proc.poll() is None:
            time.sleep(0.05)
        return proc.poll() is None
    # on the disk's events, at once or within the write (a tiny checkpoint is copied in ms)
    lag = rng.choice([0.0, 0.0, rng.uniform(0.0, 0.05 if kind in ("checkpoint-written", "pruned") else 1.0)])
    while time.time() - began < 60 and proc.poll() is None:
        if _trigger(kind, before, store.snapshot()):
            time.sleep(lag)
            return proc.poll() is None
        time.sleep(0.05)
    return proc.poll() is None  # no such moment within a minute: kill where it stands


def soak(tmp_path: Path, tiny_model_dir: str, db: Path, *, server=None, seed: int = SEED) -> list[str]:
    """Run the sweep to the end through KILLS SIGKILLs of its driver, then one last resume.
    With ``server`` (tests/conftest.py MlflowServer), the server is stopped and restarted in the
    middle, while a driver trains if trials are left; that driver is killed only once the queued
    writes had their retry period to arrive (a driver killed while the store is down loses its
    queue: not guaranteed, see docs/reliability.md)."""
    rng = random.Random(seed)
    store = Store(db, tmp_path / "ray" / "soak")
    common = ["--storage", str(tmp_path)] + (["--tracking-uri", server.uri] if server else [])
    space = tmp_path / "space.yaml"
    space.write_text("batch_size: 4\n")  # ~1 s epochs on the demo data: moments to kill in
    first = ["sweep", "--name", "soak", "--model", tiny_model_dir, "--max-length", "64",
             "--trials", str(TRIALS), "--epochs", str(EPOCHS), "--scheduler", "none",
             "--max-concurrent", "2", "--seed", "0", "--space", str(space),
             # more checkpoints kept than epochs: Ray saves its experiment state on its own
             # period (~10 s) only, so MLflow runs ahead of it as it does with real epochs
             "--keep-checkpoints", str(EPOCHS + 1), *common]
    log_file = tmp_path / "drivers.log"
    events, kills, cycle, start = [], 0, 0, time.time()

    def note(text: str) -> None:
        events.append(f"{time.time() - start:6.1f}s {text}")

    done_kinds: list[str] = []
    proc = _driver(first, log_file)
    outage_due = server is not None
    while kills < KILLS:
        finished = sum(s == "FINISHED" for s in store.snapshot()["runs"].values())
        if outage_due and cycle >= 1 and (finished <= TRIALS // 2 or cycle >= KILLS // 2):
            outage_due = False  # in the middle, while trials train if they still do
            _wait_for("metric", store, proc, rng)
            delivered = log_file.read_text().count(REACHABLE_AGAIN)
            server.stop()
            note("mlflow server stopped")
            time.sleep(rng.uniform(2.0, 6.0))
            server.start()
            note("mlflow server started again")
            # the writer's timer delivers the queue within RETRY_AFTER_S; only then may a kill
            # come (writes still queued when a driver dies are lost: not guaranteed)
            began = time.time()
            while (time.time() - began < tracking.RETRY_AFTER_S + 30 and proc.poll() is None
                   and log_file.read_text().count(REACHABLE_AGAIN) == delivered):
                time.sleep(0.1)
            note("queued writes delivered" if proc.poll() is None else "driver ended meanwhile")
            kind = "after-outage"  # kill it now, while its trials train on
        elif finished >= TRIALS:
            kind = "restore"  # every trial finished already: kill a resume of a finished sweep
        elif finished == TRIALS - 1 and "end" not in done_kinds:
            kind = "end"  # the last trial runs: kill once it finished, as the sweep records its end
        else:
            kind = rng.choices(DURING, weights=WEIGHTS)[0]
        done_kinds.append(kind)
        fired = _wait_for(kind, store, proc, rng)
        alive = proc.poll() is None
        _kill_group(proc)
        kills += alive
        cycle += 1
        note(f"{kind:14s} {'killed' if alive else f'exited by itself (status {proc.returncode})'}"
             f"{'' if fired or not alive else ' (moment not reached)'}; trial runs: "
             f"{_summary(store.snapshot())}")
        proc = _driver(["resume", "soak", *common], log_file)
    rc = proc.wait(timeout=300)
    note(f"final resume: exit status {rc}")
    (tmp_path / "soak-events.txt").write_text("\n".join(events))
    assert rc == 0, f"seed {seed}: the last resume failed:\n" + "\n".join(events) + \
        "\n" + log_file.read_text()[-4000:]
    logged = log_file.read_text()
    # a torn checkpoint is fallen back from (a warning), never a trial's error, not even retried
    assert "CheckpointError" not in logged, f"seed {seed}:\n" + "\n".join(events) + "\n" + \
        logged[max(0, logged.find("CheckpointError") - 3000):][:6000]
    return events


def _ray_trial_statuses(sweep_dir: Path) -> dict[str, str]:
    state = json.loads(sorted(sweep_dir.glob("experiment_state-*.json"))[-1].read_text())
    trials = (json.loads(trial) for trial, _ in state["trial_data"])
    return {trial["trial_id"]: trial["status"] for trial in trials}


def check_record(uri: str, sweep_dir: Path, events: list[str], seed: int = SEED) -> None:
    import optuna

    from tuning.tracking.best import best_run

    where = f"seed {seed}; events:\n" + "\n".join(events)
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("soak")
    runs = client.search_runs([experiment.experiment_id], "tags.`tunebert.kind` = 'trial'", max_results=1000)
    parents = client.search_runs([experiment.experiment_id], "tags.`tunebert.kind` = 'sweep'")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED", where
    assert len(runs) == TRIALS, f"{len(runs)} trial runs for {TRIALS} trials; {where}"
    assert all(r.info.status == "FINISHED" for r in runs), ([r.info.status for r in runs], where)
    trial_ids = {r.data.tags["tunebert.trial_id"] for r in runs}
    ray_statuses = _ray_trial_statuses(sweep_dir)
    assert trial_ids == set(ray_statuses), where  # the same trials as Ray's own record
    assert set(ray_statuses.values()) == {"TERMINATED"}, (ray_statuses, where)  # none ERROR
    deleted = client.search_runs([experiment.experiment_id], "tags.`tunebert.kind` = 'trial'",
                                 run_view_type=ViewType.DELETED_ONLY, max_results=1000)
    assert all(r.data.tags.get("tunebert.orphan") == "true" and r.info.status != "RUNNING"
               for r in deleted), where  # only orphans are deleted, all of them ended
    events.append(f"orphan runs deleted: {len(deleted)}")
    for run in runs:
        for key in METRICS:
            steps = [m.step for m in client.get_metric_history(run.info.run_id, key)]
            assert sorted(steps) == list(range(1, EPOCHS + 1)), (run.info.run_id, key, steps, where)
    # Optuna: one COMPLETE trial per run, the same configs, the same best score
    state = pickle.loads(sorted(sweep_dir.glob("searcher-state-*.pkl"))[-1].read_bytes())
    study_trials = state["_ot_study"].trials
    assert len(study_trials) == TRIALS, (len(study_trials), where)
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in study_trials), where
    configs = [json.loads(r.data.tags["tunebert.config"]) for r in runs]
    assert sorted(t.params["lr"] for t in study_trials) == sorted(c["lr"] for c in configs), where
    best = best_run("soak", tracking_uri=uri, storage=str(sweep_dir.parent.parent))
    best_value = max(t.value for t in study_trials)
    assert math.isclose(best.score("val_accuracy"), best_value, rel_tol=1e-9), where
    assert any(t.value == best_value and t.params["lr"] == best.config["lr"] for t in study_trials), where


def test_soak_sigkill_and_resume_keeps_one_whole_record(tiny_model_dir, tmp_path):
    events = soak(tmp_path, tiny_model_dir, tmp_path / "mlflow.db")
    try:
        check_record(f"sqlite:///{tmp_path / 'mlflow.db'}", tmp_path / "ray" / "soak", events)
    finally:
        print("\n".join(events))


def test_soak_with_an_mlflow_server_stopped_and_restarted(tiny_model_dir, tmp_path, mlflow_server):
    events = soak(tmp_path, tiny_model_dir, mlflow_server.db, server=mlflow_server)
    try:
        check_record(mlflow_server.uri, tmp_path / "ray" / "soak", events)
    finally:
        print("\n".join(events))
