"""tuning.tracking: bounded waits on a silent server, queued writes delivered on a timer (also
when no trial reports anything, so a driver killed later has lost nothing), and the
reconciliation of a restored sweep's MLflow record with Ray Tune's saved state."""

from __future__ import annotations

import os
import pickle
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from ray.tune.experiment import Trial

from trainables import registry
from tuning import tracking

REPO = Path(__file__).resolve().parents[3]


def _silent_server():
    """A socket on 127.0.0.1 that accepts every connection and never answers."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    held = []

    def accept():
        while True:
            try:
                held.append(server.accept()[0])
            except OSError:
                return

    threading.Thread(target=accept, daemon=True).start()
    return server, held


def test_a_silent_server_makes_no_request_wait_more_than_about_10s():
    server, held = _silent_server()
    saved = {key: os.environ.pop(key, None) for key in tracking.HTTP_DEFAULTS}
    try:
        tracking.bound_http_waits()
        client = MlflowClient(f"http://127.0.0.1:{server.getsockname()[1]}")
        start = time.time()
        with pytest.raises(Exception):
            client.get_experiment_by_name("anything")
        waited = time.time() - start
    finally:
        for key, value in saved.items():
            os.environ.pop(key, None)
            if value is not None:
                os.environ[key] = value
        server.close()
    assert held, "the request never reached the silent server"
    assert waited < 12, f"one request waited {waited:.1f}s on a server that never answers"


def _stub(trial_id: str, *, status: str = Trial.PENDING, last_result: dict | None = None) -> Trial:
    trial = Trial("trainable", config={"trainable": "finetune", "epochs": 2, "lr": 1e-3},
                  trial_id=trial_id, stub=True)
    trial.set_status(status)
    if last_result is not None:
        trial.run_metadata.last_result = dict(last_result)
    return trial


def _result(epoch: int, value: float) -> dict:
    return {"epoch": epoch, "training_iteration": epoch, "val_accuracy": value, "train_loss": 1.0 / epoch}


DRIVER = textwrap.dedent("""
    import logging, sys, threading, time
    from ray.tune.experiment import Trial
    from trainables import registry
    from tuning import tracking

    class FirstFailure(logging.Handler):  # the writer's warning on its first failed delivery
        def __init__(self):
            super().__init__(logging.WARNING)
            self.seen = threading.Event()
        def emit(self, record):
            if "writes are queued" in record.getMessage():
                self.seen.set()

    failure = FirstFailure()
    logging.getLogger().addHandler(failure)
    tracking.bound_http_waits()
    uri, experiment_id, parent_id = sys.argv[1:4]
    logger = tracking.MlflowTrialLogger(uri, experiment_id, parent_id, registry.resolve_config, "timer")
    logger.setup()
    trial = Trial("trainable", config={"trainable": "finetune", "epochs": 1}, trial_id="t1", stub=True)
    logger.on_trial_start(0, [trial], trial)
    while logger.pending_writes():
        time.sleep(0.1)
    print("started", flush=True)
    sys.stdin.readline()  # the server is down now
    result = {"epoch": 1, "training_iteration": 1, "val_accuracy": 0.5, "train_loss": 1.0}
    logger.on_trial_result(1, [trial], trial, result)
    trial.run_metadata.last_result = result
    logger.on_trial_complete(1, [trial], trial)
    print("queued" if failure.seen.wait(60) else "no delivery failed within 60 s", flush=True)
    time.sleep(3600)  # no trial reports anything any more: only a timer can deliver the writes
""")


@pytest.mark.slow
def test_queued_writes_reach_mlflow_on_a_timer_before_the_driver_is_killed(mlflow_server):
    """The server is down when a trial's last result and end are logged; it comes back; nothing
    else happens in the driver. The writes arrive on their own, so a SIGKILL afterwards loses
    nothing."""
    uri = mlflow_server.uri
    experiment_id, parent_id = tracking.start_sweep_run(uri, "timer", {}, None)
    driver = subprocess.Popen([sys.executable, "-c", DRIVER, uri, experiment_id, parent_id], cwd=REPO,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                              start_new_session=True)
    try:
        assert driver.stdout.readline().strip() == "started"
        mlflow_server.stop()
        driver.stdin.write("go\n")
        driver.stdin.flush()
        # "queued" once a delivery has failed against the dead server: from then on only the
        # writer's retry timer can deliver the writes
        assert driver.stdout.readline().strip() == "queued"
        mlflow_server.start()
        client = MlflowClient(uri)
        deadline = time.time() + tracking.RETRY_AFTER_S + 20
        run = None
        while time.time() < deadline:
            run = client.search_runs([experiment_id], "tags.`tunebert.trial_id` = 't1'")[0]
            if run.info.status == "FINISHED":
                break
            time.sleep(0.5)
    finally:
        os.killpg(driver.pid, signal.SIGKILL)
        driver.wait()
    run = client.get_run(run.info.run_id)
    assert run.info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val_accuracy")] == [1]
    assert run.data.tags["tunebert.end_reason"] == "completed"


def test_a_restored_logger_reconciles_mlflow_with_rays_saved_state(tmp_path):
    """Ray's snapshot trails MLflow. The driver logged three trials, then died; Ray's saved state
    holds ``done`` unfinished after epoch 1 (MLflow: FINISHED after 2 epochs), ``ended`` finished
    (MLflow: its last epoch and end never arrived) and no ``orphan`` at all."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    experiment_id, parent_id = tracking.start_sweep_run(uri, "recon", {}, None)
    first = tracking.MlflowTrialLogger(uri, experiment_id, parent_id, registry.resolve_config, "recon")
    saved_with_ray = pickle.dumps(first)  # Ray pickles the callback with the experiment
    first.setup()
    done, orphan, ended = _stub("done"), _stub("orphan"), _stub("ended")
    for trial in (done, orphan, ended):
        first.on_trial_start(0, [], trial)
        first.on_trial_result(0, [], trial, _result(1, 0.25))
    first.on_trial_result(0, [], done, _result(2, 0.5))
    done.run_metadata.last_result = _result(2, 0.5)
    first.on_trial_complete(0, [], done)
    assert first.flush_until(30) == 0
    first.stop()
    client = MlflowClient(uri)
    runs = {r.data.tags["tunebert.trial_id"]: r for r in
            client.search_runs([experiment_id], "tags.`tunebert.kind` = 'trial'")}
    assert runs["done"].info.status == "FINISHED"

    tracking.MlflowTrialLogger.expect_restore("recon")
    restored = pickle.loads(saved_with_ray)
    restored.setup()
    again = _stub("done", last_result=_result(1, 0.25))
    ray_ended = _stub("ended", status=Trial.TERMINATED, last_result=_result(2, 0.75))
    restored.on_step_begin(0, [again, ray_ended])
    restored.on_trial_start(0, [again, ray_ended], again)  # Ray runs it again from epoch 1
    assert restored.flush_until(30) == 0
    assert client.get_run(runs["done"].info.run_id).info.status == "FINISHED"  # not reopened
    restored.on_trial_result(0, [], again, _result(2, 0.5))
    again.run_metadata.last_result = _result(2, 0.5)
    restored.on_trial_complete(0, [], again)
    assert restored.flush_until(30) == 0
    restored.stop()

    active = {r.data.tags["tunebert.trial_id"]: r for r in
              client.search_runs([experiment_id], "tags.`tunebert.kind` = 'trial'")}
    assert set(active) == {"done", "ended"}  # the orphan is no trial of the sweep
    gone = client.get_run(runs["orphan"].info.run_id)
    assert gone.info.lifecycle_stage == "deleted" and gone.info.status == "KILLED"
    assert gone.data.tags[tracking.ORPHAN] == "true"
    for trial_id in ("done", "ended"):
        run = active[trial_id]
        assert run.info.status == "FINISHED"
        for key in ("val_accuracy", "train_loss"):
            assert sorted(m.step for m in client.get_metric_history(run.info.run_id, key)) == [1, 2]
    assert active["ended"].data.metrics["val_accuracy"] == 0.75  # Ray's last result, backfilled
    assert active["ended"].data.tags["tunebert.end_reason"] == "completed"
    assert restored.skipped_steps == 2  # epoch 2 of `done`, reported again, not logged again


def test_two_new_sweeps_of_one_name_never_share_an_experiment(tmp_path):
    """Issue 11 item 5: two new sweeps named alike, started at the same moment from different
    sweep folders (their locks differ) against one store, both find no experiment in
    ``claim_experiment``; the second to start its parent run is refused instead of recording
    into the first one's parent run. A resume of the first (same uid) gets its run back."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    for uid in ("sweep-a", "sweep-b"):  # both pass the claim: nothing recorded yet
        tracking.claim_experiment(uri, "s", uid, resume=False)
    experiment_id, parent = tracking.start_sweep_run(uri, "s", {}, None, uid="sweep-a")
    with pytest.raises(tracking.TrackingError, match=r"belongs to another sweep of the same name "
                                                     r"\(uid sweep-a; this one is sweep-b\)"):
        tracking.start_sweep_run(uri, "s", {}, None, uid="sweep-b")
    client = MlflowClient(uri)
    assert client.get_experiment(experiment_id).tags[tracking.SWEEP_UID] == "sweep-a"
    assert [r.info.run_id for r in client.search_runs([experiment_id])] == [parent]
    assert tracking.start_sweep_run(uri, "s", {}, None, uid="sweep-a") == (experiment_id, parent)
    # the experiment created in the same request as its owner's tag: never an unowned moment
    created = tracking.ensure_experiment(client, "t", None, uid="sweep-c")
    assert client.get_experiment(created).tags[tracking.SWEEP_UID] == "sweep-c"


def _open_when_all_are_ready(uri, barrier, failures):
    barrier.wait()
    try:
        tracking.client_for(uri).search_experiments()
    except Exception as exc:  # what MLflow raised in this process, for the parent to report
        failures.put(str(exc).splitlines()[0])


def test_processes_opening_one_new_sqlite_store_at_once_all_get_it(tmp_path):
    # two `tunebert train` side by side on a new store: MLflow creates the tables unguarded
    import multiprocessing

    context = multiprocessing.get_context("fork")
    for attempt in range(3):
        uri = f"sqlite:///{tmp_path / f'store{attempt}' / 'mlflow.db'}"
        barrier, failures = context.Barrier(6), context.Queue()
        children = [context.Process(target=_open_when_all_are_ready, args=(uri, barrier, failures))
                    for _ in range(6)]
        for child in children:
            child.start()
        for child in children:
            child.join(120)
        said = [failures.get(timeout=5) for _ in range(failures.qsize())]
        assert said == [] and [child.exitcode for child in children] == [0] * 6
        assert [e.name for e in MlflowClient(tracking_uri=uri).search_experiments()] == ["Default"]
