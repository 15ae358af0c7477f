"""Checkpoints hold tensors and plain values only, and are read back with
``torch.load(weights_only=True)``: a state.pt someone swapped in (an MLflow artifact, a file in the
sweep folder, a model folder) cannot run code, and a missing or half-written one is a clear error."""

import json
import pickle
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from trainables import checkpointing
from trainables.checkpointing import (CONFIG_FILE, LABEL_MAP_FILE, STATE_FILE, load_checkpoint,
                                      restore_rng_states, rng_states, save_checkpoint, shrink_to_model)
from trainables.errors import CheckpointError, UserError

REPO = Path(__file__).resolve().parents[2]


class WritesAMarker:
    """Unpickling this creates ``path``: what a malicious checkpoint would do (with worse code)."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return open, (self.path, "w")


def _model_folder(tmp_path, tiny_model_dir, demo_data, name="model") -> Path:
    from trainables.finetune import build_classifier
    from trainables.hparams import FinetuneConfig

    cfg = FinetuneConfig(model=tiny_model_dir, max_length=64, epochs=1)
    model = build_classifier(cfg, demo_data.num_labels)
    return save_checkpoint(tmp_path / name, model=model, optimizer=None, scheduler=None, scaler=None,
                           epoch=1, config=cfg.to_dict(), label_map=demo_data.label_map.to_dict())


def _swap_in_payload(folder: Path, marker: Path, how: str) -> None:
    """Replace the folder's state.pt with one whose unpickling writes ``marker``."""
    state = folder / STATE_FILE
    if how == "torch.save":  # a real torch zip file, the payload among the tensors
        weights = torch.load(state, weights_only=True)["model"]
        torch.save({"model": weights, "epoch": 1, "extra": WritesAMarker(marker)}, state)
    else:  # a bare pickle, as `torch.load` also accepts
        state.write_bytes(pickle.dumps({"model": WritesAMarker(marker)}))


@pytest.mark.parametrize("how", ["torch.save", "pickle"])
def test_a_pickle_payload_in_state_pt_is_refused_and_never_runs(tmp_path, tiny_model_dir, demo_data, how):
    from tuning.results.selection import load_model_folder

    folder = _model_folder(tmp_path, tiny_model_dir, demo_data)
    marker = tmp_path / "payload-ran"
    _swap_in_payload(folder, marker, how)
    with pytest.raises(CheckpointError) as refused:
        load_checkpoint(folder)
    message = str(refused.value)
    assert str(folder / STATE_FILE) in message and "not loaded" in message, message
    # the way `tunebert predict/select/bench` read a model folder
    with pytest.raises(CheckpointError):
        load_model_folder(folder)
    assert not marker.exists(), "the payload ran"
    # the payload is live: an unrestricted unpickler would have run it
    if how == "torch.save":
        torch.load(folder / STATE_FILE, weights_only=False)
    else:
        pickle.loads((folder / STATE_FILE).read_bytes())
    assert marker.exists()


def test_a_trial_does_not_resume_from_a_swapped_checkpoint(tmp_path, tiny_model_dir, demo_data, tiny_config,
                                                           run_trainable):
    folder = _model_folder(tmp_path, tiny_model_dir, demo_data, "ep1")
    marker = tmp_path / "payload-ran"
    _swap_in_payload(folder, marker, "torch.save")
    with pytest.raises(CheckpointError):
        run_trainable(tiny_config, demo_data, resume_dir=str(folder))
    assert not marker.exists()


def test_predict_cli_refuses_a_swapped_model_with_exit_2(tmp_path, tiny_model_dir, demo_data):
    folder = _model_folder(tmp_path, tiny_model_dir, demo_data)
    marker = tmp_path / "payload-ran"
    _swap_in_payload(folder, marker, "torch.save")
    done = subprocess.run([sys.executable, "-m", "tuning.cli", "predict", str(folder), "set an alarm"],
                          capture_output=True, text=True, cwd=REPO, timeout=300)
    assert done.returncode == 2, done.stderr[-3000:]
    assert "Traceback" not in done.stderr and STATE_FILE in done.stderr, done.stderr[-3000:]
    assert not marker.exists()


@pytest.mark.parametrize("missing", [STATE_FILE, CONFIG_FILE, LABEL_MAP_FILE])
def test_a_missing_file_is_named(tmp_path, tiny_model_dir, demo_data, missing):
    folder = _model_folder(tmp_path, tiny_model_dir, demo_data)
    (folder / missing).unlink()
    with pytest.raises(CheckpointError, match=f"incomplete: {missing} is missing"):
        load_checkpoint(folder)


def test_a_truncated_state_file_is_a_clear_error(tmp_path, tiny_model_dir, demo_data):
    folder = _model_folder(tmp_path, tiny_model_dir, demo_data)
    state = folder / STATE_FILE
    whole = state.read_bytes()
    state.write_bytes(whole[: len(whole) // 2])  # a copy cut short
    with pytest.raises(CheckpointError, match="truncated or corrupt") as refused:
        load_checkpoint(folder)
    assert str(state) in str(refused.value)
    state.write_bytes(whole)
    (folder / CONFIG_FILE).write_text("{not json")
    with pytest.raises(CheckpointError, match=CONFIG_FILE):
        load_checkpoint(folder)
    assert issubclass(CheckpointError, UserError)  # the CLI exits 2 with the message


def test_a_missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nowhere")


def test_rng_states_round_trip_through_a_tensors_only_file(tmp_path):
    """Python's and numpy's generator states are stored as plain lists: the file loads with
    weights_only=True and restoring it continues every stream exactly."""
    random.seed(3), np.random.seed(3), torch.manual_seed(3)
    np.random.standard_normal()  # numpy keeps a cached gaussian: part of its state
    random.gauss(0, 1)
    torch.save(rng_states(), tmp_path / "rng.pt")
    expected = (random.random(), random.gauss(0, 1), np.random.standard_normal(3).tolist(),
                np.random.randint(1 << 30), torch.rand(3).tolist())
    random.seed(99), np.random.seed(99), torch.manual_seed(99)
    restore_rng_states(torch.load(tmp_path / "rng.pt", weights_only=True))
    assert (random.random(), random.gauss(0, 1), np.random.standard_normal(3).tolist(),
            np.random.randint(1 << 30), torch.rand(3).tolist()) == expected


@pytest.mark.parametrize("case", [{"trainable": "finetune", "ema_decay": 0.9},
                                  {"trainable": "contrastive", "mode": "two-stage", "contrastive_epochs": 1}])
def test_every_checkpoint_a_trainable_writes_loads_with_weights_only(tmp_path, tiny_model_dir, demo_data,
                                                                    run_trainable, case):
    from trainables import registry

    values = {"model": tiny_model_dir, "max_length": 64, "epochs": 2, "lr": 1e-3, "batch_size": 32, **case}
    cfg = registry.config_class(values["trainable"]).from_dict(values)
    epochs = getattr(cfg, "total_epochs", cfg.epochs)
    run_trainable(cfg, demo_data, keep={e: str(tmp_path / f"e{e}") for e in range(1, epochs + 1)})
    for epoch in range(1, epochs + 1):
        state = torch.load(tmp_path / f"e{epoch}" / STATE_FILE, weights_only=True)
        assert state["epoch"] == epoch


def test_save_refuses_values_that_would_need_pickle(tmp_path):
    with pytest.raises(TypeError, match=r"\['extra'\]\['callback'\]"):
        save_checkpoint(tmp_path / "c", model=torch.nn.Linear(2, 2), optimizer=None, scheduler=None,
                        scaler=None, epoch=1, config={}, label_map={"names": ["a", "b"]},
                        extra={"callback": print})


def test_shrink_to_model_keeps_the_handed_over_weights_only(tmp_path):
    model = torch.nn.Linear(4, 2)
    best = {k: v + 1 for k, v in model.state_dict().items()}
    optimizer = torch.optim.AdamW(model.parameters())
    model(torch.randn(3, 4)).sum().backward()
    optimizer.step()
    folder = save_checkpoint(tmp_path / "c", model=model, optimizer=optimizer, scheduler=None, scaler=None,
                             epoch=2, config={"trainable": "finetune"}, label_map={"names": ["a", "b"]},
                             extra={"best": {"epoch": 1, "metrics": {"val_accuracy": 0.5}},
                                    "average": {"kind": "ema", "count": 3, "state": dict(best)}},
                             best_model=best)
    before = (folder / STATE_FILE).stat().st_size
    saved = shrink_to_model(folder)
    state = load_checkpoint(folder)
    assert saved == before - (folder / STATE_FILE).stat().st_size > 0
    assert state["optimizer"] is None and state["best_model"] is None and "average" not in state["extra"]
    assert state["extra"]["best"] == {"epoch": 1, "metrics": {"val_accuracy": 0.5}}
    assert state["extra"]["model_only"] is True and state["epoch"] == 2
    for key, value in best.items():  # the best epoch's weights, as model_weights handed over before
        assert torch.equal(checkpointing.model_weights(state)[key], value)
    assert shrink_to_model(folder) == 0  # idempotent
    assert json.loads((folder / CONFIG_FILE).read_text()) == {"trainable": "finetune"}


# -- a kill never costs a trial: torn writes and removals are told from whole checkpoints


def _small_checkpoint(folder: Path, epoch: int = 1) -> Path:
    model = torch.nn.Linear(4, 2)
    optimizer = torch.optim.AdamW(model.parameters())
    return save_checkpoint(folder, model=model, optimizer=optimizer, scheduler=None, scaler=None,
                           epoch=epoch, config={"trainable": "finetune"}, label_map={"names": ["a", "b"]})


def _torn_copies(source: Path, destination: Path):
    """Every folder a copy of ``source`` killed part-way can leave (Ray copies a reported
    checkpoint file by file, in no fixed order, several at once): each subset of its files, and
    each file cut short with the others whole."""
    import itertools
    import shutil

    names = sorted(p.name for p in source.iterdir())
    for count in range(len(names)):
        for subset in itertools.combinations(names, count):
            if set(names) - set(subset) == {checkpointing.MANIFEST_FILE}:
                continue  # every file whole but the list: complete (the next test)
            shutil.rmtree(destination, ignore_errors=True)
            destination.mkdir()
            for name in subset:
                shutil.copy(source / name, destination / name)
            yield f"only {list(subset)}"
    for cut in names:
        shutil.rmtree(destination, ignore_errors=True)
        shutil.copytree(source, destination)
        whole = (source / cut).read_bytes()
        (destination / cut).write_bytes(whole[: len(whole) // 2])
        yield f"{cut} cut short"


def test_an_interrupted_copy_leaves_no_folder_that_looks_complete(tmp_path):
    source = _small_checkpoint(tmp_path / "written")
    assert checkpointing.incomplete_reason(source) is None
    assert (source / checkpointing.MANIFEST_FILE).is_file()
    for case in _torn_copies(source, tmp_path / "checkpoint_000001"):
        assert checkpointing.incomplete_reason(tmp_path / "checkpoint_000001") is not None, case


def test_a_checkpoint_without_its_list_is_complete_when_it_loads_whole(tmp_path):
    """Written before complete.json existed (or copied all but the list): read whole instead."""
    folder = _small_checkpoint(tmp_path / "c")
    (folder / checkpointing.MANIFEST_FILE).unlink()
    assert checkpointing.incomplete_reason(folder) is None
    (folder / STATE_FILE).write_bytes((folder / STATE_FILE).read_bytes()[:100])
    assert "truncated or corrupt" in checkpointing.incomplete_reason(folder)


def test_shrinking_keeps_the_checkpoint_complete(tmp_path):
    folder = _small_checkpoint(tmp_path / "c")
    shrink_to_model(folder)
    assert checkpointing.incomplete_reason(folder) is None
    assert load_checkpoint(folder)["extra"]["model_only"] is True


def test_a_restore_from_a_folder_with_only_config_json_falls_back_to_the_newest_complete_earlier_one(
        tmp_path, caplog):
    """The soak's failure: checkpoint_000001 held config.json alone, checkpoint_000002 beside it
    was complete, and Ray's saved state named checkpoint_000001. The trial resumes from
    checkpoint_000000 (never a newer one: its epochs may not be in Ray's or MLflow's record)."""
    from trainables.entry import resume_point

    trial = tmp_path / "trial"
    for index in range(3):
        _small_checkpoint(trial / f"checkpoint_00000{index}", epoch=index + 1)
    torn = trial / "checkpoint_000001"
    for name in (STATE_FILE, LABEL_MAP_FILE, checkpointing.MANIFEST_FILE):
        (torn / name).unlink()
    with caplog.at_level("WARNING", logger="trainables.entry"):
        chosen = resume_point(torn)
    assert chosen == trial / "checkpoint_000000"
    assert load_checkpoint(chosen)["epoch"] == 1
    assert "checkpoint_000001" in caplog.text and "resumes from" in caplog.text
    assert f"{STATE_FILE} is missing" in caplog.text

    caplog.clear()
    (trial / "checkpoint_000000" / STATE_FILE).unlink()  # no complete earlier one: from scratch
    with caplog.at_level("WARNING", logger="trainables.entry"):
        assert resume_point(torn) is None
    assert "starts again from its first epoch" in caplog.text
    assert resume_point(trial / "checkpoint_000002") == trial / "checkpoint_000002"  # complete: as is


def test_a_trial_restored_from_a_torn_checkpoint_trains_instead_of_failing(tmp_path, tiny_model_dir, demo_data,
                                                                          tiny_config, run_trainable, caplog):
    """The trainable's resume path end to end: Ray hands it a torn checkpoint folder; it trains
    from the complete one before (old code: CheckpointError, the trial retried and FAILED)."""
    from trainables.entry import resume_point

    cfg = tiny_config
    run_trainable(cfg, demo_data, keep={1: str(tmp_path / "trial" / "checkpoint_000000"),
                                        2: str(tmp_path / "trial" / "checkpoint_000001")})
    torn = tmp_path / "trial" / "checkpoint_000001"
    (torn / STATE_FILE).unlink()
    with caplog.at_level("WARNING", logger="trainables.entry"):
        directory = resume_point(torn)
    reports, _ = run_trainable(cfg, demo_data, resume_dir=str(directory))
    assert [r["epoch"] for r in reports] == list(range(2, cfg.last_epoch + 1))


def test_ray_restoring_a_removed_checkpoint_folder_finds_an_empty_one(tmp_path):
    """Ray refuses to restore from a folder that no longer exists (its num_to_keep removed it):
    the trainable class makes it an empty one, which the trial then falls back from."""
    from types import SimpleNamespace

    from trainables import entry

    class Base:
        def restore(self, checkpoint_path):
            self.restored = checkpoint_path
            return True

        def reset_config(self, new_config):
            return True

    gone = tmp_path / "trial" / "checkpoint_000003"
    result = SimpleNamespace(checkpoint=SimpleNamespace(path=str(gone)), metrics={})
    worker = entry.recycled(Base)()
    assert worker.restore(result) is True and worker.restored is result
    assert gone.is_dir() and entry.resume_point(gone) is None
