"""`tunebert ui` and how a sweep reads in the MLflow UI: the experiment kind that opens the runs
table, the description, the report linked from the sweep run, and a real `mlflow server` on
127.0.0.1 that the command starts, points at the sweep and stops."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tuning import tracking

from tuning.tracking import ui

REPO = Path(__file__).resolve().parents[3]
URL = re.compile(r"http://127\.0\.0\.1:(\d+)/#/experiments/(\d+)/runs\?workflowType=machine_learning\S*")
SERVER_WAIT_S = 600  # a cold `mlflow server` on a loaded CI machine


def _sweep_store(uri: str, name: str = "uisweep") -> tuple[str, str]:
    """A sweep as the product records it: the parent run and two trial runs with metrics."""
    experiment_id, parent_id = tracking.start_sweep_run(
        uri, name, {"metric": "val_accuracy", "mode": "max", "epochs": 2}, None)
    client = MlflowClient(uri)
    for trial_id, accuracy in (("t1", 0.6), ("t2", 0.8)):
        run = client.create_run(experiment_id, run_name=f"finetune-{trial_id}", tags={
            tracking.KIND: "trial", tracking.SWEEP: name, tracking.TRIAL_ID: trial_id,
            tracking.PARENT: parent_id})
        for epoch in (1, 2):
            client.log_metric(run.info.run_id, "val_accuracy", accuracy * epoch / 2, step=epoch)
        client.log_metric(run.info.run_id, "best_val_accuracy", accuracy, step=2)
        client.set_terminated(run.info.run_id, "FINISHED")
    return experiment_id, parent_id


def test_a_created_sweep_experiment_opens_as_runs_and_says_how_to_read_it(mlflow_uri):
    experiment_id, parent_id = _sweep_store(mlflow_uri)
    client = MlflowClient(mlflow_uri)
    tags = client.get_experiment(experiment_id).tags
    assert tags[tracking.EXPERIMENT_KIND] == "custom_model_development"
    note = tags["mlflow.note.content"]
    for words in ("uisweep", "child runs", "best_val_accuracy", "higher is better",
                  "tunebert best uisweep", "tunebert report uisweep"):
        assert words in note
    parent = client.get_run(parent_id)
    assert "child runs" in parent.data.tags["mlflow.note.content"]
    trials = client.search_runs([experiment_id], "tags.`tunebert.kind` = 'trial'")
    assert {r.data.tags[tracking.PARENT] for r in trials} == {parent_id}  # nested under the sweep


def test_a_reused_experiment_gets_the_kind_and_description_but_keeps_a_users_own(mlflow_uri):
    client = MlflowClient(mlflow_uri)
    old = client.create_experiment("old", tags={"mlflow.note.content": "tunebert sweep old: one child run per trial"})
    mine = client.create_experiment("mine", tags={tracking.EXPERIMENT_KIND: "genai_development",
                                                  "mlflow.note.content": "my own notes"})
    inferred = client.create_experiment("inferred", tags={tracking.EXPERIMENT_KIND: "no_inferred_type"})

    assert tracking.start_sweep_run(mlflow_uri, "old", {"metric": "val_macro_f1", "mode": "max"}, None)[0] == old
    assert tracking.ensure_experiment(client, "mine", None, tracking.sweep_description("mine")) == mine
    assert tracking.ensure_experiment(client, "inferred", None) == inferred

    tags = client.get_experiment(old).tags
    assert tags[tracking.EXPERIMENT_KIND] == "custom_model_development"
    assert "best_val_macro_f1" in tags["mlflow.note.content"]
    tags = client.get_experiment(mine).tags  # chosen in the UI by someone: theirs
    assert tags[tracking.EXPERIMENT_KIND] == "genai_development"
    assert tags["mlflow.note.content"] == "my own notes"
    assert client.get_experiment(inferred).tags[tracking.EXPERIMENT_KIND] == "custom_model_development"

    # `tunebert ui` brings a sweep recorded before any of this up to date
    client.delete_experiment_tag(old, tracking.EXPERIMENT_KIND)
    experiment_id, metric_key, mode = tracking.prepare_for_ui(mlflow_uri, "old")
    assert (experiment_id, metric_key, mode) == (old, "best_val_macro_f1", "max")
    assert client.get_experiment(old).tags[tracking.EXPERIMENT_KIND] == "custom_model_development"


def test_the_report_is_linked_from_the_sweep_run_once(mlflow_uri):
    experiment_id, parent_id = _sweep_store(mlflow_uri)
    for _ in range(2):
        tracking.link_report(mlflow_uri, parent_id, "report/report.html", "/x/reports/uisweep/report.html")
    note = MlflowClient(mlflow_uri).get_run(parent_id).data.tags["mlflow.note.content"]
    assert note.startswith(tracking.SWEEP_RUN_NOTE)
    assert note.count("**Report**") == 1
    assert (f"(#/experiments/{experiment_id}/runs/{parent_id}/artifacts/report/report.html"
            f"?workflowType=machine_learning)") in note
    assert "/x/reports/uisweep/report.html" in note


def test_links_open_the_runs_view_in_a_set_order():
    """MLflow 3.17 shows the runs table for workflowType=machine_learning; it nests child runs
    only in its default order, which the sweep's link sets (the browser keeps the last one)."""
    assert ui.experiment_url("http://h:1/", "7") == (
        "http://h:1/#/experiments/7/runs?workflowType=machine_learning&searchFilter="
        "&orderByKey=attributes.start_time&orderByAsc=false")
    assert ui.experiment_url("http://h:1", None) == "http://h:1/#/experiments?workflowType=machine_learning"
    ranked = ui.ranked_url("http://h:1", "7", "best_val_loss", "min")
    assert ranked.startswith("http://h:1/#/experiments/7/runs?workflowType=machine_learning&")
    assert "searchFilter=tags.%60tunebert.kind%60+%3D+%27trial%27" in ranked
    assert "orderByKey=metrics.%60best_val_loss%60" in ranked and "orderByAsc=true" in ranked


# --------------------------------------------------------------------------- a real server


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env() -> dict:
    """The environment without MLFLOW_TRACKING_URI: the store comes from --storage."""
    return {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}


def _live_in_group(pgid: int) -> list[int]:
    """Processes (not zombies) in process group ``pgid``."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            found.append(int(stat.parent.name))
    return found


def _children(pid: int) -> list[int]:
    """The live child processes of ``pid`` (Linux lists them per thread; the main one spawns)."""
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:  # it has exited
        return []



def _status(url: str) -> int:
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.status


def _refused(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(2)
        return s.connect_ex(("127.0.0.1", port)) != 0


def test_tunebert_ui_serves_the_sweep_until_ctrl_c_and_then_stops_the_server(tmp_path):
    storage = tmp_path / "runs"
    experiment_id, _ = _sweep_store(f"sqlite:///{storage / 'mlflow.db'}")
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "tuning.cli", "ui", "--storage", str(storage), "--name", "uisweep",
         "--port", str(port), "--start-timeout", str(SERVER_WAIT_S)],
        cwd=REPO, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, "")), daemon=True)
    reader.start()
    server_pid = None
    try:
        deadline = time.time() + SERVER_WAIT_S + 120
        while time.time() < deadline and not any("Ctrl-C" in line for line in lines):
            assert proc.poll() is None, (lines, proc.stderr.read())
            time.sleep(0.5)
        match = next(m for m in map(URL.search, lines) if m)
        assert match.group(1) == str(port) and match.group(2) == experiment_id
        assert _status(match.group(0)) == 200  # the UI page (the part before # is what is fetched)
        answer = json.load(urllib.request.urlopen(
            f"http://127.0.0.1:{port}/api/2.0/mlflow/experiments/get?experiment_id={experiment_id}",
            timeout=10))
        tags = {t["key"]: t["value"] for t in answer["experiment"]["tags"]}
        assert answer["experiment"]["name"] == "uisweep"
        assert tags[tracking.EXPERIMENT_KIND] == "custom_model_development"
        assert any("orderByKey=metrics.%60best_val_accuracy%60" in line for line in lines)
        (server_pid,) = _children(proc.pid)
        assert _live_in_group(server_pid)

        os.kill(proc.pid, signal.SIGINT)  # Ctrl-C
        assert proc.wait(60) == 0, proc.stderr.read()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        if server_pid is not None and _live_in_group(server_pid):
            os.killpg(server_pid, signal.SIGKILL)
            pytest.fail("the MLflow server outlived `tunebert ui`")
    reader.join(10)
    assert any("MLflow UI stopped" in line for line in lines)
    assert _refused(port)


def test_tunebert_ui_smoke_test_starts_checks_and_stops(tmp_path):
    storage = tmp_path / "runs"
    _sweep_store(f"sqlite:///{storage / 'mlflow.db'}")
    port = _free_port()
    done = subprocess.run(
        [sys.executable, "-m", "tuning.cli", "ui", "--storage", str(storage), "--name", "uisweep",
         "--port", str(port), "--start-timeout", str(SERVER_WAIT_S), "--smoke-test"],
        cwd=REPO, env=_env(), capture_output=True, text=True, timeout=SERVER_WAIT_S + 120)
    assert done.returncode == 0, done.stderr
    assert URL.search(done.stdout) and "smoke test passed" in done.stdout
    assert _refused(port)


def test_tunebert_ui_on_a_tracking_server_only_prints_its_link(mlflow_server):
    experiment_id, _ = _sweep_store(mlflow_server.uri, "remote")
    done = subprocess.run(
        [sys.executable, "-m", "tuning.cli", "ui", "--tracking-uri", mlflow_server.uri, "--name", "remote"],
        cwd=REPO, env=_env(), capture_output=True, text=True, timeout=SERVER_WAIT_S)
    assert done.returncode == 0, done.stderr
    assert ui.experiment_url(mlflow_server.uri, experiment_id) in done.stdout
    assert "starting" not in done.stdout


@pytest.mark.parametrize("argv, message", [
    (["--name", "nope"], "no sweep named 'nope'"),
    (["--port", "0"], "--port must be between 1 and 65535"),
])
def test_tunebert_ui_refuses_with_a_message(tmp_path, argv, message):
    storage = tmp_path / "runs"
    _sweep_store(f"sqlite:///{storage / 'mlflow.db'}")
    done = subprocess.run([sys.executable, "-m", "tuning.cli", "ui", "--storage", str(storage), *argv],
                          cwd=REPO, env=_env(), capture_output=True, text=True, timeout=SERVER_WAIT_S)
    assert done.returncode == 2 and message in done.stderr, done.stderr
    assert "Traceback" not in done.stderr


def test_tunebert_ui_refuses_a_store_that_does_not_exist(tmp_path):
    done = subprocess.run([sys.executable, "-m", "tuning.cli", "ui", "--storage", str(tmp_path / "none")],
                          cwd=REPO, env=_env(), capture_output=True, text=True, timeout=SERVER_WAIT_S)
    assert done.returncode == 2 and "no MLflow store at" in done.stderr, done.stderr
    assert not (tmp_path / "none").exists()
