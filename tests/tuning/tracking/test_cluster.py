"""Sweeps on a real multi-node Ray cluster on this machine, logged to a real MLflow server backed
by PostgreSQL, submitted through the real CLI. Slow; run by .ci/run like everything else.

What runs for real:

- two `ray start --block` processes: a head with no CPUs (so no trial can run there) and a worker
  node with 2 CPUs, each with its own ``--temp-dir``, joined with Ray token authentication (a
  token made for this test, passed through RAY_AUTH_MODE / RAY_AUTH_TOKEN_PATH);
- a throwaway PostgreSQL cluster (Debian's initdb/pg_ctl, run as the ``postgres`` user when the
  tests run as root) and an ``mlflow server`` on it, serving artifacts;
- ``python -m tuning.cli sweep --address ...``, a separate driver process, as a user would run it.

The nodes advertise loopback addresses (127.0.0.2 for the head, 127.0.0.3 for the worker) rather
than 127.0.0.1: Ray treats 127.0.0.1 as "single-node" and, for ``ray start --address`` and
``--node-ip-address``, replaces it with the machine's outward address, so a second node cannot join
a head on 127.0.0.1. Ray's servers bind 0.0.0.0 for any node address other than 127.0.0.1; the
token keeps strangers out meanwhile.

The worker node runs in a private mount namespace where one folder is covered by an empty tmpfs:
a folder on "another machine's disk" for real, used to check that node-local storage is refused.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Optional
from urllib.parse import urlsplit, urlunsplit

import pytest
from mlflow.tracking import MlflowClient

from tuning.tracking.best import best_config
from tuning.sweep.runner import TRIAL_METRICS

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[3]
BIN = Path(sys.executable).parent
HEAD_IP, WORKER_IP = "127.0.0.2", "127.0.0.3"
EXIT_USER_ERROR = 2  # tuning.cli.EXIT_USER_ERROR
# short roots: Ray's unix socket paths live under --temp-dir and must stay under 108 bytes, and
# the postgres user must be able to enter PostgreSQL's folder (pytest's tmp root is 0700 root)
TMP = "/tmp"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tail(path: Path, n: int = 3000) -> str:
    return path.read_text(errors="replace")[-n:] if path.is_file() else f"({path} not written)"


def _pids_mentioning(text: str) -> list[int]:
    """Processes whose command line contains ``text`` (a temp folder unique to this test run),
    so only what this module started is ever stopped."""
    needle, pids = text.encode(), []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                if needle in (entry / "cmdline").read_bytes():
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids


def _kill_all_mentioning(text: str) -> None:
    for pid in _pids_mentioning(text):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _stop(proc: subprocess.Popen, timeout: float = 30) -> None:
    if proc.poll() is None:
        proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _stop_group(proc: subprocess.Popen, timeout: float = 20) -> None:
    """SIGTERM, then SIGKILL, to a process started with ``start_new_session`` and its children."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:  # the group is gone already
            break
        try:
            proc.wait(timeout)
            break
        except subprocess.TimeoutExpired:
            continue
    proc.wait()


# --------------------------------------------------------------------------- PostgreSQL + mlflow server


def _postgres_bin() -> Optional[Path]:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"),
                   key=lambda p: int(p.parts[-3]) if p.parts[-3].isdigit() else 0)
    return found[-1].parent if found else None


@pytest.fixture(scope="module")
def postgres_uri():
    """A throwaway PostgreSQL on 127.0.0.1 with a database ``mlflow``; yields its SQLAlchemy URI."""
    bin_dir = _postgres_bin()
    if bin_dir is None:
        message = ("PostgreSQL server binaries not found (/usr/lib/postgresql/*/bin/initdb); "
                   "install them with `apt-get install postgresql` (.ci/run does)")
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    root = Path(tempfile.mkdtemp(prefix="tb-pg-", dir=TMP))
    data, port, password = root / "data", _free_port(), secrets.token_hex(12)
    pwfile = root / "pwfile"
    pwfile.write_text(password)
    # PostgreSQL refuses to run as root: as root, its files and processes belong to `postgres`
    as_postgres: list[str] = []
    if os.geteuid() == 0:
        import pwd

        user = pwd.getpwnam("postgres")
        for path in (root, pwfile):
            os.chown(path, user.pw_uid, user.pw_gid)
        as_postgres = ["runuser", "-u", "postgres", "--"]

    def run(*cmd, server_side=True):
        done = subprocess.run([*(as_postgres if server_side else []), *map(str, cmd)],
                              capture_output=True, text=True, timeout=120,
                              env={**os.environ, "PGPASSWORD": password})
        assert done.returncode == 0, (f"{Path(str(cmd[0])).name} failed:\n{done.stdout[-2000:]}\n"
                                      f"{done.stderr[-2000:]}\n{_tail(root / 'postgres.log')}")

    try:
        run(bin_dir / "initdb", "-D", data, "-U", "mlflow", f"--pwfile={pwfile}",
            "--auth=scram-sha-256", "-E", "UTF8", "--locale=C")
        pwfile.unlink()
        run(bin_dir / "pg_ctl", "-D", data, "-l", root / "postgres.log", "-w", "-t", "60", "-o",
            f"-h 127.0.0.1 -p {port} -k {root} -F", "start")
        run(bin_dir / "createdb", "-h", "127.0.0.1", "-p", port, "-U", "mlflow", "mlflow",
            server_side=False)
        # the driver named explicitly: SQLAlchemy 2.1 maps a bare postgresql:// to psycopg 3, while
        # the project's test extras bring psycopg2-binary
        yield f"postgresql+psycopg2://mlflow:{password}@127.0.0.1:{port}/mlflow"
    finally:
        if (data / "postmaster.pid").exists():
            subprocess.run([*as_postgres, str(bin_dir / "pg_ctl"), "-D", str(data), "-m",
                            "immediate", "-w", "stop"], capture_output=True, timeout=60)
        _kill_all_mentioning(str(root))
        shutil.rmtree(root, ignore_errors=True)


@dataclass
class MlflowServer:
    uri: str
    artifacts: Path  # the server's --artifacts-destination


@pytest.fixture(scope="module")
def mlflow_server(postgres_uri, tmp_path_factory) -> MlflowServer:
    """A real ``mlflow server`` on 127.0.0.1 with the PostgreSQL backend, serving artifacts."""
    folder = tmp_path_factory.mktemp("mlflow-server")
    port = _free_port()
    log = folder / "server.log"
    # as docker/compose.yaml starts it: the password in the environment (libpq reads PGPASSWORD),
    # none on the command line
    parts = urlsplit(postgres_uri)
    store = urlunsplit(parts._replace(netloc=f"{parts.username}@{parts.hostname}:{parts.port}"))
    with log.open("w") as out:
        proc = subprocess.Popen(
            [str(BIN / "mlflow"), "server", "--backend-store-uri", store,
             "--artifacts-destination", str(folder / "artifacts"), "--serve-artifacts",
             "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
            cwd=folder, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            env={**os.environ, "PGPASSWORD": parts.password})
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 180  # first start creates the schema (alembic migrations)
        while True:
            try:
                urllib.request.urlopen(f"{uri}/health", timeout=2)
                break
            except OSError:
                if proc.poll() is not None or time.time() > deadline:
                    raise RuntimeError(f"mlflow server did not start:\n{_tail(log)}")
                time.sleep(0.5)
        yield MlflowServer(uri, folder / "artifacts")
    finally:
        _stop_group(proc)


# --------------------------------------------------------------------------- the Ray cluster


@dataclass
class RayCluster:
    address: str
    env: dict  # environment for any process that joins: the auth token, nothing inherited from Ray
    head_id: str
    worker_id: str
    node_local: Optional[Path]  # a folder the worker node cannot see; None if it could not be hidden
    hide_error: str = ""


def _can_hide_a_folder(folder: Path) -> str:
    """'' when this process may cover ``folder`` with a tmpfs in a private mount namespace
    (root, or unprivileged user namespaces), else why not."""
    if shutil.which("unshare") is None:
        return "`unshare` (util-linux) is not installed"
    done = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c",
                           'mount -t tmpfs tmpfs "$0"', str(folder)],
                          capture_output=True, text=True, timeout=30)
    return "" if done.returncode == 0 else f"unshare + mount tmpfs failed: {done.stderr.strip()[:300]}"


def _wait_for_log(proc: subprocess.Popen, log: Path, text: str, what: str, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while text not in (log.read_text(errors="replace") if log.is_file() else ""):
        if proc.poll() is not None or time.time() > deadline:
            raise RuntimeError(f"{what} did not start (exit code {proc.poll()}):\n{_tail(log)}")
        time.sleep(0.5)


def _alive_nodes(address: str, env: dict, expected: int) -> list[dict]:
    """The cluster's alive nodes as a short-lived driver sees them, once ``expected`` are up."""
    script = (
        "import json, sys, time, ray\n"
        f"ray.init(address={address!r}, log_to_driver=False)\n"
        "deadline = time.time() + 90\n"
        f"while len([n for n in ray.nodes() if n['Alive']]) < {expected} and time.time() < deadline:\n"
        "    time.sleep(0.5)\n"
        "print(json.dumps([{'id': n['NodeID'], 'ip': n['NodeManagerAddress'],\n"
        "                   'resources': n['Resources']} for n in ray.nodes() if n['Alive']]))\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env,
                          timeout=180, cwd=REPO)
    assert done.returncode == 0, f"a driver could not join the cluster:\n{done.stderr[-3000:]}"
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def ray_cluster():
    root = Path(tempfile.mkdtemp(prefix="tb-ray-", dir=TMP))
    token = root / "auth_token"
    token.write_text(secrets.token_hex(32))
    token.chmod(0o600)
    # RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER is set to 0 in this process by local sweeps (runner's
    # _init_ray), which would make `ray start --address` refuse to join: keep every RAY_ variable
    # of the test process out, and give all members the same token.
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("RAY_") and k != "MLFLOW_TRACKING_URI"}
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token))
    node_local = root / "node-local"
    node_local.mkdir()
    hide_error = _can_hide_a_folder(node_local)
    port = _free_port()
    address = f"{HEAD_IP}:{port}"
    common = ["--object-store-memory", str(100 * 2**20), "--disable-usage-stats", "--block"]
    ray = str(BIN / "ray")
    head_cmd = [ray, "start", "--head", "--node-ip-address", HEAD_IP, "--port", str(port),
                "--num-cpus", "0", "--include-dashboard", "false", "--temp-dir", str(root / "head"),
                *common]
    worker_cmd = [ray, "start", "--address", address, "--node-ip-address", WORKER_IP,
                  "--num-cpus", "2", "--resources", json.dumps({"worker_node": 1}),
                  "--temp-dir", str(root / "worker"), *common]
    if not hide_error:  # the worker's own view of the disk: node-local/ is an empty tmpfs there
        worker_cmd = ["unshare", "--mount", "--propagation", "private", "sh", "-c",
                      'mount -t tmpfs tmpfs "$0" && exec "$@"', str(node_local), *worker_cmd]
    procs: list[subprocess.Popen] = []
    try:
        for name, cmd in (("head", head_cmd), ("worker", worker_cmd)):
            log = root / f"{name}.log"
            with log.open("w") as out:
                procs.append(subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env,
                                              cwd=root, start_new_session=True))
            _wait_for_log(procs[-1], log, "block forever", f"the Ray {name} node")
        nodes = _alive_nodes(address, env, expected=2)
        assert len(nodes) == 2, nodes
        head = next(n for n in nodes if "node:__internal_head__" in n["resources"])
        worker = next(n for n in nodes if "worker_node" in n["resources"])
        assert (head["ip"], worker["ip"]) == (HEAD_IP, WORKER_IP)
        assert "CPU" not in head["resources"] and worker["resources"]["CPU"] == 2
        yield RayCluster(address, env, head["id"], worker["id"],
                         None if hide_error else node_local, hide_error)
    finally:
        for proc in reversed(procs):  # SIGTERM: `ray start --block` stops the node's processes
            _stop(proc)
        _kill_all_mentioning(str(root))  # whatever outlived its node (all of it names root)
        shutil.rmtree(root, ignore_errors=True)


def _cli(cluster: RayCluster, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tuning.cli", *args], capture_output=True,
                          text=True, env=cluster.env, cwd=REPO, timeout=420)


def _output(done: subprocess.CompletedProcess) -> str:
    return f"exit {done.returncode}\nstdout:\n{done.stdout[-4000:]}\nstderr:\n{done.stderr[-6000:]}"


# --------------------------------------------------------------------------- tests


def test_cli_sweep_on_a_two_node_cluster_logs_to_an_mlflow_server(ray_cluster, mlflow_server,
                                                                 tiny_model_dir, tmp_path):
    uri = mlflow_server.uri
    shared = tmp_path / "shared"
    done = _cli(ray_cluster, "sweep", "--name", "cluster", "--address", ray_cluster.address,
                "--tracking-uri", uri, "--storage", str(shared), "--model", tiny_model_dir,
                "--max-length", "64", "--epochs", "2", "--trials", "2", "--scheduler", "none",
                "--max-concurrent", "2")
    assert done.returncode == 0, _output(done)

    client = MlflowClient(uri)  # everything below is read back through the server
    experiment = client.get_experiment_by_name("cluster")
    runs = client.search_runs([experiment.experiment_id], max_results=100)
    parents = [r for r in runs if r.data.tags.get("tunebert.kind") == "sweep"]
    trials = [r for r in runs if r.data.tags.get("tunebert.kind") == "trial"]
    assert len(parents) == 1 and len(trials) == 2
    for run in trials:
        assert run.info.status == "FINISHED"
        # Ray reported where each trial ran: the worker node, never the CPU-less head
        assert run.data.tags["tunebert.node_id"] == ray_cluster.worker_id != ray_cluster.head_id
        assert run.data.tags["tunebert.node_ip"] == WORKER_IP
        for key in TRIAL_METRICS:
            steps = [m.step for m in client.get_metric_history(run.info.run_id, key)]
            assert sorted(steps) == [1, 2], (key, steps)

    parent = parents[0]
    assert parent.info.status == "FINISHED"
    assert parent.info.artifact_uri.startswith("mlflow-artifacts:")  # uploaded to the server
    checkpoint = [a.path for a in client.list_artifacts(parent.info.run_id, "best_checkpoint")]
    assert checkpoint, "no best_checkpoint/ artifacts"
    served = list(mlflow_server.artifacts.rglob("best_checkpoint/*"))
    assert {p.name for p in served} >= {Path(c).name for c in checkpoint}
    label_map = client.download_artifacts(parent.info.run_id, "label_map.json", str(tmp_path))
    assert len(json.loads(Path(label_map).read_text())["names"]) == 12  # the demo intents

    from tuning.tracking.best import reproducing_config

    final = {r.info.run_id: r.data.metrics["best_val_accuracy"] for r in trials}  # best epochs
    top = max(final.values())
    best_configs = [reproducing_config(json.loads(r.data.tags["tunebert.config"]), r.data.metrics)
                    for r in trials if final[r.info.run_id] == top]  # ties: either is a right answer
    assert best_config("cluster", tracking_uri=uri) in best_configs


def test_storage_only_the_driver_sees_is_refused(ray_cluster, mlflow_server, tiny_model_dir):
    if ray_cluster.node_local is None:
        pytest.skip(f"cannot give the worker node its own view of a folder: {ray_cluster.hide_error}")
    storage = ray_cluster.node_local / "runs"
    done = _cli(ray_cluster, "sweep", "--name", "nodelocal", "--address", ray_cluster.address,
                "--tracking-uri", mlflow_server.uri, "--storage", str(storage),
                "--model", tiny_model_dir, "--max-length", "64", "--epochs", "1", "--trials", "1")
    assert done.returncode == EXIT_USER_ERROR, _output(done)
    assert "Traceback" not in done.stderr, _output(done)
    assert "is not shared: 1 of 2 Ray nodes cannot see it" in done.stderr, _output(done)
    assert ray_cluster.worker_id[:12] in done.stderr and ray_cluster.head_id[:12] not in done.stderr
    # refused before anything was recorded or trained, and the probe file is gone
    assert MlflowClient(mlflow_server.uri).get_experiment_by_name("nodelocal") is None
    assert not list(storage.rglob("*tunebert-probe*"))
    assert not (storage / "ray" / "nodelocal" / "tuner.pkl").exists()


# --------------------------------------------------------------------------- which Ray a sweep uses


@dataclass
class RayNodes:
    """Ray nodes a test starts one by one (``ray start --block`` on loopback addresses, token
    auth), all stopped at its end."""

    root: Path
    env: dict
    procs: list

    def _start(self, name: str, cmd: list[str]) -> None:
        log = self.root / f"{name}.log"
        with log.open("w") as out:
            self.procs.append(subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=self.env,
                                               cwd=self.root, start_new_session=True))
        _wait_for_log(self.procs[-1], log, "block forever", f"the Ray {name} node")

    def head(self, ip: str) -> str:
        """A head with no CPUs at ``ip``; returns its address."""
        port = _free_port()
        self._start(f"head-{ip}", [str(BIN / "ray"), "start", "--head", "--node-ip-address", ip,
                                   "--port", str(port), "--num-cpus", "0", "--include-dashboard", "false",
                                   "--temp-dir", str(self.root / f"head-{ip}"), *self.common])
        return f"{ip}:{port}"

    def worker(self, address: str, ip: str, hidden: Optional[Path] = None) -> None:
        """A worker with 2 CPUs; ``hidden``: a folder covered by an empty tmpfs on that node."""
        cmd = [str(BIN / "ray"), "start", "--address", address, "--node-ip-address", ip, "--num-cpus", "2",
               "--temp-dir", str(self.root / f"worker-{ip}"), *self.common]
        if hidden is not None:
            cmd = ["unshare", "--mount", "--propagation", "private", "sh", "-c",
                   'mount -t tmpfs tmpfs "$0" && exec "$@"', str(hidden), *cmd]
        self._start(f"worker-{ip}", cmd)

    common = ["--object-store-memory", str(100 * 2**20), "--disable-usage-stats", "--block"]


@pytest.fixture
def ray_nodes():
    root = Path(tempfile.mkdtemp(prefix="tb-rn-", dir=TMP))
    token = root / "auth_token"
    token.write_text(secrets.token_hex(32))
    token.chmod(0o600)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_") and k != "MLFLOW_TRACKING_URI"}
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token))
    nodes = RayNodes(root, env, [])
    try:
        yield nodes
    finally:
        for proc in reversed(nodes.procs):
            _stop(proc)
        _kill_all_mentioning(str(root))
        shutil.rmtree(root, ignore_errors=True)


def _trial_runs(uri: str, name: str) -> list:
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(name)
    assert experiment is not None, f"no experiment {name!r} in {uri}"
    return [r for r in client.search_runs([experiment.experiment_id], max_results=100)
            if r.data.tags.get("tunebert.kind") == "trial"]


def test_sharded_data_is_tokenized_by_ray_data_on_the_cluster(ray_cluster, mlflow_server, tiny_model_dir,
                                                             tmp_path, shard_demo):
    """A sweep on a cluster tokenizes a folder of shards as a Ray Data job (its tasks run on the
    worker: the head has no CPU), into the token cache on the sweep's shared storage, and its
    trials train from that cache."""
    from trainables.token_cache import CachedSplit

    data = shard_demo(tmp_path / "corpus", validation=False)
    shared = tmp_path / "shared"
    done = _cli(ray_cluster, "sweep", "--name", "sharded", "--address", ray_cluster.address,
                "--tracking-uri", mlflow_server.uri, "--storage", str(shared), "--model", tiny_model_dir,
                "--data", str(data), "--val-fraction", "0.2", "--max-length", "32", "--epochs", "1",
                "--trials", "1", "--scheduler", "none")
    assert done.returncode == 0, _output(done)
    assert "tokenizing 3 file(s) with Ray Data across the cluster" in done.stdout + done.stderr, _output(done)
    caches = sorted(p for p in (shared / "token-cache").iterdir() if not p.name.startswith("."))
    assert [len(CachedSplit(p)) for p in caches] in ([360, 96], [96, 360])  # train (carved inside), test
    (run,) = _trial_runs(mlflow_server.uri, "sharded")
    assert run.info.status == "FINISHED" and run.data.tags["tunebert.node_id"] == ray_cluster.worker_id


def test_an_embedded_sweep_starts_its_own_ray_whatever_ray_address_says(ray_cluster, tiny_model_dir, tmp_path):
    """Without --address the sweep never joins $RAY_ADDRESS (or a `ray start` cluster on the
    machine), which would skip the checks a cluster gets; it says that it ignores it."""
    storage = tmp_path / "runs"
    done = subprocess.run(
        [sys.executable, "-m", "tuning.cli", "sweep", "--name", "embedded", "--storage", str(storage),
         "--model", tiny_model_dir, "--max-length", "64", "--epochs", "1", "--trials", "1",
         "--scheduler", "none"],
        capture_output=True, text=True, cwd=REPO, timeout=420,
        env={**ray_cluster.env, "RAY_ADDRESS": ray_cluster.address})
    assert done.returncode == 0, _output(done)
    (run,) = _trial_runs(f"sqlite:///{storage / 'mlflow.db'}", "embedded")
    # it trained on the sweep's own loopback-only Ray, not on the cluster's worker
    assert run.data.tags["tunebert.node_ip"] == "127.0.0.1"
    assert run.data.tags["tunebert.node_id"] not in (ray_cluster.head_id, ray_cluster.worker_id)
    assert f"RAY_ADDRESS={ray_cluster.address} is set, but without --address" in done.stdout, _output(done)


def test_address_auto_meets_the_rules_of_an_explicit_address(ray_nodes, tiny_model_dir, tmp_path):
    """`--address auto` (here through $RAY_ADDRESS, as in a RayJob) joining a cluster other
    machines can join is refused with a local SQLite store, as the same explicit address is."""
    from ray._private.services import get_node_ip_address

    outward = get_node_ip_address()
    if outward.startswith("127."):
        pytest.skip("this machine has no address beyond loopback")
    address = ray_nodes.head(outward)
    storage = tmp_path / "runs"
    done = subprocess.run(
        [sys.executable, "-m", "tuning.cli", "sweep", "--name", "auto", "--address", "auto",
         "--storage", str(storage), "--model", tiny_model_dir, "--max-length", "64", "--epochs", "1",
         "--trials", "1"],
        capture_output=True, text=True, cwd=REPO, timeout=420, env={**ray_nodes.env, "RAY_ADDRESS": address})
    assert done.returncode == EXIT_USER_ERROR, _output(done)
    assert "Traceback" not in done.stderr, _output(done)
    assert f"--address auto joined the Ray cluster at {address}" in done.stderr, _output(done)
    assert "is a local file" in done.stderr and "--tracking-uri http://HOST:5000" in done.stderr
    assert not (storage / "ray" / "auto" / "tuner.pkl").exists()


def test_a_node_that_joins_later_cannot_train_on_storage_it_cannot_see(ray_nodes, mlflow_server,
                                                                     tiny_model_dir):
    """A cluster that starts with its head alone (docker/cluster.yaml: 0 workers until the
    autoscaler adds them): the start-up probe cannot check other nodes and the sweep says so;
    a worker that joins later without the shared folder gets no trial to train: the trial fails
    at its start, before any epoch, naming the node and the folder."""
    node_local = ray_nodes.root / "node-local"
    node_local.mkdir()
    hide_error = _can_hide_a_folder(node_local)
    if hide_error:
        pytest.skip(f"cannot give the worker node its own view of a folder: {hide_error}")
    address = ray_nodes.head("127.0.0.4")
    log = ray_nodes.root / "sweep.log"
    with log.open("w") as out:
        sweep = subprocess.Popen(
            [sys.executable, "-m", "tuning.cli", "sweep", "--name", "late", "--address", address,
             "--tracking-uri", mlflow_server.uri, "--storage", str(node_local / "runs"),
             "--model", tiny_model_dir, "--max-length", "64", "--epochs", "1", "--trials", "1",
             "--scheduler", "none", "--max-failures", "0", "--wait-for-nodes"],
            stdout=out, stderr=subprocess.STDOUT, env=ray_nodes.env, cwd=REPO, start_new_session=True)
    try:
        _wait_for_log(sweep, log, "only one Ray node is alive", "the sweep's storage warning", timeout=300)
        ray_nodes.worker(address, "127.0.0.5", hidden=node_local)
        sweep.wait(timeout=420)
    finally:
        _stop_group(sweep)
    output = _tail(log, 20000)
    assert "could not be checked against other nodes" in output, output
    (run,) = _trial_runs(mlflow_server.uri, "late")
    assert run.info.status == "FAILED", output
    error = run.data.tags.get("tunebert.error", "")
    assert f"the sweep folder {node_local / 'runs' / 'ray' / 'late'} is not shared with Ray node 127.0.0.5" in error, error
    assert not MlflowClient(mlflow_server.uri).get_metric_history(run.info.run_id, "val_accuracy")  # no epoch


# --------------------------------------------------------------------------- secrets


def test_a_password_in_the_tracking_uri_never_reaches_saved_state(postgres_uri, tiny_model_dir, tmp_path,
                                                                  secret_leaks):
    """A sweep logging straight to PostgreSQL with the password in MLFLOW_TRACKING_URI (the
    command line refuses one): the password is used (the database refuses a wrong one) but is
    nowhere in the sweep folder, neither the saved settings (tunebert_sweep.json) nor Ray's
    pickled and JSON state, nor the output."""
    password = urlsplit(postgres_uri).password
    storage = tmp_path / "runs"
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env["MLFLOW_TRACKING_URI"] = postgres_uri
    done = subprocess.run(
        [sys.executable, "-m", "tuning.cli", "sweep", "--name", "secret",
         "--storage", str(storage), "--model", tiny_model_dir, "--max-length", "64", "--epochs", "1",
         "--trials", "2", "--scheduler", "none"],
        capture_output=True, text=True, cwd=tmp_path, timeout=420, env=env)
    assert done.returncode == 0, _output(done)
    runs = _trial_runs(postgres_uri, "secret")
    assert len(runs) == 2 and all(r.info.status == "FINISHED" for r in runs)
    sweep_dir = storage / "ray" / "secret"
    assert (sweep_dir / "tuner.pkl").is_file() and (sweep_dir / "tunebert_sweep.json").is_file()
    assert list(sweep_dir.glob("experiment_state*.json")) and list(sweep_dir.glob("searcher-state*.pkl"))
    assert secret_leaks(password, storage) == []
    assert password not in done.stdout + done.stderr
    saved = json.loads((sweep_dir / "tunebert_sweep.json").read_text())
    assert saved["tracking_uri"] == postgres_uri.replace(password, "***")
