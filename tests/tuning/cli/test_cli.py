"""The `tunebert` command: bad input gives one clear message and exit 2 before Ray starts; a real
sweep through the CLI; best/export; train with a test-split evaluation; resume after SIGKILL."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tuning.cli import main

REPO = Path(__file__).resolve().parents[3]


def cli(*args, cwd=None, timeout=600, env=None):
    return subprocess.run([sys.executable, "-m", "tuning.cli", *args], cwd=cwd or REPO,
                          capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


@pytest.mark.parametrize("args, message", [
    (["sweep", "--data", "/no/such/folder"], "data folder '/no/such/folder' does not exist"),
    (["sweep", "--trials", "0"], "`num_trials` must be an integer >= 1"),
    (["sweep", "--warm-start", "bert"], "unknown preset 'bert'"),
    (["sweep", "--name", "bad name!"], "sweep name 'bad name!' is not allowed"),
    (["sweep", "--epochs", "2", "--grace-period", "3"], "`grace_period` (3) cannot exceed `epochs` (2)"),
    (["sweep", "--space", "/no/space.yaml"], "search-space file '/no/space.yaml' does not exist"),
    (["sweep", "--model", "./no-such-model-dir"], "no such folder"),
    (["sweep", "--label-column", "intent"], "no label column 'intent'"),
    (["resume", "never-ran"], "no sweep named 'never-ran'"),
    (["best", "never-ran"], "no MLflow store at"),
    (["train", "--preset", "nope"], "unknown preset 'nope'"),
    (["train", "--config", "/no/config.yaml"], "no such file"),
    (["train", "--preset", "baseline", "--set", "lr=-1"], "`lr` must lie in"),
    (["sweep", "--cpus-per-trial", "4096"], "--cpus-per-trial 4096 asks for more CPUs than this machine has"),
    (["sweep", "--gpus-per-trial", "4096"], "--gpus-per-trial 4096 asks for GPUs, but this machine has"),
    (["sweep", "--tracking-uri", "foo://bar"], "--tracking-uri foo://bar is not a store MLflow can use"),
    # issue 21 item 3 (part A): non-finite or unschedulable resources, one column for both,
    # a max_length past the model's 512 positions, a ray:// password in a message
    (["sweep", "--gpus-per-trial", "nan"], "`gpus_per_trial` (--gpus-per-trial) must be a finite number"),
    (["sweep", "--gpus-per-trial", "inf"], "`gpus_per_trial` (--gpus-per-trial) must be a finite number"),
    (["sweep", "--cpus-per-trial", "inf"], "`cpus_per_trial` (--cpus-per-trial) must be a finite number"),
    (["sweep", "--cpus-per-trial", "0.001"], "`cpus_per_trial` (--cpus-per-trial) must be at least 0.1"),
    (["sweep", "--text-column", "label"], "--text-column and --label-column are both 'label'"),
    (["train", "--preset", "baseline", "--text-column", "label"], "--text-column and --label-column are both"),
    (["sweep", "--max-length", "1000"], "`max_length` (--max-length) 1000 is more than model 'minilm-l6' can read"),
    (["train", "--preset", "baseline", "--set", "max_length=1000"], "its position embeddings hold 512 tokens"),
    (["sweep", "--address", "ray://user:s3cret@10.0.0.9:10001"], "--address ray://user:***@10.0.0.9:10001 joins"),
    # issue 21 item 3 (part B): an MLflow store that is a text file, or a folder
    (["best", "s", "--tracking-uri", f"sqlite:///{REPO / 'pyproject.toml'}"],
     f"{REPO / 'pyproject.toml'} is not an SQLite database"),
    (["ui", "--name", "s", "--tracking-uri", f"sqlite:///{REPO / 'pyproject.toml'}"],
     f"{REPO / 'pyproject.toml'} is not an SQLite database"),
    (["sweep", "--tracking-uri", f"sqlite:///{REPO / 'pyproject.toml'}"],
     f"{REPO / 'pyproject.toml'} is not an SQLite database"),
    (["train", "--preset", "hand", "--tracking-uri", f"sqlite:///{REPO / 'pyproject.toml'}"],
     f"{REPO / 'pyproject.toml'} is not an SQLite database"),
    (["report", "s", "--tracking-uri", f"sqlite:///{REPO}"], f"sqlite:///{REPO} is a folder"),
])
def test_bad_input_exits_2_with_a_message(args, message, tmp_path, capsys):
    rc = main([*args, "--storage", str(tmp_path)] if args[0] != "presets" else args)
    err = capsys.readouterr().err
    assert rc == 2
    assert message in err
    assert err.startswith(f"tunebert {args[0]}: error:")
    assert not (tmp_path / "ray").exists()  # nothing was started


def _bad_data(folder: Path, case: str) -> None:
    """A data folder with one of issue 21's bad inputs (each ended in a traceback before)."""
    folder.mkdir()
    rows = [{"text": f"text {i}", "label": "ab"[i % 2]} for i in range(20)]
    train = {"list-label": rows + [{"text": "hi", "label": ["a", "b"]}],
             "deep": rows + [{"text": "x", "label": [[[0]]]}],
             "no-validation": [{"text": "a", "label": "x"}, {"text": "b", "label": "y"}]}.get(case, rows)
    lines = [json.dumps(r) for r in train]
    if case == "deep":
        lines[-1] = '{"text": "x", "label": ' + "[" * 100000 + "]" * 100000 + "}"
    for split, text in (("train", "\n".join(lines)), ("test", "\n".join(json.dumps(r) for r in rows))):
        (folder / f"{split}.jsonl").write_text(text + "\n")
    if case == "two-train-files":
        (folder / "train.csv").write_text("text,label\nq,a\nr,b\n")


@pytest.mark.parametrize("command, case, message", [
    ("sweep", "list-label", "row 21: the label in column 'label' is a list (['a', 'b'])"),
    ("sweep", "deep", "train.jsonl, line 21: JSON nested too deeply to read"),
    ("sweep", "no-validation", "has no validation split, and none can be carved from its 2 rows"),
    ("train", "no-validation", "has no validation split, and none can be carved from its 2 rows"),
    ("tune", "no-validation", "has no validation split, and none can be carved from its 2 rows"),
    ("sweep", "two-train-files", "has 2 files for the train split: train.jsonl, train.csv"),
    ("train", "two-train-files", "has 2 files for the train split: train.jsonl, train.csv"),
])
def test_bad_data_exits_2_with_a_message(command, case, message, tiny_model_dir, tmp_path, capsys):
    """Issue 21 item 3: each of these data folders ended in a traceback (or, two train files, in a
    silent choice of one); now one line that says what, where and how to fix, before Ray starts."""
    _bad_data(tmp_path / "data", case)
    extra = ["--preset", "baseline", "--output-dir", str(tmp_path / "out")] if command == "train" else \
        ["--max-length", "64"]
    rc = main([command, "--data", str(tmp_path / "data"), "--model", tiny_model_dir, *extra,
               "--storage", str(tmp_path)])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith(f"tunebert {command}: error:"), err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "ray").exists() and not (tmp_path / "out").exists()


@pytest.mark.parametrize("command", ["resume", "select"])
@pytest.mark.parametrize("torn", ['{"name": "s", "trainable": "fine', '[]',
                                  '{"name": "s", "note": "caf\xe9"}'])
def test_a_damaged_saved_sweep_exits_2_naming_the_file(command, torn, tmp_path, capsys):
    """The sweep's saved settings cut short, not a mapping, or not UTF-8 (issue 21 item 3)."""
    saved = tmp_path / "ray" / "s" / "tunebert_sweep.json"
    saved.parent.mkdir(parents=True)
    saved.write_bytes(torn.encode("latin-1"))
    assert main([command, "s", "--storage", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"tunebert {command}: error: the saved settings of sweep 's', {saved}, "
                          f"are damaged") and "Restore it from a backup" in err
    assert saved.read_bytes() == torn.encode("latin-1")  # left as it was
    assert sorted(p.name for p in saved.parent.iterdir()) == ["tunebert_sweep.json"]


def test_bad_space_file_from_the_shell_has_no_traceback(tmp_path):
    space = tmp_path / "s.yaml"
    space.write_text("lr: {low: 0.1, high: 0.01}\n")
    proc = cli("sweep", "--space", str(space), "--storage", str(tmp_path))
    assert proc.returncode == 2
    assert "`lr`: `low <= high` must hold, but got (low=0.1, high=0.01)" in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    assert "Ray" not in proc.stdout


def test_space_and_presets_print_yaml(capsys):
    assert main(["space"]) == 0
    space = yaml.safe_load(capsys.readouterr().out)
    assert space["lr"] == {"low": 1e-5, "high": 3e-4, "log": True}
    assert main(["presets"]) == 0
    assert "llrd_warmup" in capsys.readouterr().out


@pytest.mark.slow
def test_cli_sweep_best_export_and_train(tiny_model_dir, tmp_path):
    # data as people often have it: a folder with train.csv and test.csv only, no validation
    import csv

    from trainables.data import DataConfig, load_raw_splits

    demo = load_raw_splits(DataConfig("demo"))
    folder = tmp_path / "csv-data"
    folder.mkdir()
    for split in ("train", "test"):
        with open(folder / f"{split}.csv", "w", newline="") as f:
            rows = csv.writer(f)
            rows.writerow(["text", "label"])
            rows.writerows(zip(demo[split].texts, demo[split].labels))
    proc = cli("sweep", "--smoke-test", "--name", "cli", "--model", tiny_model_dir, "--storage",
               str(tmp_path), "--max-length", "64", "--data", str(folder))
    assert proc.returncode == 0, proc.stderr[-3000:]
    # a stratified validation split is carved from train, and said once
    assert proc.stdout.count("train.csv has no validation split: 36 of its 360 rows") == 1
    # the summary ends with the best config (what it changes) and the UI command; Ray's own
    # tables and config boxes stay out of the default console
    lines = proc.stdout.rstrip().splitlines()
    assert lines[-1].startswith(f"[tunebert] MLflow UI: tunebert ui --name cli --storage {tmp_path}")
    assert any(line.startswith("[tunebert] best config (") for line in lines[-6:])
    assert not any(box in proc.stdout for box in ("╭", "Trial status", "View detailed results"))
    assert "trial " in proc.stdout and " started: " in proc.stdout
    # best as JSON equals the Python API's answer
    from tuning.tracking.best import best_config

    proc = cli("best", "cli", "--format", "json", "--storage", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == best_config("cli", storage=str(tmp_path))
    out = tmp_path / "best.yaml"
    assert cli("best", "cli", "-o", str(out), "--storage", str(tmp_path)).returncode == 0
    # train the exported config; the test split is evaluated and logged
    proc = cli("train", "--config", str(out), "--set", "epochs=1", "--storage", str(tmp_path),
               "--output-dir", str(tmp_path / "model"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "test_accuracy" in proc.stdout
    assert (tmp_path / "model" / "tunebert.json").is_file()  # the handed-over model folder
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.get_experiment_by_name("tunebert-train")
    run = client.search_runs([exp.experiment_id])[0]
    assert run.info.status == "FINISHED" and "test_accuracy" in run.data.metrics


def _children(tmp_path, name):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.get_experiment_by_name(name)
    if exp is None:
        return client, []
    runs = client.search_runs([exp.experiment_id], "tags.`tunebert.kind` = 'trial'")
    return client, runs


@pytest.mark.slow
def test_resume_after_the_driver_is_killed(tiny_model_dir, massive_dir, tmp_path):
    """SIGKILL the sweep mid-way; `tunebert resume` finishes exactly the requested trials, keeps
    finished ones, continues the rest from checkpoints, one MLflow run per trial, none RUNNING."""
    args = [sys.executable, "-m", "tuning.cli", "sweep", "--name", "killed", "--model", tiny_model_dir,
            "--storage", str(tmp_path), "--trials", "4", "--epochs", "3", "--scheduler", "none",
            "--max-concurrent", "1", "--max-length", "64", "--data", str(massive_dir)]
    # MASSIVE makes an epoch of the tiny model take seconds: time to kill a trial mid-way
    proc = subprocess.Popen(args, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.time() + 300
    try:
        while time.time() < deadline:
            time.sleep(0.5)
            _, runs = _children(tmp_path, "killed")
            finished = [r for r in runs if r.info.status == "FINISHED"]
            running = [r for r in runs if r.info.status == "RUNNING" and r.data.metrics]
            if finished and running:
                break
        else:
            pytest.fail("sweep never reached a finished and a running trial")
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    client, before = _children(tmp_path, "killed")
    done_before = {r.data.tags["tunebert.trial_id"]: r.info.run_id for r in before
                   if r.info.status == "FINISHED"}
    proc = cli("resume", "killed", "--storage", str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    client, after = _children(tmp_path, "killed")
    assert len(after) == 4  # exactly the requested trials, one run each
    assert len({r.data.tags["tunebert.trial_id"] for r in after}) == 4
    assert all(r.info.status == "FINISHED" for r in after)
    for r in after:
        steps = [m.step for m in client.get_metric_history(r.info.run_id, "val_accuracy")]
        assert sorted(steps) == [1, 2, 3], steps  # nothing lost, nothing logged twice
    for trial_id, run_id in done_before.items():  # finished trials kept their run and were not re-run
        assert any(r.info.run_id == run_id for r in after)
        result_files = list((tmp_path / "ray" / "killed").glob(f"*{trial_id}*/result.json"))
        assert len(result_files[0].read_text().splitlines()) == 3
    # the searcher kept its history: still Optuna, with all four trials
    import pickle

    import optuna

    state_files = sorted((tmp_path / "ray" / "killed").glob("searcher-state-*.pkl"))
    state = pickle.loads(state_files[-1].read_bytes())
    assert isinstance(state["_sampler"], optuna.samplers.TPESampler)
    trials = state["_ot_study"].trials
    assert len(trials) == 4
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    by_lr = sorted(t.params["lr"] for t in trials)
    assert by_lr == sorted(json.loads(r.data.tags["tunebert.config"])["lr"] for r in after)


# ------------------------------------------------------------------ refused before Ray, in seconds


def test_a_single_label_train_split_is_refused_before_ray(tmp_path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    rows = "".join(json.dumps({"text": f"turn on number {i}", "label": "on"}) + "\n" for i in range(5))
    for split in ("train", "validation", "test"):
        (data / f"{split}.jsonl").write_text(rows)
    rc = main(["sweep", "--data", str(data), "--storage", str(tmp_path / "runs")])
    err = capsys.readouterr().err
    assert rc == 2
    assert "has a single label, 'on', in column 'label'" in err and "needs at least 2 classes" in err
    assert not (tmp_path / "runs").exists()  # nothing was started


def test_no_gpu_is_refused_before_ray(tmp_path, capsys):
    import torch

    if torch.cuda.device_count():
        pytest.skip("this machine has a GPU")
    rc = main(["sweep", "--gpus-per-trial", "1", "--storage", str(tmp_path)])
    err = capsys.readouterr().err
    assert rc == 2 and "no GPU that PyTorch can use" in err and "--gpus-per-trial at 0" in err
    assert not (tmp_path / "ray").exists()


@pytest.mark.parametrize("args, message", [
    (["best", "s"], "cannot reach the MLflow store http://127.0.0.1:9"),
    (["train", "--from-sweep", "s"], "cannot reach the MLflow store http://127.0.0.1:9"),
    (["select", "s"], "cannot reach the MLflow store http://127.0.0.1:9"),
    (["report", "s"], "cannot reach the MLflow store http://127.0.0.1:9"),
    (["sweep", "--name", "s"], "cannot reach the MLflow store http://127.0.0.1:9"),
    (["sweep", "--name", "s", "--tracking-uri", "foo://bar"], "--tracking-uri foo://bar is not a store"),
    (["tune", "--name", "s"], "cannot reach the MLflow store http://127.0.0.1:9"),
    # a database store: MLflow's SQLAlchemy store alone retries a refused connection for ~100 s
    (["best", "s", "--tracking-uri", "postgresql+psycopg2://mlflow@127.0.0.1:9/mlflow"],
     "cannot reach the MLflow store postgresql+psycopg2://mlflow@127.0.0.1:9/mlflow"),
    (["sweep", "--name", "s", "--tracking-uri", "postgresql+psycopg2://mlflow@127.0.0.1:9/mlflow"],
     "cannot reach the MLflow store postgresql+psycopg2://mlflow@127.0.0.1:9/mlflow"),
])
def test_an_unusable_tracking_store_fails_within_seconds(args, message, tmp_path):
    """No MLflow server on 127.0.0.1:9: every command that reads or writes MLflow says so in
    seconds (MLflow's own retries wait minutes), before Ray starts."""
    uri = [] if "--tracking-uri" in args else ["--tracking-uri", "http://127.0.0.1:9"]
    start = time.time()
    proc = cli(*args, *uri, "--storage", str(tmp_path), timeout=120)
    assert time.time() - start < 60  # the interpreter and its imports included
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert message in proc.stderr
    assert ("Start the server" if "reach" in message else "Use http://HOST:PORT") in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    assert "Ray" not in proc.stdout + proc.stderr  # Ray never started
    assert not (tmp_path / "ray").exists()


@pytest.mark.parametrize("phase", ["select", "sweep"])
def test_resuming_a_tune_pipeline_whose_store_is_down_fails_within_seconds(phase, tmp_path):
    """`tunebert resume` of a `tunebert tune` pipeline checks its MLflow store first, in every
    phase: past the sweep phase nothing else did, and the selection waited MLflow's minutes."""
    from tuning.config import SweepConfig
    from tuning.results.pipeline import Pipeline, PipelineConfig, PipelineState

    sweep = SweepConfig(name="p", storage=str(tmp_path), tracking_uri="http://127.0.0.1:9")
    Pipeline(sweep=sweep, config=PipelineConfig(), state=PipelineState(phase=phase)).save()
    start = time.time()
    proc = cli("resume", "p", "--storage", str(tmp_path), timeout=300)
    assert time.time() - start < 60, proc.stderr[-2000:]
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "cannot reach the MLflow store http://127.0.0.1:9" in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout


# ------------------------------------------------------------------ sweeps made by hand for the CLI


def _data_folder(folder: Path, labels=("on", "off")) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rows = [{"text": f"turn it {label} please {i}", "label": label} for i in range(6) for label in labels]
    for split in ("train", "validation", "test"):
        (folder / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


def _recorded_sweep(tmp_path, name, data, model, *, uid="uid-1", trial_status="FINISHED"):
    """What a finished sweep leaves: its saved settings (as run_sweep saves them) and an MLflow
    experiment with one finished trial run; no Ray needed."""
    import dataclasses

    from mlflow.tracking import MlflowClient

    from trainables import data as data_module
    from trainables import registry
    from tuning import tracking
    from tuning.config import SWEEP_FILE, SweepConfig

    cfg = SweepConfig(name=name, storage=str(tmp_path), data=data_module.DataConfig(str(data)),
                      model=model, max_length=32, epochs=1, tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    fingerprint = getattr(data_module, "data_fingerprint", lambda raw: None)(  # None before it existed
        data_module.load_raw_splits(cfg.data))
    cfg.sweep_dir.mkdir(parents=True)
    settings = {**cfg.to_dict(), "uid": uid, "data_fingerprint": fingerprint}
    known = {f.name for f in dataclasses.fields(SweepConfig)}  # (the code before had neither)
    (cfg.sweep_dir / SWEEP_FILE).write_text(json.dumps({k: v for k, v in settings.items() if k in known}))
    client = MlflowClient(cfg.tracking_uri)
    experiment_id = client.create_experiment(name, tags={tracking.SWEEP: name, "tunebert.sweep_uid": uid})
    parent = client.create_run(experiment_id, tags={tracking.KIND: "sweep", tracking.SWEEP: name})
    config = registry.resolve_config({"trainable": "finetune", "model": model, "max_length": 32,
                                      "epochs": 1, "batch_size": 16})
    run = client.create_run(experiment_id, tags={
        tracking.KIND: "trial", tracking.SWEEP: name, tracking.TRIAL_ID: "t1",
        tracking.PARENT: parent.info.run_id, tracking.TRAINABLE: "finetune",
        tracking.CONFIG: json.dumps(config, sort_keys=True)})
    for key in ("val_accuracy", "best_val_accuracy"):
        client.log_metric(run.info.run_id, key, 0.5, step=1)
    client.set_terminated(run.info.run_id, trial_status)
    client.set_terminated(parent.info.run_id, "FINISHED")
    return cfg, client


def _train_runs(client):
    experiment = client.get_experiment_by_name("s")
    return client.search_runs([experiment.experiment_id], "tags.`tunebert.kind` = 'train'")


def test_train_from_sweep_uses_the_sweeps_own_data(tiny_model_dir, tmp_path, capsys):
    data = _data_folder(tmp_path / "intents")
    cfg, client = _recorded_sweep(tmp_path, "s", data, tiny_model_dir)
    assert main(["train", "--from-sweep", "s", "--storage", str(tmp_path), "--smoke-test"]) == 0
    [run] = _train_runs(client)
    assert run.data.tags["tunebert.data"] == str(data)  # not the built-in demo data
    # another --data is refused, unless asked for on purpose
    rc = main(["train", "--from-sweep", "s", "--storage", str(tmp_path), "--data", "demo", "--smoke-test"])
    err = capsys.readouterr().err
    assert rc == 2 and f"was tuned on --data '{data}'" in err and "--other-data" in err
    assert main(["train", "--from-sweep", "s", "--storage", str(tmp_path), "--data", "demo",
                 "--other-data", "--smoke-test"]) == 0
    assert sorted(r.data.tags["tunebert.data"] for r in _train_runs(client)) == sorted([str(data), "demo"])
    # the sweep's folder with other contents is refused too
    _data_folder(data, labels=("on", "off", "dim"))
    rc = main(["train", "--from-sweep", "s", "--storage", str(tmp_path), "--smoke-test"])
    assert rc == 2 and "changed since the sweep ran" in capsys.readouterr().err


def test_resume_with_another_store_is_refused(tiny_model_dir, tmp_path, capsys):
    cfg, _ = _recorded_sweep(tmp_path, "s", _data_folder(tmp_path / "intents"), tiny_model_dir)
    (cfg.sweep_dir / "tuner.pkl").write_bytes(b"")  # Ray's state; never read: refused before
    rc = main(["resume", "s", "--storage", str(tmp_path), "--tracking-uri",
               f"sqlite:///{tmp_path / 'other.db'}"])
    err = capsys.readouterr().err
    assert rc == 2
    assert f"sweep 's' logs to the MLflow store sqlite:///{tmp_path / 'mlflow.db'}" in err
    assert "Resume without --tracking-uri" in err
    assert not (tmp_path / "other.db").exists()


@pytest.mark.parametrize("how", ["experiment of another sweep", "experiment deleted"])
def test_resume_into_an_experiment_that_is_not_the_sweeps_is_refused(how, tiny_model_dir, tmp_path, capsys):
    """Issue 11 item 5: the sweep's experiment now holds another sweep of the same name (its
    uid differs), or was deleted: resuming would merge two sweeps or bring old runs back."""
    from tuning import tracking

    cfg, client = _recorded_sweep(tmp_path, "s", _data_folder(tmp_path / "intents"), tiny_model_dir)
    (cfg.sweep_dir / "tuner.pkl").write_bytes(b"")  # Ray's state; never read: refused before
    experiment = client.get_experiment_by_name("s")
    if how == "experiment deleted":
        client.delete_experiment(experiment.experiment_id)
    else:
        client.set_experiment_tag(experiment.experiment_id, tracking.SWEEP_UID, "uid-of-another")
    rc = main(["resume", "s", "--storage", str(tmp_path)])
    err = capsys.readouterr().err
    assert rc == 2, err
    if how == "experiment deleted":
        assert "of this sweep is deleted. Restore it to continue the sweep" in err
        assert f"mlflow experiments restore --experiment-id {experiment.experiment_id}" in err
    else:
        assert "belongs to another sweep of the same name (uid uid-of-another, this one is uid-1)" in err
    assert not (tmp_path / "ray" / "s" / "experiment_state").exists()
    runs = client.search_runs([experiment.experiment_id], run_view_type=3)
    assert len(runs) == 2 and all(r.info.status == "FINISHED" for r in runs)  # untouched


def test_resume_while_another_driver_runs_the_sweep_is_refused(tiny_model_dir, tmp_path, capsys):
    from tuning.sweep import lock as sweep_lock

    cfg, _ = _recorded_sweep(tmp_path, "s", _data_folder(tmp_path / "intents"), tiny_model_dir)
    (cfg.sweep_dir / "tuner.pkl").write_bytes(b"")
    driver = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        (cfg.sweep_dir / sweep_lock.LOCK_FILE).write_text(json.dumps(
            {"pid": driver.pid, "start": sweep_lock._start_time(driver.pid), "host": os.uname().nodename,
             "since": "now"}))
        rc = main(["resume", "s", "--storage", str(tmp_path)])
    finally:
        driver.kill()
        driver.wait()
    err = capsys.readouterr().err
    assert rc == 2 and f"is being run or resumed by another driver (pid {driver.pid}" in err


@pytest.mark.parametrize("command, how", [("sweep", "ray folder deleted"),
                                          ("sweep", "experiment deleted"),
                                          ("tune", "ray folder deleted")])
def test_a_reused_sweep_name_is_refused(command, how, tiny_model_dir, tmp_path):
    import shutil

    cfg, client = _recorded_sweep(tmp_path, "s", _data_folder(tmp_path / "intents"), tiny_model_dir)
    shutil.rmtree(cfg.sweep_dir)
    if how == "experiment deleted":
        client.delete_experiment(client.get_experiment_by_name("s").experiment_id)
    proc = cli(command, "--name", "s", "--model", tiny_model_dir, "--max-length", "32",
               *(["--smoke-test"] if command == "tune" else ["--trials", "1", "--epochs", "1"]),
               "--data", str(tmp_path / "intents"), "--storage", str(tmp_path), timeout=300)
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    expected = "is deleted but still holds the runs of an earlier sweep" if how == "experiment deleted" \
        else "already holds an earlier sweep of that name whose Ray Tune folder is gone"
    assert expected in proc.stderr and "Choose another --name" in proc.stderr
    assert "Ray" not in proc.stdout  # refused before Ray started
    experiment = client.get_experiment_by_name("s")
    assert experiment.lifecycle_stage == ("deleted" if how == "experiment deleted" else "active")
    assert len(client.search_runs([experiment.experiment_id], run_view_type=3)) == 2  # untouched
    assert not cfg.sweep_dir.exists()
