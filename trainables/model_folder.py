"""What every tunebert model folder format shares (``trainables.export``: a text classifier;
``trainables.joint_export``: a multi-task model): the loaded model record, and reading and
writing a folder's files with damage said as such and what to do about it.

A leaf below both formats, so ``trainables.export`` can hand a multi-task folder to
``trainables.joint_export`` without the two importing each other.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from torch import nn

from trainables.errors import ModelLoadError


@dataclass
class LoadedModel:
    """A model folder read back, on the CPU, in eval mode."""

    model: nn.Module      # (batch, seq) ids and mask -> (batch, labels) logits; an ensemble's are
    #                       the log of its mean probabilities (``trainables.ensemble``); a
    #                       multi-task model's: (sentence logits or None, token logits or None)
    config: dict          # the training config (an ensemble's: its first member's)
    label_map: dict       # {"names": [...]}; a multi-task model's also "tag_names": [...]
    tokenizer: Any        # the folder's own (an older checkpoint folder: its base encoder's)
    kind: str             # "single", "ensemble" or "multitask"
    folder: Path


def check_empty(folder: Path) -> None:
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise FileExistsError(f"cannot write a model into {folder}: it exists and is not an empty "
                              f"folder")


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelLoadError(f"cannot read {path} ({exc}); the model folder is damaged or was not "
                             f"fully copied: copy it again, or re-train the model") from None


def damaged(where: str | Path, what: str) -> ModelLoadError:
    return ModelLoadError(f"{where} {what}; the model folder is damaged or was not fully copied: "
                          f"copy it again, or re-train the model")


def from_folder(folder: Path, what: str, load: Callable[[], Any]) -> Any:
    """``load()`` of the folder's encoder or tokenizer, a damaged file said as such: a torn
    safetensors file raises ``SafetensorError``, a torn JSON file a ``ValueError``, and
    ``trainables.models`` words its failures for a hub id, not for a model folder."""
    from safetensors import SafetensorError

    try:
        return load()
    except (ModelLoadError, SafetensorError, OSError, ValueError) as exc:
        cause = exc.__cause__ or exc
        reason = str(cause).splitlines()[0][:300] if str(cause) else ""
        raise damaged(f"model folder {folder}", f"holds {what} that cannot be read "
                                                f"({type(cause).__name__}: {reason})") from None
