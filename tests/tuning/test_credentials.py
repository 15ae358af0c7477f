"""A password in the tracking URI is never saved or pickled: it is masked in saved state and
supplied again from this process's memory or MLFLOW_TRACKING_URI. (The end-to-end check, a real
sweep against PostgreSQL whose folder is searched for the password, is in test_cluster.py.)"""

import os
import pickle
import subprocess
import sys
from pathlib import Path

import cloudpickle
import pytest

from tuning import credentials, tracking

REPO = Path(__file__).resolve().parents[2]
PASSWORD = "Pw-4f1c9e7b2d"
URI = f"postgresql+psycopg2://mlflow:{PASSWORD}@127.0.0.1:5432/mlflow"
MASKED = "postgresql+psycopg2://mlflow:***@127.0.0.1:5432/mlflow"


@pytest.mark.parametrize("uri, masked", [
    (URI, MASKED),
    ("http://alice:p@ss:w0rd@mlflow.internal:5000", "http://alice:***@mlflow.internal:5000"),
    ("http://mlflow.internal:5000", "http://mlflow.internal:5000"),
    ("sqlite:////tmp/a:b@c/mlflow.db", "sqlite:////tmp/a:b@c/mlflow.db"),
    ("stores http://a:b@h:1/x and postgresql://c:d@e:2/f", "stores http://a:***@h:1/x and postgresql://c:***@e:2/f"),
])
def test_redact_masks_the_password_only(uri, masked):
    assert credentials.redact(uri) == masked
    assert tracking.redact(uri) == masked  # one rule for what is shown and what is saved


def test_reveal_fills_a_masked_uri_from_memory_or_the_environment(monkeypatch):
    monkeypatch.setattr(credentials, "_known", {})
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert credentials.reveal(MASKED) == MASKED  # nothing known: unchanged (the store will say no)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", URI.replace("5432", "6543"))
    assert credentials.reveal(MASKED) == MASKED  # another store's password is not borrowed
    monkeypatch.setenv("MLFLOW_TRACKING_URI", URI)
    assert credentials.reveal(MASKED) == URI
    monkeypatch.setattr(credentials, "_known", {})
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    assert credentials.reveal(URI) == URI  # seen once in this process: remembered
    assert credentials.reveal(MASKED) == URI


def _logger(uri: str):
    return tracking.MlflowTrialLogger(uri, "1", "parent-run", dict, "a-sweep")


@pytest.mark.parametrize("dumps", [pickle.dumps, cloudpickle.dumps])
def test_the_trial_logger_ray_pickles_holds_no_password(dumps, secret_leaks):
    """Ray saves the MLflow logger with the experiment (tuner.pkl); resume unpickles it."""
    blob = dumps(_logger(URI))
    assert not secret_leaks(PASSWORD, blob), "the password was pickled"
    restored = pickle.loads(blob)
    assert restored.uri == MASKED
    assert credentials.reveal(restored.uri) == URI  # this process was given it: it connects


def test_a_restored_logger_takes_the_password_from_the_environment(tmp_path):
    """In a new process (``tunebert resume``) the password comes from MLFLOW_TRACKING_URI."""
    blob = tmp_path / "logger.pkl"
    blob.write_bytes(cloudpickle.dumps(_logger(URI)))
    script = ("import pickle, sys\nfrom tuning import credentials\n"
              f"logger = pickle.loads(open({str(blob)!r}, 'rb').read())\n"
              "print(credentials.reveal(logger.uri))\n")
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    for given, expected in ((None, MASKED), (URI, URI)):
        done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO,
                              env={**env, **({"MLFLOW_TRACKING_URI": given} if given else {})}, timeout=120)
        assert done.returncode == 0, done.stderr[-2000:]
        assert done.stdout.strip().splitlines()[-1] == expected


@pytest.mark.parametrize("command", [["sweep"], ["resume", "s"], ["best", "s"], ["tune"], ["ui"]])
def test_a_password_on_the_command_line_is_refused_before_anything_starts(command, tmp_path, capsys):
    """Process arguments are readable by every user of the machine: the URI with its password
    must come from the environment (MLFLOW_TRACKING_URI), and the error must not echo it."""
    from tuning.cli import EXIT_USER_ERROR, main

    rc = main([*command, "--tracking-uri", URI, "--storage", str(tmp_path / "runs")])
    err = capsys.readouterr().err
    assert rc == EXIT_USER_ERROR
    assert "carries a password on the command line" in err and "MLFLOW_TRACKING_URI" in err
    assert MASKED in err and PASSWORD not in err
    assert not (tmp_path / "runs").exists()  # nothing started, nothing written
