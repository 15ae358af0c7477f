"""Sweep settings as saved for resume: absolute paths, the MLflow store remembered without its
password, and resume refusing another store."""

import json

import pytest

from trainables.data import DataConfig
from trainables.errors import ConfigError
from tuning.config import SWEEP_FILE, SweepConfig, load_saved_sweep, resume_store


def test_a_new_sweep_saves_absolute_paths_and_its_store(tmp_path, monkeypatch):
    (tmp_path / "data").mkdir()
    (tmp_path / "space.yaml").write_text("lr: {low: 1.0e-5, high: 1.0e-4}\n")
    (tmp_path / "good.yaml").write_text("lr: 1.0e-4\n")
    (tmp_path / "my-bert").mkdir()
    (tmp_path / "minilm-l6").mkdir()  # a folder named like an alias: the alias still wins
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg = SweepConfig(name="s", storage="runs", data=DataConfig("data"), space_file="space.yaml",
                      warm_start=("llrd_warmup", "good.yaml"), model="my-bert")
    cfg.anchored().save()
    saved = json.loads((tmp_path / "runs" / "ray" / "s" / SWEEP_FILE).read_text())
    assert saved["model"] == str(tmp_path / "my-bert")
    for name in ("minilm-l6", "bert-base-uncased", "org/some-bert"):
        assert SweepConfig(name="s", storage="runs", model=name).anchored().model == name
    assert saved["storage"] == str(tmp_path / "runs")
    assert saved["data"]["source"] == str(tmp_path / "data")
    assert saved["space_file"] == str(tmp_path / "space.yaml")
    assert saved["warm_start"] == ["llrd_warmup", str(tmp_path / "good.yaml")]
    assert saved["tracking_uri"] == f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}"
    # a relative SQLite store named on the command line is anchored too
    relative = SweepConfig(name="s", storage="runs", tracking_uri="sqlite:///other.db").anchored()
    assert relative.tracking_uri == f"sqlite:///{tmp_path / 'other.db'}"


def test_the_environments_store_is_remembered(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.internal:5000")
    SweepConfig(name="s", storage=str(tmp_path)).anchored().save()
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    saved = load_saved_sweep("s", str(tmp_path))
    assert saved.tracking_uri == "http://mlflow.internal:5000"
    assert resume_store("s", saved.tracking_uri, None) == "http://mlflow.internal:5000"


def test_a_password_is_not_saved_and_comes_back_from_the_environment(tmp_path, monkeypatch):
    uri = "postgresql://carol:s3cret-x@127.0.0.1:5999/sweeps"
    SweepConfig(name="s", storage=str(tmp_path), tracking_uri=uri).anchored().save()
    text = (tmp_path / "ray" / "s" / SWEEP_FILE).read_text()
    assert "s3cret-x" not in text
    saved = load_saved_sweep("s", str(tmp_path)).tracking_uri
    assert saved == "postgresql://carol:***@127.0.0.1:5999/sweeps"
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with pytest.raises(ConfigError, match="whose password is not saved.*set MLFLOW_TRACKING_URI"):
        resume_store("s", saved, None)
    assert resume_store("s", saved, uri) == uri  # --tracking-uri with the password
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    assert resume_store("s", saved, None) == uri


def test_resume_refuses_another_store(tmp_path):
    saved = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with pytest.raises(ConfigError, match=r"sweep 's' logs to the MLflow store sqlite:///.*mlflow\.db, "
                                          r"but --tracking-uri names http://elsewhere:5000"):
        resume_store("s", saved, "http://elsewhere:5000")
    assert resume_store("s", saved, saved) == saved
    assert resume_store("s", None, "http://x:5000") == "http://x:5000"  # saved before stores were


@pytest.mark.parametrize("kwargs, message", [
    ({"gpus_per_trial": float("nan")}, "`gpus_per_trial` (--gpus-per-trial) must be a finite number, but got nan"),
    ({"gpus_per_trial": float("inf")}, "`gpus_per_trial` (--gpus-per-trial) must be a finite number, but got inf"),
    ({"gpus_per_trial": -0.5}, "`gpus_per_trial` (--gpus-per-trial) must be a fraction in [0, 1]"),
    ({"cpus_per_trial": float("nan")}, "`cpus_per_trial` (--cpus-per-trial) must be a finite number, but got nan"),
    ({"cpus_per_trial": float("inf")}, "`cpus_per_trial` (--cpus-per-trial) must be a finite number, but got inf"),
    ({"cpus_per_trial": 0.001}, "`cpus_per_trial` (--cpus-per-trial) must be at least 0.1, but got 0.001"),
])
def test_trial_resources_must_be_finite_and_schedulable(kwargs, message):
    """Issue 21: `--gpus-per-trial nan` passed every comparison and the sweep ran."""
    with pytest.raises(ConfigError) as info:
        SweepConfig(name="s", **kwargs)
    assert message in str(info.value)
    assert SweepConfig(name="s", cpus_per_trial=0.5, gpus_per_trial=0.25).cpus_per_trial == 0.5


def test_a_ray_address_password_is_used_but_never_saved_or_logged(tmp_path):
    """Issue 21: `--address ray://user:pw@host` was saved (and logged to MLflow) as it was given."""
    cfg = SweepConfig(name="s", storage=str(tmp_path), address="ray://user:s3cret@head:10001")
    assert cfg.address == "ray://user:s3cret@head:10001"  # what ray.init connects with
    assert cfg.to_dict()["address"] == "ray://user:***@head:10001"  # MLflow params, saved state
    saved = cfg.save().read_text()
    assert "s3cret" not in saved and "ray://user:***@head:10001" in saved
    # read back in this process, the masked address gets its password again
    assert SweepConfig.from_dict(cfg.to_dict()).address == "ray://user:s3cret@head:10001"
    assert SweepConfig(name="s", address="auto").to_dict()["address"] == "auto"


def test_eval_every_is_a_checked_sweep_setting_that_reaches_sweep_and_tune(tmp_path):
    """Budgets in steps (issue 24): --eval-every N (steps) or Nex (examples), kept in one written
    form, saved with the sweep, refused with a message where it cannot work."""
    from tuning.cli import build_parser
    from tuning.settings import sweep_settings

    assert SweepConfig(name="s").eval_every is None  # per epoch, the default
    assert SweepConfig(name="s", eval_every="20_000 examples").eval_every == "20000ex"
    assert SweepConfig(name="s", eval_every=0).eval_every is None
    cfg = SweepConfig(name="s", storage=str(tmp_path), eval_every="500", epochs=1, grace_period=3)
    cfg.save()
    assert load_saved_sweep("s", str(tmp_path)).eval_every == "500"  # grace_period counts rounds
    with pytest.raises(ConfigError, match=r"`eval_every` \(--eval-every\) must be N or 'N steps'.*'soon'"):
        SweepConfig(name="s", eval_every="soon")
    with pytest.raises(ConfigError, match="--eval-every 100.*finetune only, but got 'contrastive'"):
        SweepConfig(name="s", eval_every="100", trainable="contrastive")
    with pytest.raises(ConfigError, match="cannot mutate `batch_size` with --eval-every"):
        SweepConfig(name="s", eval_every="100", scheduler="pbt", num_trials=4,
                    mutate=("lr", "batch_size"))
    # PBT's interval counts rounds too: not bounded by epochs
    assert SweepConfig(name="s", eval_every="100", scheduler="pbt", num_trials=4, epochs=1,
                       perturbation_interval=2).perturbation_interval == 2
    args = build_parser().parse_args(["sweep", "--eval-every", "2000ex"])
    assert SweepConfig(name="s", **sweep_settings(args)).eval_every == "2000ex"
    for command in ("sweep", "tune"):  # tune builds its sweep with sweep_settings too
        assert build_parser().parse_args([command, "--eval-every", "500"]).eval_every == "500"
        assert build_parser().parse_args([command]).eval_every is None


def test_workers_per_trial_is_a_checked_sweep_setting_that_reaches_sweep_and_tune(tmp_path):
    """Trials over several workers (issue 24): --workers-per-trial, or a whole --gpus-per-trial
    above 1 (the GPUs are the workers), saved with the sweep, refused where it cannot work."""
    from tuning.cli import build_parser
    from tuning.settings import sweep_settings

    assert SweepConfig(name="s").workers_per_trial == 1
    assert SweepConfig(name="s", gpus_per_trial=2).workers_per_trial == 2
    assert SweepConfig(name="s", gpus_per_trial=2, workers_per_trial=2).workers_per_trial == 2
    cfg = SweepConfig(name="s", storage=str(tmp_path), gpus_per_trial=4)
    cfg.save()
    assert load_saved_sweep("s", str(tmp_path)).workers_per_trial == 4
    for bad in (0, -1, 1.5, True, "2"):
        with pytest.raises(ConfigError, match=r"`workers_per_trial` \(--workers-per-trial\) must be an integer >= 1"):
            SweepConfig(name="s", workers_per_trial=bad)
    for gpus, workers in ((0.5, 2), (1, 2), (2, 3)):
        with pytest.raises(ConfigError, match=rf"each worker one whole GPU.*gpus_per_trial={gpus:g}, "
                                              rf"workers_per_trial={workers}"):
            SweepConfig(name="s", gpus_per_trial=gpus, workers_per_trial=workers)
    with pytest.raises(ConfigError, match="only finetune trials can do, but the sweep's trainable is 'contrastive'"):
        SweepConfig(name="s", workers_per_trial=2, trainable="contrastive")
    args = build_parser().parse_args(["sweep", "--workers-per-trial", "2", "--cpus-per-trial", "0.5"])
    assert SweepConfig(name="s", **sweep_settings(args)).worker_group.total() == {"CPU": 1.0}
    for command in ("sweep", "tune"):  # tune builds its sweep with sweep_settings too
        assert build_parser().parse_args([command, "--workers-per-trial", "3"]).workers_per_trial == 3
        assert build_parser().parse_args([command]).workers_per_trial == 1
