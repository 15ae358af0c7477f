"""Nothing tunebert did not write is ever deleted (``tuning.results.outputs``): which folders it may
replace, the swap that leaves the old or the new model whatever the kill, and one pipeline per
output folder. ``train``, ``select`` and ``tune`` follow the rule end to end."""

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from trainables.data import DataConfig, LabelMap
from trainables.errors import ConfigError
from trainables.export import FORMAT, load_model, save_ensemble_model, save_model
from tuning.results import outputs
from tuning.cli import main

REPO = Path(__file__).resolve().parents[3]
LABELS = LabelMap.from_labels(["weather", "music", "alarm"])


def _save(folder: Path, base: str, score: float) -> Path:
    """A real model folder of a tiny classifier; ``score`` tells it apart (in tunebert.json)."""
    from trainables.finetune import build_classifier
    from trainables.hparams import FinetuneConfig
    from trainables.models import load_tokenizer

    cfg = FinetuneConfig(model=base, epochs=1, max_length=16, precision="fp32")
    return save_model(folder, build_classifier(cfg, len(LABELS)), config=cfg.to_dict(),
                      label_map=LABELS.to_dict(), tokenizer=load_tokenizer(base),
                      metrics={"val_accuracy": score})


def _score(folder: Path) -> float:
    return json.loads((folder / "tunebert.json").read_text())["metrics"]["val_accuracy"]


def _fake_model(folder: Path, score: float = 0.5) -> Path:
    """The files of a model folder, without weights worth loading (for the rule alone)."""
    folder.mkdir(parents=True)
    (folder / "tunebert.json").write_text(json.dumps({"format": FORMAT,
                                                      "metrics": {"val_accuracy": score}}))
    for name in ("config.json", "model.safetensors", "head.safetensors", "tokenizer.json"):
        (folder / name).write_text("{}")
    return folder


def _leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if ".tunebert-" in p.name)


@pytest.fixture(scope="module")
def models(tiny_model_dir, tmp_path_factory) -> dict:
    """Two real model folders ("old" scores 0.1, "new" 0.9) and an ensemble of them, to copy."""
    root = tmp_path_factory.mktemp("models")
    old, new = _save(root / "old", tiny_model_dir, 0.1), _save(root / "new", tiny_model_dir, 0.9)
    return {"old": old, "new": new, "ensemble": save_ensemble_model(root / "ensemble", [old, new])}


# --------------------------------------------------------------------------- which folders


def test_what_save_model_and_save_ensemble_model_write_is_all_tunebert_s(models):
    assert outputs.foreign_entries(models["old"]) == []
    assert outputs.foreign_entries(models["ensemble"]) == []
    for kind in ("old", "ensemble"):
        outputs.check_replaceable(models[kind])  # no refusal


@pytest.mark.parametrize("make, foreign", [
    # another tool's checkpoint: a state.pt and a file of the user's, no tunebert manifest
    (lambda d: [d.mkdir(), (d / "state.pt").write_bytes(b"x"), (d / "train.py").write_text("mine")],
     "holds something other than a model tunebert wrote"),
    # a model, with a user's file beside its files
    (lambda d: [_fake_model(d), (d / "notes.txt").write_text("mine")],
     "holds a tunebert model but also notes.txt"),
    # a model, with a sub-folder save_model never writes
    (lambda d: [_fake_model(d), (d / "data").mkdir(), (d / "data" / "x.csv").write_text("1")],
     "holds a tunebert model but also data/"),
    # a tunebert.json that is not tunebert's (another tool's format)
    (lambda d: [d.mkdir(), (d / "tunebert.json").write_text('{"format": "other"}')],
     "holds something other than a model tunebert wrote"),
    # an ensemble with a member folder that holds a user's file
    (lambda d: [d.mkdir(), (d / "ensemble.json").write_text('{"kind": "ensemble"}'),
                _fake_model(d / "member-0"), (d / "member-0" / "notes.txt").write_text("x")],
     "holds a tunebert model but also member-0/notes.txt"),
])
def test_a_folder_holding_anything_tunebert_did_not_write_is_refused(tmp_path, make, foreign):
    target = tmp_path / "out"
    make(target)
    before = sorted(str(p.relative_to(target)) for p in target.rglob("*"))
    with pytest.raises(ConfigError, match="--output-dir") as info:
        outputs.check_output_target(target)
    assert foreign in str(info.value) and str(target) in str(info.value)
    assert sorted(str(p.relative_to(target)) for p in target.rglob("*")) == before


def test_a_missing_or_empty_folder_or_a_model_is_replaceable_and_a_file_is_not(tmp_path):
    outputs.check_replaceable(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    outputs.check_replaceable(tmp_path / "empty")
    outputs.check_replaceable(_fake_model(tmp_path / "model"))
    (tmp_path / "file").write_text("mine")
    with pytest.raises(ConfigError, match="exists and is not a folder"):
        outputs.check_replaceable(tmp_path / "file")


# --------------------------------------------------------------------------- the swap


def test_replacing_swaps_the_new_model_in_and_a_failure_keeps_the_old(tmp_path):
    target = _fake_model(tmp_path / "model", 0.1)
    (tmp_path / "mine.txt").write_text("mine")
    with pytest.raises(RuntimeError, match="disk full"):
        with outputs.replacing(target) as new:
            _fake_model(new, 0.9)
            raise RuntimeError("disk full")
    assert _score(target) == 0.1 and _leftovers(tmp_path) == []
    with outputs.replacing(target) as new:
        assert new.parent == tmp_path and not new.exists()
        _fake_model(new, 0.9)
        assert _score(target) == 0.1  # the old model stays until the new one is complete
    assert _score(target) == 0.9 and _leftovers(tmp_path) == []
    assert (tmp_path / "mine.txt").read_text() == "mine"


def test_a_folder_that_became_foreign_while_training_is_not_replaced(tmp_path):
    target = _fake_model(tmp_path / "model", 0.1)
    with pytest.raises(ConfigError, match="notes.txt"):
        with outputs.replacing(target) as new:
            _fake_model(new, 0.9)
            (target / "notes.txt").write_text("written meanwhile")
    assert (target / "notes.txt").is_file() and _score(target) == 0.1
    assert _leftovers(tmp_path) == []


_KILLED_SWAP = textwrap.dedent("""
    import os, shutil, signal, sys
    from pathlib import Path
    from tuning.results import outputs

    target, source, point = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
    renames = []
    real = outputs._rename

    def rename(src, dst):
        if point == f"before-rename-{len(renames) + 1}":
            os.kill(os.getpid(), signal.SIGKILL)
        real(src, dst)
        renames.append(dst)

    outputs._rename = rename
    with outputs.replacing(target) as new:
        if point == "while-writing":
            new.mkdir()
            shutil.copy(source / "config.json", new / "config.json")  # half a model
            os.kill(os.getpid(), signal.SIGKILL)
        shutil.copytree(source, new)
    if point == "before-removing-the-old":
        raise SystemExit("not killed")
""")


@pytest.mark.parametrize("point, survivor, at_target_before_recover", [
    ("while-writing", 0.1, True),           # the old model was never touched
    ("before-rename-1", 0.1, True),         # the new one complete, the old one not yet moved
    ("before-rename-2", 0.9, False),        # the old one moved aside: the window
])
def test_a_kill_during_the_swap_leaves_the_old_or_the_new_model(models, tmp_path, point, survivor,
                                                                at_target_before_recover):
    target = Path(shutil.copytree(models["old"], tmp_path / "model"))
    (tmp_path / "mine.txt").write_text("mine")
    proc = subprocess.run([sys.executable, "-c", _KILLED_SWAP, str(target), str(models["new"]),
                           point], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert target.is_dir() == at_target_before_recover
    # the next run finishes or undoes the swap before anything else, and cleans up after it
    outputs.check_output_target(target)
    assert _score(target) == survivor and load_model(target).kind == "single"
    assert _leftovers(tmp_path) == [] and (tmp_path / "mine.txt").read_text() == "mine"


def test_recover_leaves_another_running_process_s_swap_and_foreign_folders_alone(tmp_path):
    target = _fake_model(tmp_path / "model", 0.1)
    running = _fake_model(tmp_path / f".model.tunebert-new-{os.getppid()}", 0.9)  # pytest's parent
    dead = 2 ** 22 + 1  # above Linux's default pid_max: no such process
    foreign = tmp_path / f".model.tunebert-new-{dead}"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("mine")
    outputs.recover(target)
    assert running.is_dir() and (foreign / "thesis.tex").is_file() and _score(target) == 0.1


# --------------------------------------------------------------------------- train


def _train_argv(tiny_model_dir, tmp_path, out) -> list[str]:
    return ["train", "--preset", "hand", "--model", tiny_model_dir, "--set", "max_length=32",
            "--set", "epochs=1", "--storage", str(tmp_path / "runs"), "--output-dir", str(out)]


def test_train_refuses_another_tool_s_checkpoint_folder_and_deletes_nothing(tiny_model_dir,
                                                                            tmp_path, capsys):
    project = tmp_path / "project"
    project.mkdir()
    (project / "state.pt").write_bytes(b"another tool's checkpoint")
    (project / "analysis.py").write_text("print('mine')")
    rc = main(_train_argv(tiny_model_dir, tmp_path, project))
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("tunebert train: error: --output-dir")
    assert "holds something other than a model tunebert wrote" in err and "state.pt" in err
    assert "Traceback" not in err
    assert sorted(p.name for p in project.iterdir()) == ["analysis.py", "state.pt"]
    assert not (tmp_path / "runs").exists() or not list((tmp_path / "runs").rglob("*.safetensors"))


def test_train_replaces_an_earlier_model_only_once_the_new_one_is_written(tiny_model_dir, tmp_path,
                                                                         mlflow_uri, monkeypatch):
    import trainables.export
    from tuning.results.train import train_config

    config = {"model": tiny_model_dir, "max_length": 32, "epochs": 1, "batch_size": 32}
    out = tmp_path / "model"
    first = train_config(config, DataConfig("demo"), tracking_uri=mlflow_uri, log_model=False,
                         max_train_examples=32, output_dir=str(out))
    written = (out / "tunebert.json").read_text()

    def fails(folder, *args, **kwargs):
        Path(folder).mkdir()
        (Path(folder) / "config.json").write_text("{}")
        raise OSError("No space left on device")

    monkeypatch.setattr(trainables.export, "save_model", fails)
    with pytest.raises(OSError, match="No space left"):
        train_config({**config, "seed": 5}, DataConfig("demo"), tracking_uri=mlflow_uri,
                     log_model=False, max_train_examples=32, output_dir=str(out))
    assert (out / "tunebert.json").read_text() == written  # the earlier model, untouched
    assert load_model(out).kind == "single" and _leftovers(tmp_path) == []
    monkeypatch.undo()
    second = train_config({**config, "seed": 5}, DataConfig("demo"), tracking_uri=mlflow_uri,
                          log_model=False, max_train_examples=32, output_dir=str(out))
    assert json.loads((out / "tunebert.json").read_text())["config"]["seed"] == 5
    assert second.checkpoint_dir == first.checkpoint_dir == str(out)
    assert _leftovers(tmp_path) == []


# --------------------------------------------------------------------------- select


def _one_trial_selection(monkeypatch, tiny_model_dir, mlflow_uri):
    """Selection without Ray: the sweep's trial list is one given trial (as test_export does)."""
    from mlflow.tracking import MlflowClient

    from tuning.tracking import best

    config = {"trainable": "finetune", "model": tiny_model_dir, "max_length": 32, "epochs": 1,
              "batch_size": 32, "seed": 0}
    MlflowClient(mlflow_uri).create_experiment("fake-sweep")
    trial = best.TrialRun("r0", "trial_0", "finetune", config,
                          {"val_accuracy": 0.5, "val_loss": 1.0}, "", "FINISHED")
    monkeypatch.setattr(best, "top_k", lambda *args, **kwargs: [trial])


def test_select_refuses_a_model_folder_that_is_not_tunebert_s_before_training(
        tiny_model_dir, tmp_path, mlflow_uri, monkeypatch):
    from tuning.results import selection

    _one_trial_selection(monkeypatch, tiny_model_dir, mlflow_uri)

    def must_not_train(*args, **kwargs):
        raise AssertionError("trained although the output folder is refused")

    monkeypatch.setattr("tuning.results.jobs.run_jobs", must_not_train)
    out = tmp_path / "chosen"
    (out / "model").mkdir(parents=True)
    (out / "model" / "state.pt").write_bytes(b"another tool's")
    with pytest.raises(ConfigError, match=r"in --output-dir, the folder .*model' holds something "
                                          r"other than a model tunebert wrote"):
        selection.final_selection("fake-sweep", top_k=1, seeds=2, tracking_uri=mlflow_uri,
                                  storage=str(tmp_path), data=DataConfig("demo"),
                                  max_train_examples=32, output_dir=str(out), ensemble=True)
    assert (out / "model" / "state.pt").read_bytes() == b"another tool's"


def test_select_keeps_the_user_s_files_and_a_failed_hand_over_keeps_the_earlier_model(
        tiny_model_dir, tmp_path, mlflow_uri, monkeypatch):
    from tuning.results import selection

    _one_trial_selection(monkeypatch, tiny_model_dir, mlflow_uri)
    # patched where the hand-over looks it up
    monkeypatch.setattr("tuning.results.handover.ensemble_wins", lambda ensemble, members, mode: True)
    out = tmp_path / "chosen"
    _fake_model(out / "model", 0.1)          # an earlier selection's handed-over model
    _fake_model(out / "seed-1", 0.1)         # and one of its seed models
    (out / "notes.md").write_text("mine")    # the user's, beside them
    (out / "seed-99").mkdir()                # not a seed this selection writes
    (out / "seed-99" / "data.csv").write_text("mine")
    copytree = shutil.copytree

    def copy_fails_for_model(source, destination, *args, **kwargs):
        name = Path(destination).name
        if name == "model" or name.startswith(".model.tunebert-new"):
            raise OSError("No space left on device")
        return copytree(source, destination, *args, **kwargs)

    monkeypatch.setattr(shutil, "copytree", copy_fails_for_model)
    with pytest.raises(OSError, match="No space left"):
        selection.final_selection("fake-sweep", top_k=1, seeds=2, metric="val_loss", mode="max",
                                  tracking_uri=mlflow_uri, storage=str(tmp_path),
                                  data=DataConfig("demo"), max_train_examples=32,
                                  output_dir=str(out), ensemble=True)
    assert _score(out / "model") == 0.1  # not removed before the new one was complete
    assert json.loads((out / "seed-1" / "tunebert.json").read_text())["config"]["seed"] == 1
    assert (out / "notes.md").read_text() == "mine"
    assert (out / "seed-99" / "data.csv").read_text() == "mine"
    assert _leftovers(out) == []


# --------------------------------------------------------------------------- tune


def test_a_second_pipeline_is_refused_the_first_s_output_folder(tiny_model_dir, tmp_path,
                                                                monkeypatch, capsys):
    from tuning.results import pipeline

    started = []
    monkeypatch.setattr(pipeline, "advance", lambda p, until="done": started.append(p) or p)
    monkeypatch.setattr(pipeline, "print_summary", lambda p: None)
    out = tmp_path / "shared-out"

    def tune(name: str) -> int:
        return main(["tune", "--name", name, "--model", tiny_model_dir, "--max-length", "64",
                     "--storage", str(tmp_path / "runs"), "--output-dir", str(out)])

    assert tune("first") == 0  # planned and claimed; its sweep would run now
    capsys.readouterr()
    # the first's sweep runs: its output folder is still empty but for the claim
    assert sorted(p.name for p in out.iterdir()) == [outputs.OWNER_FILE]
    assert tune("second") == 2
    err = capsys.readouterr().err
    assert err.startswith("tunebert tune: error: --output-dir")
    assert "belongs to the pipeline 'first'" in err and "pass another --output-dir" in err
    assert not (tmp_path / "runs" / "ray" / "second").exists()  # refused before Ray
    # the first hands its model over; the second is refused still, and the model survives
    _fake_model(out / "seed-1", 0.9)
    assert tune("second") == 2 and "belongs to the pipeline 'first'" in capsys.readouterr().err
    assert _score(out / "seed-1") == 0.9
    # the first's own selection phase (a resume) may write there
    outputs.claim(out, started[0].owner)


def test_a_pipeline_s_selection_phase_refuses_another_pipeline_s_folder(tiny_model_dir, tmp_path,
                                                                        monkeypatch):
    """A pipeline whose output folder another pipeline claimed after it started (one started
    before claims existed) is refused at its selection phase, and the other's model survives."""
    from tuning.tracking import best
    from tuning.results import pipeline
    from tuning.config import SweepConfig

    def must_not_select(*args, **kwargs):
        raise AssertionError("selected into another pipeline's folder")

    monkeypatch.setattr(best, "top_k", lambda *args, **kwargs: [])
    monkeypatch.setattr("tuning.tracking.sweep_run", lambda *args, **kwargs: None)
    monkeypatch.setattr("tuning.results.selection.final_selection", must_not_select)
    out = tmp_path / "shared-out"
    owner_state = tmp_path / "runs" / "ray" / "first" / pipeline.PIPELINE_FILE
    owner_state.parent.mkdir(parents=True)
    owner_state.write_text("{}")
    outputs.claim(out, outputs.Owner("first", str(owner_state)))
    _fake_model(out / "seed-1", 0.9)
    sweep = SweepConfig(name="second", model=tiny_model_dir, storage=str(tmp_path / "runs"),
                        data=DataConfig("demo")).anchored()
    late = pipeline.Pipeline(sweep, pipeline.PipelineConfig(output_dir=str(out)),
                             pipeline.PipelineState(phase="select", top_k=1, seeds=1))
    with pytest.raises(ConfigError, match="belongs to the pipeline 'first'"):
        pipeline._select_phase(late)
    assert _score(out / "seed-1") == 0.9
    # once the first pipeline is gone (its storage removed), its claim no longer holds
    owner_state.unlink()
    outputs.claim(out, late.owner)
    assert outputs.read_owner(out) == late.owner
