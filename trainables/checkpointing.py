"""Checkpoints: everything needed to resume a trial exactly where it stopped.

A checkpoint folder holds ``state.pt`` (model, optimizer, scheduler, grad-scaler and RNG states,
the finished epoch), ``config.json`` (the trial's resolved config) and ``label_map.json``.

The model a run hands over is its best validation epoch's (with averaged weights when EMA/SWA is
on), which may differ from the live weights training resumes from: ``best_model`` holds it then,
and ``model_weights(state)`` returns the weights to hand over either way.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

STATE_FILE = "state.pt"
CONFIG_FILE = "config.json"
LABEL_MAP_FILE = "label_map.json"


def rng_states() -> dict[str, Any]:
    states = {"python": random.getstate(), "numpy": np.random.get_state(),
              "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def restore_rng_states(states: dict[str, Any]) -> None:
    random.setstate(states["python"])
    np.random.set_state(states["numpy"])
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def save_checkpoint(directory: str | Path, *, model: torch.nn.Module, optimizer, scheduler,
                    scaler, epoch: int, config: dict, label_map: dict,
                    extra: Optional[dict] = None, best_model: Optional[dict] = None) -> Path:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    torch.save(
        {
            # a module, or a state dict (the best epoch's weights after the last epoch)
            "model": model.state_dict() if isinstance(model, torch.nn.Module) else model,
            "optimizer": optimizer.state_dict() if optimizer is not None else None,
            "scheduler": scheduler.state_dict() if scheduler is not None else None,
            "scaler": scaler.state_dict() if scaler is not None else None,
            "epoch": epoch,
            "rng": rng_states(),
            "extra": extra or {},
            "best_model": best_model,
        },
        directory / STATE_FILE,
    )
    (directory / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True))
    (directory / LABEL_MAP_FILE).write_text(json.dumps(label_map, indent=2))
    return directory


def load_checkpoint(directory: str | Path) -> dict[str, Any]:
    directory = Path(directory)
    state = torch.load(directory / STATE_FILE, map_location="cpu", weights_only=False)
    state["config"] = json.loads((directory / CONFIG_FILE).read_text())
    state["label_map"] = json.loads((directory / LABEL_MAP_FILE).read_text())
    return state


def model_weights(state: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The weights a checkpoint hands over: its best epoch's when they differ from the live ones."""
    return state.get("best_model") or state["model"]
