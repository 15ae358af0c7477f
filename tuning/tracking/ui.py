"""``tunebert ui``: the MLflow UI on a sweep's store, opened at the sweep's runs table.

A store on this machine or in a database (the SQLite file under ``--storage``, another SQLite
file, postgresql://...) gets its own ``mlflow server`` on 127.0.0.1: a child process in a session
of its own, stopped (SIGTERM, then SIGKILL) when the command ends, by Ctrl-C or otherwise. A
tracking server (http[s]://) has a UI already: its URL is only printed.

MLflow 3.17's UI opens an experiment in the view of its workflow toggle (GenAI, traces, by
default), whatever the experiment's kind tag says (``tuning.tracking.EXPERIMENT_KIND``); a link
with ``workflowType=machine_learning`` switches the toggle to the runs table, so every link
printed here carries it. Whether a parent run's row is expanded into its nested trials is kept
in the browser only (MLflow's shared views leave it out too): the first link opens the sweep's
row with a + to expand; the second lists the trials flat, ranked by the sweep's metric.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Optional
from urllib.parse import urlencode

import tuning.credentials as credentials
import tuning.tracking as tracking
from trainables.errors import UserError
from tuning.config import UI_HOST, UI_PORT, UI_START_TIMEOUT_S
from tuning.interrupt import Interrupted
from tuning.tracking.names import KIND, RUNS_VIEW_QUERY

log = logging.getLogger(__name__)

HOST, DEFAULT_PORT, START_TIMEOUT_S = UI_HOST, UI_PORT, UI_START_TIMEOUT_S  # said in tuning.config
STOP_TIMEOUT_S = 10.0  # after SIGTERM, before SIGKILL

# --------------------------------------------------------------------------- links


def experiment_url(base: str, experiment_id: Optional[str]) -> str:
    """The UI page of an experiment: its runs table, newest first, with nothing filtered out
    (the only order in which MLflow nests child runs under their parent); or the experiment
    list. The order and filter are explicit because the UI otherwise reuses the last ones the
    browser used for that experiment."""
    if not experiment_id:
        return f"{base.rstrip('/')}/#/experiments?{urlencode(RUNS_VIEW_QUERY)}"
    query = {**RUNS_VIEW_QUERY, "searchFilter": "", "orderByKey": "attributes.start_time",
             "orderByAsc": "false"}
    return f"{base.rstrip('/')}/#/experiments/{experiment_id}/runs?{urlencode(query)}"


def ranked_url(base: str, experiment_id: str, metric_key: str, mode: str) -> str:
    """The experiment's trial runs alone, sorted by ``metric_key``, best first (a sorted table
    lists runs flat)."""
    query = {**RUNS_VIEW_QUERY, "searchFilter": f"tags.`{KIND}` = 'trial'",
             "orderByKey": f"metrics.`{metric_key}`", "orderByAsc": "true" if mode == "min" else "false"}
    return f"{base.rstrip('/')}/#/experiments/{experiment_id}/runs?{urlencode(query)}"


# --------------------------------------------------------------------------- the server


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind((HOST, port))
        except OSError:
            return False
    return True


def pick_port(asked: Optional[int]) -> int:
    """``asked`` if free (refused otherwise), else DEFAULT_PORT if free, else any free port."""
    if asked is not None:
        if not 1 <= asked <= 65535:
            raise UserError(f"--port must be between 1 and 65535, but got {asked}")
        if not _port_free(asked):
            raise UserError(f"--port {asked}: something already listens on {HOST}:{asked} "
                            f"(another MLflow UI?). Pass another --port, or leave it out.")
        return asked
    if _port_free(DEFAULT_PORT):
        return DEFAULT_PORT
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def answers(url: str, timeout: float = 2.0) -> bool:
    """Whether ``url`` answers 200 within ``timeout`` seconds."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status == 200
    except Exception:
        return False


class UiServer:
    """``mlflow server`` on ``HOST:port`` over ``store_uri``, in a process group of its own (it
    starts uvicorn as a child), its output in a log file that is kept only if it fails."""

    def __init__(self, store_uri: str, port: int, cwd: Path):
        self.store_uri = store_uri
        self.port = port
        self.cwd = cwd
        self.base = f"http://{HOST}:{port}"
        self.proc: Optional[subprocess.Popen] = None
        self.log_path: Optional[Path] = None
        self.failed = False  # keep the log for the user to read

    def start(self, timeout_s: float) -> "UiServer":
        handle, name = tempfile.mkstemp(prefix="tunebert-mlflow-ui-", suffix=".log")
        self.log_path = Path(name)
        # the store's URI goes in the environment, not the command line: ps shows no password
        env = {**os.environ, "MLFLOW_BACKEND_STORE_URI": credentials.reveal(self.store_uri)}
        with os.fdopen(handle, "w") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "mlflow", "server", "--host", HOST, "--port", str(self.port),
                 "--workers", "1"],
                cwd=self.cwd, env=env, stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.time() + timeout_s
        while time.time() < deadline:
            if answers(f"{self.base}/health"):
                return self
            if self.proc.poll() is not None:
                break
            time.sleep(0.5)
        code = self.proc.poll()
        tail = self.log_tail()
        self.failed = True
        self.stop()
        why = f"exited with status {code}" if code is not None else f"did not answer in {timeout_s:.0f}s"
        raise UserError(f"the MLflow server on {self.base} {why}; its log ({self.log_path}) ends "
                        f"with:\n{tail}\nFix the cause, or raise --start-timeout on a slow machine.")

    def log_tail(self, lines: int = 15) -> str:
        if self.log_path is None or not self.log_path.is_file():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def wait(self) -> int:
        """Block until the server ends on its own (its exit status)."""
        return self.proc.wait()

    def stop(self) -> None:
        """End the server and its children (its log goes too unless it failed); idempotent."""
        if self.proc is not None:
            for sig, wait_s in ((signal.SIGTERM, STOP_TIMEOUT_S), (signal.SIGKILL, None)):
                try:
                    os.killpg(self.proc.pid, sig)
                except ProcessLookupError:
                    pass
                try:
                    self.proc.wait(wait_s)
                    break
                except subprocess.TimeoutExpired:
                    continue
            try:  # the group may outlive its leader (uvicorn's workers): make sure it is gone
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc = None
        if not self.failed and self.log_path is not None:
            self.log_path.unlink(missing_ok=True)


def _server_folder(uri: str) -> Path:
    """Where the server runs: a SQLite file's folder (an experiment made in the UI keeps its
    artifacts in ./mlartifacts there, beside the sweeps'), else the current folder."""
    if uri.startswith("sqlite:///"):
        return Path(uri[len("sqlite:///"):]).expanduser().resolve().parent
    return Path.cwd()


# --------------------------------------------------------------------------- the command


def _say(message: str) -> None:
    log.info(message)


def run(args: argparse.Namespace) -> int:
    """``tunebert ui`` on the store of ``--tracking-uri``/``--storage``."""
    uri = tracking.reachable_store(args.tracking_uri, args.storage)
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).expanduser().is_file():
        raise UserError(f"no MLflow store at {uri[len('sqlite:///'):]}: pass the --storage a sweep "
                        f"used, or --tracking-uri / MLFLOW_TRACKING_URI for another store.")
    sweep = tracking.prepare_for_ui(uri, args.name) if args.name else None
    remote = uri.startswith(("http://", "https://"))
    if remote:
        _links(tracking.redact(uri), args.name, sweep)
        return 0
    server = UiServer(uri, pick_port(args.port), _server_folder(uri))
    if threading.current_thread() is threading.main_thread():
        # Ctrl-C is how this command ends, also when a shell started it with SIGINT ignored (a
        # script's background job)
        signal.signal(signal.SIGINT, signal.default_int_handler)
    _say(f"starting the MLflow UI on {server.base} for {tracking.redact(uri)} ...")
    try:
        server.start(args.start_timeout)
        _links(server.base, args.name, sweep)
        if args.smoke_test:  # the page, and the sweep's experiment through the server's API
            checks = [f"{server.base}/"] + ([f"{server.base}/api/2.0/mlflow/experiments/get?"
                                             f"experiment_id={sweep[0]}"] if sweep else [])
            failing = [url for url in checks if not answers(url)]
            if failing:
                raise UserError(f"smoke test: the MLflow server does not answer {failing}")
            _say("smoke test passed: the MLflow UI answered; stopping it")
            return 0
        _say("Ctrl-C stops the MLflow server")
        status = server.wait()
        server.failed = True
        print(f"tunebert ui: the MLflow server exited with status {status}; its log "
              f"({server.log_path}) ends with:\n{server.log_tail()}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as exc:
        if isinstance(exc, Interrupted):  # SIGTERM: the CLI reports it and exits 143
            raise
        server.stop()
        _say("MLflow UI stopped")
        return 0
    finally:
        server.stop()


def _links(base: str, name: Optional[str], sweep: Optional[tuple[str, str, str]]) -> None:
    if sweep is None:
        _say(f"MLflow UI: {experiment_url(base, None)}")
        return
    experiment_id, metric_key, mode = sweep
    _say(f"sweep {name!r} (the parent run; its trials nested under it):\n"
         f"  {experiment_url(base, experiment_id)}")
    _say(f"its trials ranked by {metric_key}, best first:\n"
         f"  {ranked_url(base, experiment_id, metric_key, mode)}")
