"""Reliability: faults are caused for real on this machine (loopback only) and nothing recorded
is lost or counted twice. Slow; run by .ci/run like everything else."""

from __future__ import annotations

import json
import os
import pickle
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tuning.tracking.best import best_run
from tuning.config import SweepConfig
from tuning.sweep.runner import run_sweep

pytestmark = pytest.mark.slow


def _children(uri, name):
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(name)
    if exp is None:
        return client, []
    return client, client.search_runs([exp.experiment_id], "tags.`tunebert.kind` = 'trial'",
                                      max_results=1000)


def _steps(client, run_id, key="val_accuracy"):
    return sorted(m.step for m in client.get_metric_history(run_id, key))


def _sweep(tiny_model_dir, tmp_path, name, **kw):
    settings = dict(name=name, model=tiny_model_dir, max_length=64, epochs=3, num_trials=2,
                    storage=str(tmp_path), scheduler="none", seed=0)
    settings.update(kw)
    return SweepConfig(**settings)


def _searcher_trials(cfg):
    state = pickle.loads(sorted(cfg.sweep_dir.glob("searcher-state-*.pkl"))[-1].read_bytes())
    return state["_ot_study"].trials


# 1 ---------------------------------------------------------------------------------------
def test_crashed_trial_is_retried_from_its_checkpoint(ray_local, tiny_model_dir, tmp_path, fail_marker):
    fail_marker.write_text("2")  # the first trial to start epoch 2 raises, once
    cfg = _sweep(tiny_model_dir, tmp_path, "crash", max_failures=1, max_concurrent=2)
    outcome = run_sweep(cfg)
    client, runs = _children(cfg.resolved_tracking_uri(), "crash")
    assert not fail_marker.exists(), "the fault was never injected"
    assert len(runs) == 2 and outcome.counts == {"FINISHED": 2, "FAILED": 0, "KILLED": 0}
    for run in runs:  # one run per trial, full history, no epoch logged twice
        assert _steps(client, run.info.run_id) == [1, 2, 3]
        assert _steps(client, run.info.run_id, "train_loss") == [1, 2, 3]
    errors = list(cfg.sweep_dir.glob("*/error.txt"))
    assert len(errors) == 1 and "injected failure at point 2" in errors[0].read_text()
    # the retried trial resumed after epoch 1 rather than starting over
    result_lines = [json.loads(l) for l in (errors[0].parent / "result.json").read_text().splitlines()]
    assert [r["epoch"] for r in result_lines] == [1, 2, 3]


# 3 ---------------------------------------------------------------------------------------
def test_lost_worker_node_trial_continues_on_the_other_node(tiny_model_dir, massive_dir, tmp_path,
                                                          ray_runtime_env):
    import ray
    from ray.cluster_utils import Cluster

    from trainables.data import DataConfig

    ray.shutdown()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    worker = cluster.add_node(num_cpus=1)
    ray.init(address=cluster.address, runtime_env=ray_runtime_env, log_to_driver=False)
    cfg = _sweep(tiny_model_dir, tmp_path, "nodeloss", max_failures=2, max_concurrent=2,
                 data=DataConfig(str(massive_dir)))
    uri = cfg.resolved_tracking_uri()
    removed = {}

    def kill_worker_when_a_trial_runs_there():
        deadline = time.time() + 240
        while time.time() < deadline and not removed:
            time.sleep(0.5)
            try:
                client, runs = _children(uri, "nodeloss")
            except Exception:
                continue
            for run in runs:
                if run.data.tags.get("tunebert.node_id") == worker.node_id and run.info.status == "RUNNING":
                    removed["run_id"] = run.info.run_id
                    removed["steps_before"] = _steps(client, run.info.run_id)
                    cluster.remove_node(worker, allow_graceful=False)
                    return

    watcher = threading.Thread(target=kill_worker_when_a_trial_runs_there, daemon=True)
    watcher.start()
    try:
        outcome = run_sweep(cfg)
    finally:
        watcher.join(timeout=5)
        ray.shutdown()
        cluster.shutdown()
    assert removed, "no trial ran on the worker node"
    client, runs = _children(uri, "nodeloss")
    run = client.get_run(removed["run_id"])
    assert run.info.status == "FINISHED"
    assert _steps(client, run.info.run_id) == [1, 2, 3]  # continued, not restarted or doubled
    assert run.data.tags["tunebert.node_id"] != worker.node_id  # finished elsewhere
    assert outcome.counts["FINISHED"] == 2


# 4 ---------------------------------------------------------------------------------------
def test_nonfinite_loss_fails_the_trial_for_optuna_and_best(ray_local, tiny_model_dir, tmp_path):
    space = tmp_path / "space.yaml"
    space.write_text("optimizer: sgd\nmomentum: 0.99\ngrad_clip: 0.0\nhead_lr_multiplier: 1000.0\n"
                     "lr: {choices: [10.0, 1.0e-3]}\n")
    cfg = _sweep(tiny_model_dir, tmp_path, "nan", num_trials=4, space_file=str(space),
                 max_failures=2, max_concurrent=1, seed=5)
    run_sweep(cfg)
    client, runs = _children(cfg.resolved_tracking_uri(), "nan")
    diverged = [r for r in runs if json.loads(r.data.tags["tunebert.config"])["lr"] == 10.0]
    assert diverged, "the sampler never picked lr=10"
    for r in diverged:
        assert r.info.status == "FAILED"
        assert "NonFiniteLossError" in r.data.tags["tunebert.error"]
    best = best_run("nan", storage=str(tmp_path))
    assert best.config["lr"] == 1e-3
    import optuna

    states = {t.params["lr"]: t.state for t in _searcher_trials(cfg)}
    assert states[10.0] == optuna.trial.TrialState.FAIL


# 5 ---------------------------------------------------------------------------------------
def test_trial_failing_after_a_good_metric_is_never_best(ray_local, tiny_model_dir, tmp_path, fail_marker):
    # trial 1 (warm-started from a config file, lr 3e-3) learns; the others, sampled from
    # lr ~1e-8, barely move. It raises after reporting its last epoch: FAILED, so never best,
    # although its metric is the highest.
    space = tmp_path / "space.yaml"
    space.write_text("lr: {low: 1.0e-8, high: 2.0e-8, log: true}\n")
    good = tmp_path / "good.yaml"
    good.write_text("lr: 3.0e-3\nhead: linear\npooling: mean\nclassifier_dropout: 0.0\n"
                    "scheduler: constant\nwarmup_ratio: 0.0\nbatch_size: 16\npreset: good\n")
    fail_marker.write_text("4")  # point epochs+1 = after the last report
    cfg = _sweep(tiny_model_dir, tmp_path, "latefail", epochs=3, num_trials=3, space_file=str(space),
                 warm_start=(str(good),), max_failures=0, max_concurrent=1)
    outcome = run_sweep(cfg)
    client, runs = _children(cfg.resolved_tracking_uri(), "latefail")
    failed = [r for r in runs if r.info.status == "FAILED"]
    assert len(failed) == 1 and failed[0].data.tags.get("tunebert.preset") == "good"
    assert "injected failure" in failed[0].data.tags["tunebert.error"]
    others = [r for r in runs if r.info.status == "FINISHED"]
    assert len(others) == 2  # the sweep went on
    assert failed[0].data.metrics["val_accuracy"] > max(r.data.metrics["val_accuracy"] for r in others)
    assert best_run("latefail", storage=str(tmp_path)).run_id != failed[0].info.run_id
    assert outcome.best.run_id != failed[0].info.run_id


# 6 ---------------------------------------------------------------------------------------
def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_mlflow(tmp_path, port):
    mlflow_bin = Path(sys.executable).parent / "mlflow"
    proc = subprocess.Popen(
        [str(mlflow_bin), "server", "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
         "--artifacts-destination", str(tmp_path / "served-artifacts"), "--host", "127.0.0.1",
         "--port", str(port), "--workers", "1"],
        cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    import urllib.request

    deadline = time.time() + 90
    while time.time() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1)
            return proc
        except Exception:
            time.sleep(0.5)
    proc.kill()
    raise RuntimeError("mlflow server did not start")


def _stop(proc):
    import signal

    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def test_mlflow_server_killed_mid_sweep_and_restarted(ray_local, tiny_model_dir, massive_dir, tmp_path):
    from trainables.data import DataConfig

    port = _free_port()
    uri = f"http://127.0.0.1:{port}"
    server = {"proc": _start_mlflow(tmp_path, port)}
    cfg = _sweep(tiny_model_dir, tmp_path, "serverdown", tracking_uri=uri, max_concurrent=2,
                 data=DataConfig(str(massive_dir)))
    events = {}

    def kill_then_restart():
        deadline = time.time() + 240
        while time.time() < deadline:
            time.sleep(0.5)
            try:
                client, runs = _children(uri, "serverdown")
            except Exception:
                continue
            if any(r.data.metrics for r in runs):
                _stop(server["proc"])
                events["killed"] = time.time()
                time.sleep(15)  # epochs finish and are reported while the server is down
                server["proc"] = _start_mlflow(tmp_path, port)
                events["restarted"] = time.time()
                return

    watcher = threading.Thread(target=kill_then_restart, daemon=True)
    watcher.start()
    try:
        outcome = run_sweep(cfg)
        watcher.join(timeout=120)
        assert "restarted" in events
        client, runs = _children(uri, "serverdown")
        assert len(runs) == 2 and all(r.info.status == "FINISHED" for r in runs)
        for run in runs:
            assert _steps(client, run.info.run_id) == [1, 2, 3]  # the gap was filled
        parent = client.search_runs([client.get_experiment_by_name("serverdown").experiment_id],
                                    "tags.`tunebert.kind` = 'sweep'")[0]
        assert parent.info.status == "FINISHED"
        assert parent.data.metrics["mlflow_delayed_writes"] > 0
        assert outcome.best is not None
    finally:
        _stop(server["proc"])


def test_mlflow_server_that_never_returns_does_not_stop_training(ray_local, tiny_model_dir, tmp_path,
                                                                monkeypatch):
    import tuning.sweep.runner as runner

    monkeypatch.setattr(runner, "TRACKING_GRACE_S", 3.0)
    port = _free_port()
    uri = f"http://127.0.0.1:{port}"
    server = _start_mlflow(tmp_path, port)
    cfg = _sweep(tiny_model_dir, tmp_path, "serverdead", tracking_uri=uri, max_concurrent=1,
                 epochs=2)

    from tuning import tracking

    original = tracking.start_sweep_run

    def start_then_kill(*args, **kwargs):  # the server dies once the sweep run exists
        ids = original(*args, **kwargs)
        _stop(server)
        return ids

    monkeypatch.setattr(tracking, "start_sweep_run", start_then_kill)
    start = time.time()
    outcome = run_sweep(cfg)
    assert time.time() - start < 120  # waiting on the dead server is bounded
    assert outcome.counts == {"FINISHED": 2, "FAILED": 0, "KILLED": 0}  # from Ray's own records
    results = list(cfg.sweep_dir.glob("*/result.json"))
    assert len(results) == 2 and all(len(r.read_text().splitlines()) == 2 for r in results)


# 7 ---------------------------------------------------------------------------------------
def test_many_concurrent_trials_on_sqlite_lose_nothing(ray_local, tiny_model_dir, tmp_path):
    cfg = _sweep(tiny_model_dir, tmp_path, "crowd", num_trials=8, epochs=3, cpus_per_trial=0.25,
                 max_concurrent=8)
    run_sweep(cfg)
    client, runs = _children(cfg.resolved_tracking_uri(), "crowd")
    assert len(runs) == 8
    for run in runs:
        assert run.info.status == "FINISHED"
        for key in ("train_loss", "val_loss", "val_accuracy", "val_macro_f1", "lr", "samples_per_s"):
            assert _steps(client, run.info.run_id, key) == [1, 2, 3]


# 9 ---------------------------------------------------------------------------------------
def test_secrets_never_reach_params_or_tags(tmp_path):
    from tuning import tracking

    uri = f"sqlite:///{tmp_path / 'm.db'}"
    settings = {"tracking_uri": "postgresql://alice:hunter2@127.0.0.1:5432/mlflow",
                "api_token": "tok-123", "data": {"source": "demo"}}
    _, run_id = tracking.start_sweep_run(uri, "secrets", settings, None)
    run = MlflowClient(uri).get_run(run_id)
    values = list(run.data.params.values()) + list(run.data.tags.values())
    assert not any("hunter2" in v or "tok-123" in v for v in values)
    assert run.data.params["tracking_uri"] == "postgresql://alice:***@127.0.0.1:5432/mlflow"
    assert "api_token" not in run.data.params


def test_remote_cluster_with_local_store_is_refused(tmp_path):
    from trainables.errors import ConfigError
    from tuning.sweep.runner import prepare

    cfg = SweepConfig(name="remote", address="ray://10.1.2.3:10001", storage=str(tmp_path))
    with pytest.raises(ConfigError, match="MLflow server every node can reach"):
        prepare(cfg)


@pytest.mark.parametrize("name", ["../escape", "a/b", "/abs", ".hidden", "x" * 101])
def test_sweep_names_cannot_leave_the_storage_folder(name, tmp_path):
    from trainables.errors import ConfigError

    with pytest.raises(ConfigError, match="is not allowed"):
        SweepConfig(name=name, storage=str(tmp_path))


def test_local_ray_listens_on_loopback_only(tmp_path):
    """Start Ray the way the runner does; every socket its processes listen on is loopback.

    Only this Ray's processes count (the driver and every descendant of it), so other Ray
    instances on the machine cannot disturb the check."""
    script = (
        "import json, os, re, subprocess, time\n"
        "import ray\n"
        "from tuning.config import SweepConfig\n"
        "from tuning.sweep.runner import _init_ray\n"
        "_init_ray(SweepConfig(name='sec'))\n"
        "ray.get(ray.remote(lambda: 1).remote())\n"
        "time.sleep(1)\n"
        "parents = {}\n"
        "for d in os.listdir('/proc'):\n"
        "    if d.isdigit():\n"
        "        try:\n"
        "            stat = open(f'/proc/{d}/stat').read()\n"
        "        except OSError:\n"
        "            continue\n"
        "        parents[int(d)] = int(stat.rsplit(')', 1)[1].split()[1])\n"
        "mine = {os.getpid()}\n"
        "changed = True\n"
        "while changed:\n"
        "    new = {p for p, pp in parents.items() if pp in mine} - mine\n"
        "    changed = bool(new)\n"
        "    mine |= new\n"
        "out = subprocess.run(['ss', '-ltnpH'], capture_output=True, text=True).stdout\n"
        "rows = []\n"
        "for line in out.splitlines():\n"
        "    pids = {int(x) for x in re.findall(r'pid=(\\d+)', line)}\n"
        "    if pids & mine:\n"
        "        rows.append((line.split()[3], line.split()[-1]))\n"
        "print(json.dumps(rows))\n"
        "ray.shutdown()\n")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=180,
                          cwd=Path(__file__).resolve().parents[3],
                          env={k: v for k, v in os.environ.items() if k != "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    opened = json.loads(proc.stdout.strip().splitlines()[-1])
    assert len(opened) >= 3, opened  # GCS, raylet, workers...
    for local, owner in opened:
        assert local.startswith(("127.0.0.1:", "[::ffff:127.0.0.1]:", "[::1]:")), (local, owner)


# 10 --------------------------------------------------------------------------------------
def test_same_seed_same_configs_and_metrics(ray_local, tiny_model_dir, tmp_path):
    histories = []
    for name in ("repro-a", "repro-b"):
        cfg = _sweep(tiny_model_dir, tmp_path, name, num_trials=3, epochs=2, max_concurrent=1, seed=7)
        run_sweep(cfg)
        client, runs = _children(cfg.resolved_tracking_uri(), name)
        per_trial = []
        for run in runs:
            config = json.loads(run.data.tags["tunebert.config"])
            losses = [m.value for m in sorted(client.get_metric_history(run.info.run_id, "val_loss"),
                                               key=lambda m: m.step)]
            per_trial.append((json.dumps(config, sort_keys=True), losses))
        histories.append(sorted(per_trial))
    assert histories[0] == histories[1]


# 2 (issue 11): MLflow runs ahead of Ray's saved state ------------------------------------
REPO = Path(__file__).resolve().parents[3]
TRIAL_METRICS = ("train_loss", "val_loss", "val_accuracy", "val_macro_f1", "lr", "samples_per_s")


def _trial_rows(db: Path) -> dict[str, tuple[str, str, str, bool]]:
    """run id -> (trial id, status, lifecycle stage, has metrics), straight from the SQLite file (cheap to poll
    while a driver writes)."""
    import sqlite3

    if not db.is_file():
        return {}
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=2)
        try:
            rows = con.execute("select r.run_uuid, t.value, r.status, r.lifecycle_stage from runs r "
                               "join tags t on t.run_uuid = r.run_uuid and t.key = 'tunebert.trial_id'"
                               ).fetchall()
            with_metrics = {r for (r,) in con.execute("select distinct run_uuid from metrics")}
        finally:
            con.close()
    except sqlite3.Error:
        return {}
    return {run: (trial, status, stage, run in with_metrics) for run, trial, status, stage in rows}


def _ray_trials(sweep_dir: Path) -> dict[str, str]:
    """trial id -> status in Ray's newest saved experiment state."""
    state = json.loads(sorted(sweep_dir.glob("experiment_state-*.json"))[-1].read_text())
    trials = [json.loads(trial) for trial, _ in state["trial_data"]]
    return {t["trial_id"]: t["status"] for t in trials}


def _run_cli_until(args, env, db, condition, timeout=300):
    """Start `tunebert ARGS` in its own process group; SIGKILL the group once ``condition(rows)``
    holds for the runs in ``db``."""
    import signal

    proc = subprocess.Popen([sys.executable, "-m", "tuning.cli", *args], cwd=REPO,
                            env={**os.environ, **env}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + timeout
    try:
        while time.time() < deadline and proc.poll() is None:
            rows = _trial_rows(db)
            if condition(rows):
                return rows
            time.sleep(0.05)
        pytest.fail(f"the sweep never got there (exit status {proc.poll()})")
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def test_resume_reconciles_mlflow_with_rays_lagging_state(tiny_model_dir, tmp_path):
    """Ray's snapshot is stretched (TUNE_GLOBAL_CHECKPOINT_S: only Ray's first step saves; more
    checkpoints kept than epochs: no checkpoint forces a save), so when the driver is SIGKILLed
    after two trials FINISHED in MLflow, Ray's state knows the first trial only, unfinished.
    Resume: one run per trial Ray knows, the orphans (trials Ray never recorded) tagged and
    deleted, the re-run finished trial never RUNNING again and no step logged twice, Optuna's
    study holding exactly the trials MLflow holds."""
    import optuna

    db, sweep_dir = tmp_path / "mlflow.db", tmp_path / "ray" / "lag"
    args = ["sweep", "--name", "lag", "--model", tiny_model_dir, "--max-length", "64", "--storage",
            str(tmp_path), "--trials", "4", "--epochs", "2", "--scheduler", "none",
            "--max-concurrent", "1", "--keep-checkpoints", "3", "--seed", "0"]
    before = _run_cli_until(args, {"TUNE_GLOBAL_CHECKPOINT_S": "3600"}, db,
                            lambda rows: sum(r[1] == "FINISHED" for r in rows.values()) >= 2)
    known = _ray_trials(sweep_dir)
    orphans = {run for run, (trial, *_) in before.items() if trial not in known}
    rerun = {run for run, (trial, status, *_) in before.items()
             if status == "FINISHED" and known.get(trial) != "TERMINATED"}
    assert orphans and rerun, (before, known)  # the lag this test is about

    reopened, watching = set(), threading.Event()

    def watch():  # a FINISHED run must never show RUNNING while its trial runs again
        while not watching.is_set():
            reopened.update(run for run, (_, status, *_) in _trial_rows(db).items()
                            if run in rerun and status == "RUNNING")
            time.sleep(0.05)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    resumed = subprocess.run([sys.executable, "-m", "tuning.cli", "resume", "lag", "--storage", str(tmp_path)],
                             cwd=REPO, capture_output=True, text=True, timeout=600)
    watching.set()
    watcher.join()
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert not reopened
    client, runs = _children(f"sqlite:///{db}", "lag")
    final = _ray_trials(sweep_dir)
    assert len(runs) == 4 and {r.data.tags["tunebert.trial_id"] for r in runs} == set(final)
    assert all(r.info.status == "FINISHED" for r in runs)
    for run in runs:
        for key in TRIAL_METRICS:
            assert _steps(client, run.info.run_id, key) == [1, 2], (run.info.run_id, key)
    for run_id in orphans:
        orphan = client.get_run(run_id)
        assert orphan.info.lifecycle_stage == "deleted" and orphan.data.tags["tunebert.orphan"] == "true"
    trials = _searcher_trials(SweepConfig(name="lag", storage=str(tmp_path)))
    assert len(trials) == 4 and all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    assert sorted(t.params["lr"] for t in trials) == sorted(
        json.loads(r.data.tags["tunebert.config"])["lr"] for r in runs)


def test_a_killed_joint_sweep_resumes_to_the_end(tiny_model_dir, snips_slice, tmp_path):
    """A multitask sweep on joint data, its driver SIGKILLed after a trial finished, resumes and
    ends with every trial FINISHED, each with its intent, slot and sentence scores per epoch once."""
    db = tmp_path / "mlflow.db"
    args = ["sweep", "--name", "jointkill", "--trainable", "multitask", "--data", str(snips_slice),
            "--model", tiny_model_dir, "--max-length", "48", "--storage", str(tmp_path),
            "--trials", "3", "--epochs", "2", "--scheduler", "none", "--max-concurrent", "1",
            "--seed", "0"]
    _run_cli_until(args, {}, db, lambda rows: any(r[1] == "FINISHED" for r in rows.values()))
    resumed = subprocess.run([sys.executable, "-m", "tuning.cli", "resume", "jointkill", "--storage",
                              str(tmp_path)], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    client, runs = _children(f"sqlite:///{db}", "jointkill")
    assert len(runs) == 3 and all(r.info.status == "FINISHED" for r in runs)
    for run in runs:
        for key in ("val_intent_accuracy", "val_slot_f1", "val_sentence_accuracy"):
            assert _steps(client, run.info.run_id, key) == [1, 2], (run.info.run_id, key)


def test_resume_of_a_sweep_stopped_before_rays_first_save_orphans_its_earlier_runs(
        ray_local, tiny_model_dir, tmp_path):
    """A driver killed between writing tuner.pkl and Ray's first snapshot leaves MLflow runs of
    trials Ray never recorded; resume starts the trials again, so those runs must become orphans
    (ended, tagged, deleted) or the sweep would end with more trial runs than trials."""
    import dataclasses

    from tuning import tracking
    from tuning.sweep.runner import resume_sweep

    cfg = dataclasses.replace(_sweep(tiny_model_dir, tmp_path, "early", epochs=1, max_concurrent=1,
                                     max_length=32), uid="uid-early").anchored()
    cfg.sweep_dir.mkdir(parents=True)
    cfg.save()
    uri = cfg.resolved_tracking_uri()
    experiment_id, parent_id = tracking.start_sweep_run(uri, "early", cfg.to_dict(), None, uid=cfg.uid)
    client = MlflowClient(uri)
    dead = client.create_run(experiment_id, tags={  # what the killed driver's logger had opened
        tracking.KIND: "trial", tracking.SWEEP: "early", tracking.TRIAL_ID: "dead0001",
        tracking.PARENT: parent_id, tracking.RAY_EXPERIMENT: "the-killed-driver"}).info.run_id
    client.log_metric(dead, "val_accuracy", 0.5, step=1)
    client.set_terminated(parent_id, "KILLED")
    (cfg.sweep_dir / "tuner.pkl").write_bytes(b"")  # and Ray never saved its experiment state
    assert not list(cfg.sweep_dir.glob("experiment_state-*.json"))

    outcome = resume_sweep("early", str(tmp_path))
    assert outcome.counts["FINISHED"] == 2
    _, runs = _children(uri, "early")
    assert len(runs) == 2 and all(r.info.status == "FINISHED" for r in runs)
    assert dead not in {r.info.run_id for r in runs}
    orphan = client.get_run(dead)
    assert orphan.info.lifecycle_stage == "deleted" and orphan.info.status == "KILLED"
    assert orphan.data.tags[tracking.ORPHAN] == "true"
    assert client.get_run(parent_id).info.status == "FINISHED"


# 3 (issue 11): ASHA's rungs across a resume ----------------------------------------------
PRESET = "head: linear\npooling: mean\nclassifier_dropout: 0.0\nscheduler: constant\nwarmup_ratio: 0.0\nbatch_size: 32\n"


def test_resumed_asha_still_stops_a_weak_trial_at_its_rung(tiny_model_dir, massive_dir, tmp_path):
    """Two strong presets pass ASHA's first rung; the driver is SIGKILLed as the third (weak)
    trial starts. After `tunebert resume` the weak trial reaches the rung and is stopped there,
    judged against the rungs recorded before the kill (Ray does not save them)."""
    (tmp_path / "space.yaml").write_text("lr: {low: 1.0e-8, high: 2.0e-8, log: true}\n")
    (tmp_path / "good.yaml").write_text(f"lr: 3.0e-3\npreset: good\n{PRESET}")
    # the same config as good: it scores the same (one seed), so it passes the rung good set (a
    # rung stops a score below its cutoff, here the mean of the two); a second preset that is merely
    # good could score lower than the first and be stopped there, which this test is not about
    (tmp_path / "good2.yaml").write_text(f"lr: 3.0e-3\npreset: good2\n{PRESET}")
    db = tmp_path / "mlflow.db"
    args = ["sweep", "--name", "rungs", "--model", tiny_model_dir, "--max-length", "64", "--storage",
            str(tmp_path), "--trials", "3", "--epochs", "2", "--scheduler", "asha", "--grace-period",
            "1", "--reduction-factor", "2", "--max-concurrent", "1", "--seed", "0", "--data",
            str(massive_dir), "--space", str(tmp_path / "space.yaml"), "--warm-start",
            f"{tmp_path / 'good.yaml'},{tmp_path / 'good2.yaml'}"]

    def weak_started(rows):
        return sum(r[1] == "FINISHED" for r in rows.values()) == 2 and len(rows) == 3

    before = _run_cli_until(args, {}, db, weak_started)
    assert not any(has_metrics for _, status, _, has_metrics in before.values() if status == "RUNNING")
    resumed = subprocess.run([sys.executable, "-m", "tuning.cli", "resume", "rungs", "--storage", str(tmp_path)],
                             cwd=REPO, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    client, runs = _children(f"sqlite:///{db}", "rungs")
    assert len(runs) == 3 and all(r.info.status == "FINISHED" for r in runs)
    weak = [r for r in runs if json.loads(r.data.tags["tunebert.config"])["lr"] < 1e-6]
    strong = [r for r in runs if r not in weak]
    assert len(weak) == 1 and len(strong) == 2
    assert all(_steps(client, r.info.run_id) == [1, 2] for r in strong)
    assert _steps(client, weak[0].info.run_id) == [1]  # stopped at the rung
    assert weak[0].data.tags["tunebert.end_reason"].startswith("stopped early")


def test_mlflow_server_lost_while_the_sweep_records_its_end(ray_local, tiny_model_dir, tmp_path,
                                                           mlflow_server, monkeypatch):
    """The server dies just as the sweep starts recording its end and is back a few seconds
    later: the end is recorded (retried within TUNEBERT_TRACKING_GRACE_S), not a traceback."""
    from tuning import tracking

    cfg = _sweep(tiny_model_dir, tmp_path, "endlost", tracking_uri=mlflow_server.uri,
                 max_concurrent=1, epochs=1)
    original = tracking.close_open_trial_runs
    outage = {}

    def die_then_come_back(*args, **kwargs):
        if not outage:
            mlflow_server.stop()
            outage["thread"] = threading.Thread(target=lambda: (time.sleep(3), mlflow_server.start()))
            outage["thread"].start()
        return original(*args, **kwargs)

    monkeypatch.setattr(tracking, "close_open_trial_runs", die_then_come_back)
    try:
        outcome = run_sweep(cfg)
    finally:  # the server is back before the fixture stops it
        if outage:
            outage["thread"].join()
    assert outcome.best is not None and outcome.counts["FINISHED"] == 2
    client, runs = _children(mlflow_server.uri, "endlost")
    parent = client.search_runs([client.get_experiment_by_name("endlost").experiment_id],
                                "tags.`tunebert.kind` = 'sweep'")[0]
    assert parent.info.status == "FINISHED" and parent.data.metrics["trials_finished"] == 2
