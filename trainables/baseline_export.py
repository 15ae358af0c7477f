"""A baseline model (``trainables.tfidf``, ``trainables.bilstm``) as a model folder:
``save_baseline_model``, ``load_baseline_model``, ``is_baseline_folder``.

``trainables.export.save_model`` and ``load_model`` hand baseline models here, so a sweep's best
baseline goes the way every model goes (``tunebert train --output-dir``, the MLflow model,
``tunebert predict``). The folder::

    folder/
      README.md               a short model card
      baseline.safetensors    every tensor of the model (its state dict)
      tokenizer.json, ...     the tokenizer whose ids the model reads (tokenizer.save_pretrained)
      label_map.json          {"names": [...]}: class index -> label
      tunebert.json           "format": "tunebert-baseline", its version, the family
                              (``trainable``), the pad token id, the metrics and the whole config

The model's shape comes from its tensors and its config; the weights are safetensors, so reading
them runs no code. Nothing here imports Ray, MLflow or ``tuning``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

from torch import nn

from trainables import bilstm, registry, tfidf
from trainables.errors import ConfigError, ModelLoadError
from trainables.model_files import (BASELINE_FORMAT, BASELINE_FORMAT_VERSION, BASELINE_WEIGHTS, CARD_FILE,
                                    LABEL_MAP_FILE, MODEL_FILE)
from trainables.model_folder import LoadedModel, check_empty, damaged, from_folder, read_json
from trainables.models import load_tokenizer


def _restored(cfg, state: dict, num_labels: int, meta: dict) -> nn.Module:
    """An empty model of ``cfg``'s family in the shape of ``state``."""
    if cfg.trainable == "bilstm":
        return bilstm.restore(cfg, state, num_labels, int(meta["pad_token_id"]))
    return tfidf.restore(cfg, state, num_labels)


def rebuild_baseline(config: dict, weights: dict, num_labels: int, pad_token_id: int = 0) -> nn.Module:
    """A baseline trial's model from its checkpoint's ``weights`` (``tunebert report``). The pad
    token id only keeps a BiLSTM's padding embedding out of training; it changes no output."""
    cfg = registry.config_class(config["trainable"]).from_dict(config)
    model = _restored(cfg, weights, num_labels, {"pad_token_id": pad_token_id})
    model.load_state_dict(weights)
    return model


def is_baseline_folder(folder: str | Path) -> bool:
    """Whether ``folder/tunebert.json`` names the baseline format (False when it is absent or
    unreadable: the text classifier's loader then says what is wrong with it)."""
    try:
        meta = json.loads((Path(folder) / MODEL_FILE).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(meta, dict) and meta.get("format") == BASELINE_FORMAT


def save_baseline_model(folder: str | Path, model: nn.Module, *, config: dict, label_map: dict,
                        tokenizer, metrics: Optional[dict] = None) -> Path:
    """Write a baseline ``model`` as a model folder (see the module docstring); the arguments are
    ``trainables.export.save_model``'s. ``folder`` must not exist yet, or be empty."""
    from safetensors.torch import save_file  # local: as trainables.export, read when writing only

    folder = Path(folder)
    check_empty(folder)
    cfg = registry.config_class(config["trainable"]).from_dict(config)
    names = label_map.get("names") if isinstance(label_map, dict) else None
    num_labels = model.bias.shape[0] if cfg.trainable == "tfidf" else model.head.out_features
    if not isinstance(names, list) or len(names) != num_labels:
        raise ValueError(f"label_map must be {{'names': [...]}} with one name per output of the "
                         f"model ({num_labels}), but got {label_map!r}")
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(folder)
    save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()},
              str(folder / BASELINE_WEIGHTS), metadata={"format": BASELINE_FORMAT})
    (folder / LABEL_MAP_FILE).write_text(json.dumps(label_map, indent=2))
    meta = {"format": BASELINE_FORMAT, "format_version": BASELINE_FORMAT_VERSION,
            "trainable": cfg.trainable, "num_labels": num_labels, "max_length": cfg.max_length,
            "base_model": cfg.model, "pad_token_id": int(tokenizer.pad_token_id or 0),
            "metrics": dict(metrics or {}), "config": config}
    (folder / MODEL_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    (folder / CARD_FILE).write_text(_card(meta, names))
    return folder


def _card(meta: dict, names: list[str]) -> str:
    what = {"tfidf": "TF-IDF over word-piece n-grams and a logistic regression",
            "bilstm": "a BiLSTM with attention pooling over token embeddings trained from scratch"}
    scores = meta["metrics"]
    return "\n".join([
        "---", "library_name: tunebert", "pipeline_tag: text-classification", "---", "",
        f"# Baseline text classifier ({len(names)} labels)", "",
        f"A cheap baseline trained by tunebert ({meta['trainable']}): {what[meta['trainable']]}, "
        f"reading the token ids of `{meta['base_model']}`'s tokenizer (none of its weights). "
        f"Texts are cut to {meta['max_length']} tokens.", "",
        f"Labels: {', '.join(f'`{n}`' for n in names)}.", "",
        *(["Scores: " + ", ".join(f"{k} {v:.4f}" for k, v in sorted(scores.items())), ""] if scores else []),
        "## How to load", "", "```python", "from tuning.serve.predict import load_model", "",
        "model = load_model(\"path/to/this/folder\")", "model.predict([\"wake me up at seven\"])",
        "```", "", "or `tunebert predict path/to/this/folder \"wake me up at seven\"`.", ""])


def _description(folder: Path) -> tuple[dict, object]:
    """``folder/tunebert.json`` checked (format, version, keys) and the config it holds, built."""
    path = folder / MODEL_FILE
    meta = read_json(path)
    version = meta.get("format_version")
    if not isinstance(version, int) or version > BASELINE_FORMAT_VERSION:
        raise ModelLoadError(f"{folder} holds a baseline model in format version {version!r}; this "
                             f"tunebert reads versions up to {BASELINE_FORMAT_VERSION}: upgrade tunebert")
    missing = [key for key in ("config", "num_labels", "pad_token_id") if key not in meta]
    if missing:
        raise damaged(path, f"lacks {', '.join(map(repr, missing))}")
    try:
        cfg = registry.config_class(meta["config"]["trainable"]).from_dict(meta["config"])
    except (KeyError, TypeError, ConfigError) as exc:
        raise damaged(path, f"holds a \"config\" no training config allows ({exc})") from None
    return meta, cfg


def load_baseline_model(folder: str | Path) -> LoadedModel:
    """The baseline model in ``folder``, on the CPU, in eval mode (``ModelLoadError`` saying what
    is wrong with a damaged folder)."""
    from safetensors import SafetensorError  # local: as trainables.export, read when loading only
    from safetensors.torch import load_file

    folder = Path(folder)
    meta, cfg = _description(folder)
    missing = [n for n in (BASELINE_WEIGHTS, LABEL_MAP_FILE) if not (folder / n).is_file()]
    if missing:
        raise ModelLoadError(f"model folder {folder} is incomplete: {', '.join(missing)} missing. "
                             f"It was not fully written or copied: copy it again, or re-train")
    label_map = read_json(folder / LABEL_MAP_FILE)
    names = label_map.get("names") if isinstance(label_map, dict) else None
    if not isinstance(names, list) or len(names) != meta["num_labels"]:
        raise damaged(folder / LABEL_MAP_FILE, f"must hold {{\"names\": [...]}} with "
                                               f"{meta['num_labels']} labels")
    try:
        state = load_file(str(folder / BASELINE_WEIGHTS))
        model = _restored(cfg, state, len(names), meta)
        model.load_state_dict(state)
    except (SafetensorError, RuntimeError, KeyError, ValueError, OSError) as exc:
        raise damaged(folder / BASELINE_WEIGHTS, f"does not fit a {cfg.trainable} model for "
                                                 f"{len(names)} labels ({str(exc).splitlines()[0][:200]})") from None
    where = str(folder.resolve())  # absolute: a folder named like a model alias stays a folder
    tokenizer = from_folder(folder, "a tokenizer (tokenizer.json, tokenizer_config.json)",
                            lambda: load_tokenizer(where))
    return LoadedModel(model.eval(), meta["config"], label_map, tokenizer, "single", folder)
