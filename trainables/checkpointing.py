"""Checkpoints: everything needed to resume a trial exactly where it stopped.

A checkpoint folder holds ``state.pt`` (model, optimizer, scheduler, grad-scaler and RNG states,
the finished epoch), ``config.json`` (the trial's resolved config) and ``label_map.json``.

The model a run hands over is its best validation epoch's (with averaged weights when EMA/SWA is
on), which may differ from the live weights training resumes from: ``best_model`` holds it then,
and ``model_weights(state)`` returns the weights to hand over either way.

``state.pt`` holds tensors and plain values only (dicts, lists, tuples, numbers, strings, None;
Python's and numpy's RNG states as lists), so it is read with ``torch.load(weights_only=True)``:
checkpoints come back from MLflow artifacts, shared folders and model folders others hand over,
and unpickling arbitrary objects from such a file would run whatever code it names.
``save_checkpoint`` refuses anything else, so a trial fails when it writes such a value rather than
every reader failing later.

``complete.json``, written last, lists every file of the checkpoint with its size. A folder is
complete only when each listed file is there at that size: Ray copies a reported checkpoint into
the trial's folder file by file (``pyarrow.fs.copy_files``, in no fixed order, several at once)
and deletes one file by file, so a kill during either leaves a folder that a reader must tell
from a whole one (``incomplete_reason``). A folder without the list (written by an older tunebert,
or a copy killed before the list arrived) is complete when it loads whole.
"""

from __future__ import annotations

import json
import os
import pickle
import random
from collections import OrderedDict
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from trainables.errors import CheckpointError
from trainables.model_files import STATE_FILE

CONFIG_FILE = "config.json"
LABEL_MAP_FILE = "label_map.json"
MANIFEST_FILE = "complete.json"
# what a tensors-only state may hold besides containers (torch's weights-only unpickler accepts these)
PLAIN = (torch.Tensor, torch.dtype, torch.device, torch.Size, int, float, bool, str, bytes, type(None))


def rng_states() -> dict[str, Any]:
    """Every generator a trial draws from, as tensors and plain lists."""
    version, internal, gauss_next = random.getstate()
    numpy_state = np.random.get_state(legacy=False)  # MT19937 key, position and cached gaussian
    states = {"python": {"version": version, "internal": list(internal), "gauss_next": gauss_next},
              "numpy": {"bit_generator": numpy_state["bit_generator"],
                        "key": numpy_state["state"]["key"].tolist(), "pos": int(numpy_state["state"]["pos"]),
                        "has_gauss": int(numpy_state["has_gauss"]), "gauss": float(numpy_state["gauss"])},
              "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def restore_rng_states(states: dict[str, Any]) -> None:
    python, numpy_state = states["python"], states["numpy"]
    random.setstate((python["version"], tuple(python["internal"]), python["gauss_next"]))
    np.random.set_state({"bit_generator": numpy_state["bit_generator"],
                         "state": {"key": np.asarray(numpy_state["key"], dtype=np.uint32),
                                   "pos": numpy_state["pos"]},
                         "has_gauss": numpy_state["has_gauss"], "gauss": numpy_state["gauss"]})
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def tensors_only(value: Any, where: str = "state") -> Any:
    """``value`` with numpy scalars and arrays turned into Python numbers and tensors; a
    ``TypeError`` naming the place of anything that would need pickle to load."""
    if isinstance(value, np.ndarray):
        return torch.from_numpy(value.copy())
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, PLAIN):
        return value
    if isinstance(value, dict):
        items = ((k, tensors_only(v, f"{where}[{k!r}]")) for k, v in value.items())
        return OrderedDict(items) if isinstance(value, OrderedDict) else dict(items)
    if isinstance(value, (list, tuple)):
        items = [tensors_only(v, f"{where}[{i}]") for i, v in enumerate(value)]
        return items if isinstance(value, list) else tuple(items)
    raise TypeError(f"{where} is a {type(value).__module__}.{type(value).__qualname__}: a checkpoint "
                    f"holds tensors and plain values only (it is loaded with weights_only=True)")


def _write_state(path: Path, state: dict) -> None:
    """Write ``state.pt`` whole or not at all: a reader never sees half a file."""
    partial = path.with_name(f".{path.name}.partial")
    torch.save(state, partial)
    os.replace(partial, path)


def save_checkpoint(directory: str | Path, *, model: torch.nn.Module, optimizer, scheduler,
                    scaler, epoch: int, config: dict, label_map: dict,
                    extra: Optional[dict] = None, best_model: Optional[dict] = None) -> Path:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = tensors_only({
        # a module, or a state dict (the best epoch's weights after the last epoch)
        "model": model.state_dict() if isinstance(model, torch.nn.Module) else model,
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "scaler": scaler.state_dict() if scaler is not None else None,
        "epoch": epoch,
        "rng": rng_states(),
        "extra": extra or {},
        "best_model": best_model,
    })
    (directory / MANIFEST_FILE).unlink(missing_ok=True)  # a folder being rewritten is incomplete
    _write_state(directory / STATE_FILE, state)
    (directory / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True))
    (directory / LABEL_MAP_FILE).write_text(json.dumps(label_map, indent=2))
    _write_manifest(directory)
    return directory


def _write_manifest(directory: Path) -> None:
    """List the checkpoint's files with their sizes in ``complete.json``, last and atomically."""
    sizes = {name: (directory / name).stat().st_size for name in (STATE_FILE, CONFIG_FILE, LABEL_MAP_FILE)}
    partial = directory / f".{MANIFEST_FILE}.partial"
    partial.write_text(json.dumps({"files": sizes}, indent=2, sort_keys=True))
    os.replace(partial, directory / MANIFEST_FILE)


def _manifest_problem(directory: Path) -> Optional[str]:
    """What ``complete.json`` says is missing or cut short; None when it is all there (or when
    there is no list to check)."""
    manifest = directory / MANIFEST_FILE
    if not manifest.is_file():
        return None
    try:
        files = json.loads(manifest.read_text())["files"]
        listed = {str(name): int(size) for name, size in files.items()}
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError):
        return f"{MANIFEST_FILE} cannot be read"
    for name, size in sorted(listed.items()):
        path = directory / name
        if not path.is_file():
            return f"{name} is missing"
        actual = path.stat().st_size
        if actual != size:
            return f"{name} holds {actual} of its {size} bytes"
    return None


def incomplete_reason(directory: str | Path) -> Optional[str]:
    """Why the checkpoint in ``directory`` cannot be resumed from (missing, cut short, damaged),
    or None when it is complete. Cheap when ``complete.json`` is there (sizes only); a folder
    without it is read whole."""
    directory = Path(directory)
    if not directory.is_dir():
        return "the folder does not exist"
    if (directory / MANIFEST_FILE).is_file():
        return _manifest_problem(directory)
    try:
        load_checkpoint(directory)
    except CheckpointError as exc:
        return str(exc)
    return None


def checkpoint_folders(trial_dir: str | Path) -> list[Path]:
    """A trial's ``checkpoint_<index>`` folders (Ray's names), oldest first."""
    found = [p for p in Path(trial_dir).glob("checkpoint_*") if p.is_dir() and checkpoint_index(p) is not None]
    return sorted(found, key=checkpoint_index)


def checkpoint_index(folder: str | Path) -> Optional[int]:
    """N of a ``checkpoint_<N>`` folder; None for any other name."""
    name = Path(folder).name
    prefix, _, index = name.rpartition("_")
    return int(index) if prefix == "checkpoint" and index.isdigit() else None


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"checkpoint file {path} cannot be read ({exc}); the checkpoint is "
                              f"damaged or was not fully written. Use another checkpoint, or "
                              f"re-train the model.") from None


def load_checkpoint(directory: str | Path) -> dict[str, Any]:
    """The checkpoint in ``directory``, read with ``weights_only=True``. Raises ``CheckpointError``
    (a ``UserError``) saying which file is missing, damaged or unsafe, and what to do."""
    directory = Path(directory)
    if not directory.is_dir():
        raise CheckpointError(f"checkpoint folder {directory} does not exist")
    for name in (STATE_FILE, CONFIG_FILE, LABEL_MAP_FILE):
        if not (directory / name).is_file():
            raise CheckpointError(
                f"checkpoint folder {directory} is incomplete: {name} is missing (a checkpoint holds "
                f"{STATE_FILE}, {CONFIG_FILE} and {LABEL_MAP_FILE}). It was not fully written or "
                f"copied; use another checkpoint (a trial's earlier one, or the sweep's "
                f"best_checkpoint/ artifact), or re-train the model.")
    path = directory / STATE_FILE
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        reason = str(exc).split("WeightsUnpickler error:")[-1].strip().splitlines()[0][:300]
        raise CheckpointError(
            f"{path} was not loaded: it holds more than tensors and plain values ({reason}). "
            f"tunebert never writes such a file, so it was written by an older tunebert or "
            f"replaced by someone else, and unpickling it could run arbitrary code. Re-train the "
            f"model or re-run the trial; if you wrote this file yourself and trust it, convert it "
            f"to plain tensors and values.") from None
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise CheckpointError(
            f"{path} is truncated or corrupt ({str(exc).splitlines()[0][:200]}); it was not fully "
            f"written or copied. Use another checkpoint, or re-train the model.") from None
    if not isinstance(state, dict) or "model" not in state or "epoch" not in state:
        raise CheckpointError(f"{path} is not a tunebert checkpoint: it has no model weights and "
                              f"epoch. Use a folder written by tunebert (a trial checkpoint, "
                              f"`tunebert train --output-dir`, `tunebert select --output-dir`).")
    state["config"] = _read_json(directory / CONFIG_FILE)
    state["label_map"] = _read_json(directory / LABEL_MAP_FILE)
    return state


def shrink_to_model(directory: str | Path) -> int:
    """Rewrite a finished trial's checkpoint to what its best epoch needs: the handed-over weights
    (``model_weights``), the epoch, the RNG and the best-epoch record; no optimizer, scheduler,
    scaler, live or averaged copies. Returns the bytes saved (0 if it was model-only already)."""
    directory = Path(directory)
    path = directory / STATE_FILE
    before = path.stat().st_size
    state = load_checkpoint(directory)
    if state["extra"].get("model_only"):
        return 0
    extra = {k: v for k, v in state["extra"].items() if k != "average"}
    # without its list the folder is checked by reading it whole, which the new state.pt passes:
    # a kill between these steps leaves it complete, either way
    (directory / MANIFEST_FILE).unlink(missing_ok=True)
    _write_state(path, tensors_only({
        "model": model_weights(state), "optimizer": None, "scheduler": None, "scaler": None,
        "epoch": state["epoch"], "rng": state["rng"], "extra": {**extra, "model_only": True},
        "best_model": None}))
    _write_manifest(directory)
    return before - path.stat().st_size


def is_model_only(directory: str | Path) -> bool:
    """Whether the checkpoint was pruned by ``shrink_to_model`` (its trial had ended)."""
    return bool(load_checkpoint(directory)["extra"].get("model_only"))


def model_weights(state: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The weights a checkpoint hands over: its best epoch's when they differ from the live ones."""
    return state.get("best_model") or state["model"]
