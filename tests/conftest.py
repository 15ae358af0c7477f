"""Shared fixtures: a tiny randomly initialised BERT (no downloads), data, a temp MLflow store, Ray.

The tiny model uses the packaged all-MiniLM-L6-v2 tokenizer (bert-base-uncased vocabulary) so
texts tokenize exactly as with the real default model.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
MASSIVE = REPO.parent / "shared" / "data" / "massive-en"

os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")
# the suite runs offline: no usage reports from Ray or MLflow (on a network that drops packets
# rather than refusing them, each attempt would wait for its timeout)
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "1")


@pytest.fixture(scope="session", autouse=True)
def _console():
    """Messages print as the CLI prints them (``tuning.console``), also from library calls."""
    from tuning import console

    console.setup(0)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> str:
    """A 2-layer, hidden-32 BERT saved as a Hugging Face folder, built once per test run."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    from trainables.models import resolve_model

    folder = tmp_path_factory.mktemp("tiny-bert")
    tokenizer = AutoTokenizer.from_pretrained(resolve_model("minilm-l6"))
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=64, max_position_embeddings=128)
    torch.manual_seed(0)
    BertModel(config, add_pooling_layer=False).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="session")
def _demo_tokenized(tiny_model_dir):
    from trainables.data import DataConfig, load_raw_splits, tokenize_splits
    from trainables.models import load_tokenizer

    raw = load_raw_splits(DataConfig("demo"))
    return tokenize_splits(raw, load_tokenizer(tiny_model_dir), model=tiny_model_dir, max_length=64)


@pytest.fixture
def demo_data(_demo_tokenized):
    """The built-in demo data tokenized for the tiny model (a fresh copy per test)."""
    return copy.deepcopy(_demo_tokenized)


@pytest.fixture
def tiny_config(tiny_model_dir):
    from trainables.hparams import FinetuneConfig

    return FinetuneConfig(model=tiny_model_dir, epochs=2, lr=1e-3, batch_size=32, max_length=64)


@pytest.fixture
def mlflow_uri(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


@pytest.fixture(scope="session")
def fail_marker_path(tmp_path_factory) -> Path:
    """Where the reliability tests put a fault-injection marker (see trainables.finetune)."""
    return tmp_path_factory.mktemp("faults") / "fail_at"


@pytest.fixture
def fail_marker(fail_marker_path):
    fail_marker_path.unlink(missing_ok=True)
    yield fail_marker_path
    fail_marker_path.unlink(missing_ok=True)


def ray_env(fail_marker_path) -> dict:
    return {"env_vars": {"TUNEBERT_FAIL_MARKER": str(fail_marker_path),
                         "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0"}}


@pytest.fixture
def ray_runtime_env(fail_marker_path) -> dict:
    return ray_env(fail_marker_path)


def _local_ray(fail_marker_path):
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
                 runtime_env=ray_env(fail_marker_path))
    return ray


@pytest.fixture
def ray_local(fail_marker_path):
    """A local Ray for in-process end-to-end tests; started once and shared, unless a
    multi-node test shut it down."""
    yield _local_ray(fail_marker_path)


@pytest.fixture(scope="module")
def ray_local_module(fail_marker_path):
    """The same local Ray, for a module-scoped fixture that runs one sweep for several tests."""
    yield _local_ray(fail_marker_path)


@pytest.fixture(scope="session", autouse=True)
def _ray_shutdown_at_exit():
    yield
    import sys

    if "ray" in sys.modules:
        sys.modules["ray"].shutdown()


@pytest.fixture(scope="session")
def massive_dir() -> Path:
    if not (MASSIVE / "train.jsonl").is_file():
        pytest.skip(f"MASSIVE not found at {MASSIVE}")
    return MASSIVE


class MlflowServer:
    """A real ``mlflow server`` on 127.0.0.1 (SQLite behind it, in ``folder``) that a test can
    stop (SIGKILL, as a crash) and start again on the same port and store."""

    def __init__(self, folder: Path):
        import socket

        self.folder = folder
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.uri = f"http://127.0.0.1:{self.port}"
        self.db = folder / "server.db"
        self.proc = None

    def start(self, timeout: float = 90) -> "MlflowServer":
        import subprocess
        import sys
        import time
        import urllib.request

        mlflow_bin = Path(sys.executable).parent / "mlflow"
        self.proc = subprocess.Popen(
            [str(mlflow_bin), "server", "--backend-store-uri", f"sqlite:///{self.db}",
             "--artifacts-destination", str(self.folder / "served-artifacts"), "--host", "127.0.0.1",
             "--port", str(self.port), "--workers", "1"],
            cwd=self.folder, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.time() + timeout
        while time.time() < deadline:
            try:
                urllib.request.urlopen(f"{self.uri}/health", timeout=1)
                return self
            except Exception:
                time.sleep(0.3)
        self.stop()
        raise RuntimeError("mlflow server did not start")

    def stop(self) -> None:
        import signal

        if self.proc is not None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait()
            self.proc = None


@pytest.fixture
def mlflow_server(tmp_path):
    """A started ``MlflowServer``; stopped at the end of the test."""
    server = MlflowServer(tmp_path).start()
    yield server
    server.stop()


@pytest.fixture
def run_trainable():
    """Train a config with its family's ``fit`` on CPU, collecting every epoch's report; with
    ``keep={epoch: folder}`` the checkpoints of those epochs are written there."""
    import torch

    from trainables import registry

    def run(cfg, data, resume_dir=None, keep=None):
        reports = []

        def report(metrics, write):
            reports.append(metrics)
            if keep is not None and metrics["epoch"] in keep:
                write(keep[metrics["epoch"]])

        fit = registry.fit_function(cfg.trainable)
        model = fit(cfg, data, device=torch.device("cpu"), report=report, resume_dir=resume_dir)
        return reports, model

    return run


def _encodings_of(secret: str) -> list[bytes]:
    """A secret as it could appear in a file: raw, hex (Ray hex-encodes cloudpickled objects in
    its JSON state) and base64 at the three byte alignments."""
    import base64

    raw = secret.encode()
    found = [raw, raw.hex().encode(), raw.hex().upper().encode()]
    for shift in range(3):
        encoded = base64.b64encode(b"\0" * shift + raw)[4 * ((shift + 2) // 3):-4]
        if len(encoded) >= 8:
            found.append(encoded)
    return found


@pytest.fixture
def secret_leaks():
    """``secret_leaks(secret, blob_or_folder)``: where ``secret`` appears (raw, hex or base64) in
    a bytes blob (``['<bytes>']``) or in any file under a folder (their paths); [] if nowhere."""
    def find(secret: str, where) -> list[str]:
        encodings = _encodings_of(secret)
        if isinstance(where, (bytes, bytearray)):
            return ["<bytes>"] if any(e in where for e in encodings) else []
        return [str(p) for p in sorted(Path(where).rglob("*"))
                if p.is_file() and any(e in p.read_bytes() for e in encodings)]

    return find


SNIPS = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "snips"


def _slice_of_snips(folder: Path, counts: dict[str, int]) -> Path:
    """The first rows of each SNIPS split, in the same layout (SNIPS train is grouped by intent,
    so rows are taken with a stride to keep every intent)."""
    for split, n in counts.items():
        (folder / split).mkdir(parents=True)
        lines = {name: (SNIPS / split / name).read_text().splitlines()
                 for name in ("seq.in", "seq.out", "label")}
        stride = max(1, len(lines["label"]) // n)
        kept = {name: rows[::stride][:n] for name, rows in lines.items()}
        if split != "train":  # only slot types the train slice has: unseen ones are refused
            known = set((folder / "train" / "seq.out").read_text().split())
            keep = [i for i, tags in enumerate(kept["seq.out"]) if set(tags.split()) <= known]
            kept = {name: [rows[i] for i in keep] for name, rows in kept.items()}
        for name, rows in kept.items():
            (folder / split / name).write_text("\n".join(rows) + "\n")
    return folder


@pytest.fixture(scope="session")
def snips_slice(tmp_path_factory) -> Path:
    """A small SNIPS in its own layout: 160 train, about 60 dev and 60 test utterances."""
    return _slice_of_snips(tmp_path_factory.mktemp("snips"), {"train": 160, "dev": 60, "test": 60})


@pytest.fixture(scope="session")
def conll_slice(snips_slice, tmp_path_factory) -> Path:
    """The SNIPS slice's words and tags as CoNLL files (train/dev/test.conll): tags only."""
    folder = tmp_path_factory.mktemp("conll")
    for split in ("train", "dev", "test"):
        words = (snips_slice / split / "seq.in").read_text().splitlines()
        tags = (snips_slice / split / "seq.out").read_text().splitlines()
        lines = ["-DOCSTART- -X- O", ""]
        for w, t in zip(words, tags):
            lines += [f"{word} X {tag}" for word, tag in zip(w.split(), t.split())] + [""]
        (folder / f"{split}.conll").write_text("\n".join(lines))
    return folder


@pytest.fixture
def shard_demo():
    """Writes the demo data as a folder of shards: train in three (the second gzip-compressed),
    validation whole (or none, to carve it), test compressed; returns the folder."""
    import gzip

    def write(folder: Path, *, validation: bool = True) -> Path:
        demo = Path(__file__).resolve().parents[1] / "trainables" / "demo_data"
        rows = {split: (demo / f"{split}.jsonl").read_text().splitlines(keepends=True)
                for split in ("train", "validation", "test")}
        folder.mkdir(parents=True)
        train = rows["train"]
        (folder / "train-00000.jsonl").write_text("".join(train[:120]))
        with gzip.open(folder / "train-00001.jsonl.gz", "wt") as f:
            f.write("".join(train[120:240]))
        (folder / "train-00002.jsonl").write_text("".join(train[240:]))
        if validation:
            (folder / "validation.jsonl").write_text("".join(rows["validation"]))
        with gzip.open(folder / "test.jsonl.gz", "wt") as f:
            f.write("".join(rows["test"]))
        return folder

    return write


@pytest.fixture
def gloo_workers(tmp_path):
    """``run(script, size, data_file, cfg_file)``: ``size`` processes running the Python source
    ``script`` (argv: rank, size, port, data file, config file, output file; it sets up gloo when
    size > 1 and writes its reports as JSON), each waited for; their JSON outputs in rank order."""
    import json
    import socket
    import subprocess
    import sys

    def run(script: str, size: int, data_file, cfg_file) -> list:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        outs = [tmp_path / f"w{size}-{r}.json" for r in range(size)]
        procs = [subprocess.Popen([sys.executable, "-c", script, str(r), str(size), str(port),
                                   str(data_file), str(cfg_file), str(outs[r])]) for r in range(size)]
        for proc in procs:
            assert proc.wait(timeout=600) == 0
        return [json.loads(o.read_text()) for o in outs]

    return run

