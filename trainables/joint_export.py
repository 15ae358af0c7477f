"""A multi-task model (``trainables.joint_model.MultitaskModel``: one encoder, a sentence head
and/or a token head) as a model folder: ``save_multitask_model``, ``load_multitask_model``.

The folder is a text classifier's folder (``trainables.export``) with a second head::

    folder/
      README.md               the model card: intents, slot types, how to load and predict
      config.json, model.safetensors, tokenizer files   the encoder and tokenizer (save_pretrained)
      head.safetensors        the sentence (intent) head, when the model has one (``head.*``)
      slot_head.safetensors   the token (slot) head, when the model has one (``slot_head.*``)
      label_map.json          {"names": [intents...], "raw_values": [...], "tag_names": [tags...]}
                              as ``trainables.joint.label_maps`` records it
      tunebert.json           "format": "tunebert-multitask", its version, pooling, both head
                              kinds and their size, the sentence normalisation, max_length,
                              the numbers of intents and tags, the encoder's layers, the config

``trainables.export.load_model`` hands such a folder here (its ``tunebert.json`` names the
format); what comes back is a ``LoadedModel`` of kind "multitask" whose ``model`` returns
``(sentence logits or None, token logits or None)`` and whose ``label_map`` holds the tag names
too. A damaged file is a ``ModelLoadError`` saying which file and what to do, as for a text
classifier. Nothing here imports Ray, MLflow or ``tuning``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

from torch import nn

from trainables import registry
from trainables.errors import ConfigError, ModelLoadError
from trainables.joint_model import MultitaskModel
from trainables.model_files import (CARD_FILE, ENCODER_CONFIG_FILE, ENCODER_WEIGHTS, HEAD_FILE,
                                    LABEL_MAP_FILE, MODEL_FILE, MULTITASK_FORMAT,
                                    MULTITASK_FORMAT_VERSION, MULTITASK_KIND, SLOT_HEAD_FILE)
from trainables.model_folder import LoadedModel, check_empty, damaged, from_folder, read_json
from trainables.models import load_encoder, load_tokenizer, num_encoder_layers

# what loading reads from tunebert.json besides the format: absent in a damaged folder
DESCRIPTION_KEYS = ("pooling", "head", "slot_head", "head_hidden", "classifier_dropout",
                    "sentence_norm", "num_labels", "num_tags", "config")
# the head settings tunebert.json repeats from the config (they build the model)
HEAD_KEYS = ("pooling", "head", "slot_head", "head_hidden", "classifier_dropout", "sentence_norm")


def _outputs(head: Optional[nn.Module]) -> int:
    """The number of classes a head predicts (its last Linear layer), 0 without a head."""
    return 0 if head is None else int(head[-1].out_features)


def _checked_label_map(label_map: dict, num_labels: int, num_tags: int) -> dict:
    names = label_map.get("names") if isinstance(label_map, dict) else None
    tags = label_map.get("tag_names") if isinstance(label_map, dict) else None
    if not isinstance(names, list) or len(names) != num_labels or not isinstance(tags, list) \
            or len(tags) != num_tags:
        raise ValueError(f"label_map must be {{'names': [...], 'tag_names': [...]}} with one name "
                         f"per intent ({num_labels}) and one per tag ({num_tags}), as "
                         f"trainables.joint.label_maps gives it, but got {label_map!r}")
    return label_map


def save_multitask_model(folder: str | Path, model: MultitaskModel, *, config: dict,
                         label_map: dict, tokenizer, metrics: Optional[dict] = None) -> Path:
    """Write ``model`` as a multi-task model folder (see the module docstring). ``config``: the
    resolved multitask training config; ``label_map``: ``trainables.joint.label_maps(data)``;
    ``tokenizer``: the one training encoded with; ``metrics`` (optional) go into the card and
    ``tunebert.json``. ``folder`` must not exist yet, or be empty."""
    from safetensors.torch import save_file

    folder = Path(folder)
    check_empty(folder)
    if not isinstance(model, MultitaskModel):
        raise TypeError(f"save_multitask_model needs a MultitaskModel, but got a "
                        f"{type(model).__name__}; a text classifier is saved by "
                        f"trainables.export.save_model")
    cfg = registry.config_class(config["trainable"]).from_dict(config)
    if cfg.trainable != MULTITASK_KIND:
        raise ValueError(f"save_multitask_model needs a multitask training config, but got "
                         f"trainable {cfg.trainable!r}")
    num_labels, num_tags = _outputs(model.head), _outputs(model.slot_head)
    _checked_label_map(label_map, num_labels, num_tags)
    folder.mkdir(parents=True, exist_ok=True)
    model.encoder.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    for head, name in ((model.head, HEAD_FILE), (model.slot_head, SLOT_HEAD_FILE)):
        if head is not None:
            save_file({k: v.detach().cpu().contiguous() for k, v in head.state_dict().items()},
                      str(folder / name), metadata={"format": MULTITASK_FORMAT})
    (folder / LABEL_MAP_FILE).write_text(json.dumps(label_map, indent=2))
    meta = {"format": MULTITASK_FORMAT, "format_version": MULTITASK_FORMAT_VERSION,
            **{key: getattr(cfg, key) for key in HEAD_KEYS},
            "max_length": cfg.max_length, "precision": cfg.precision, "num_labels": num_labels,
            "num_tags": num_tags, "num_layers": num_encoder_layers(model.encoder),
            "base_model": cfg.model, "trainable": cfg.trainable, "metrics": dict(metrics or {}),
            "config": config}
    (folder / MODEL_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    (folder / CARD_FILE).write_text(_card(meta, label_map))
    return folder


def _card(meta: dict, label_map: dict) -> str:
    intents, tags = label_map["names"], label_map["tag_names"]
    types = sorted({t[2:] for t in tags if t != "O"})
    metrics = meta.get("metrics") or {}
    tasks = [f"{len(intents)} intents"] * bool(intents) + [f"{len(types)} slot types"] * bool(tags)
    lines = ["---", "library_name: tunebert", "pipeline_tag: token-classification", "---", "",
             f"# Intent and slot model ({', '.join(tasks)})", "",
             f"Fine-tuned by tunebert (multitask) from `{meta['base_model']}`: one encoder"
             + (f", {meta['pooling']} pooling and a {meta['head']} intent head" if intents else "")
             + (f", a {meta['slot_head']} slot head on each word's first piece (BIO tags)"
                if tags else "")
             + f". Texts are split into words on whitespace and cut to {meta['max_length']} "
               f"tokens.", ""]
    if intents:
        lines += [f"Intents: {', '.join(f'`{n}`' for n in intents)}.", ""]
    if tags:
        lines += [f"Slot types: {', '.join(f'`{t}`' for t in types) or '(none)'}.", ""]
    if metrics:
        lines += ["Scores: " + ", ".join(f"{k} {v:.4f}" for k, v in sorted(metrics.items())), ""]
    lines += ["## Files", "",
              "- `config.json`, `model.safetensors`: the encoder (Hugging Face `save_pretrained`)",
              "- tokenizer files: the tokenizer (Hugging Face `save_pretrained`)"]
    lines += [f"- `{HEAD_FILE}`: the intent head"] * bool(intents)
    lines += [f"- `{SLOT_HEAD_FILE}`: the slot head"] * bool(tags)
    lines += [f"- `{LABEL_MAP_FILE}`: intent and tag names by index",
              f"- `{MODEL_FILE}`: pooling, heads, max length, the training config", "",
              "## How to load", "",
              "With tunebert installed (no sweep, Ray or MLflow needed; works offline):", "",
              "```python", "from tuning.serve.predict import load_model", "",
              "model = load_model(\"path/to/this/folder\")",
              "model.predict([\"wake me up at nine am\"])",
              "# [{\"text\": ..., \"intent\": ..., \"probability\": ...,",
              "#   \"slots\": [{\"slot\": ..., \"value\": ..., \"start\": ..., \"end\": ...}]}]",
              "```", "",
              "or `tunebert predict path/to/this/folder \"wake me up at nine am\"` (one JSON "
              "object a line).", ""]
    return "\n".join(lines)


# --------------------------------------------------------------------------- reading


def is_multitask_folder(folder: str | Path) -> bool:
    """Whether ``folder/tunebert.json`` names the multi-task format (False when it is absent or
    unreadable: the text classifier's loader then says what is wrong with it)."""
    path = Path(folder) / MODEL_FILE
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(meta, dict) and meta.get("format") == MULTITASK_FORMAT


def _description(folder: Path) -> dict:
    """``folder/tunebert.json`` of a multi-task model, checked: its version, the keys loading
    reads, task sizes that make a model, and a config this tunebert can build."""
    path = folder / MODEL_FILE
    meta = read_json(path)
    version = meta.get("format_version")
    if not isinstance(version, int) or version > MULTITASK_FORMAT_VERSION:
        raise ModelLoadError(f"{folder} holds a multi-task model in format version {version!r}; "
                             f"this tunebert reads versions up to {MULTITASK_FORMAT_VERSION}: "
                             f"upgrade tunebert")
    missing = [key for key in DESCRIPTION_KEYS if key not in meta]
    if missing:
        raise damaged(path, f"lacks {', '.join(map(repr, missing))} (a multi-task model "
                            f"description holds {', '.join(DESCRIPTION_KEYS)})")
    sizes = (meta["num_labels"], meta["num_tags"])
    if not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in sizes) \
            or not any(sizes):
        raise damaged(path, f"holds num_labels {sizes[0]!r} and num_tags {sizes[1]!r}, but they "
                            f"must be counts (>= 0), at least one of them > 0")
    config = meta["config"]
    try:
        cfg = registry.config_class(config["trainable"]).from_dict(
            {**config, **{key: meta[key] for key in HEAD_KEYS}})
    except (KeyError, TypeError, ConfigError) as exc:
        shown = f"no {exc}" if isinstance(exc, KeyError) else str(exc)
        raise damaged(path, f"holds a \"config\" or head settings that no training config "
                            f"allows ({shown})") from None
    if cfg.trainable != MULTITASK_KIND:
        raise damaged(path, f"names the multi-task format but a {cfg.trainable!r} config")
    return meta


def _check_files(folder: Path, meta: dict) -> None:
    needed = [ENCODER_CONFIG_FILE, LABEL_MAP_FILE] + [HEAD_FILE] * bool(meta["num_labels"]) \
        + [SLOT_HEAD_FILE] * bool(meta["num_tags"])
    missing = [name for name in needed if not (folder / name).is_file()]
    if not any((folder / name).is_file() for name in ENCODER_WEIGHTS):
        missing.append(ENCODER_WEIGHTS[0])
    if missing:
        raise ModelLoadError(f"model folder {folder} is incomplete: {', '.join(missing)} missing. "
                             f"It was not fully written or copied: copy it again, or re-train")


def _label_map(path: Path, meta: dict) -> dict:
    try:
        return _checked_label_map(read_json(path), meta["num_labels"], meta["num_tags"])
    except ValueError:
        raise damaged(path, f"must hold {{\"names\": [...], \"tag_names\": [...]}} with one name "
                            f"per intent ({meta['num_labels']}) and one per tag "
                            f"({meta['num_tags']}), but does not") from None


def _load_head(module: nn.Module, path: Path, what: str) -> None:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        module.load_state_dict(load_file(str(path)))
    except (SafetensorError, RuntimeError, OSError) as exc:
        raise ModelLoadError(f"{path} does not fit {what} ({str(exc).splitlines()[0][:200]}); the "
                             f"model folder is damaged: copy it again, or re-train") from None


def _model(folder: Path, meta: dict, encoder: nn.Module) -> MultitaskModel:
    try:
        model = MultitaskModel(encoder, num_labels=meta["num_labels"], num_tags=meta["num_tags"],
                               pooling=meta["pooling"], head=meta["head"],
                               slot_head=meta["slot_head"], head_hidden=meta["head_hidden"],
                               dropout=meta["classifier_dropout"],
                               sentence_norm=meta["sentence_norm"])
    except (ValueError, TypeError, ConfigError) as exc:
        raise damaged(folder / MODEL_FILE,
                      f"describes heads that cannot be built ({exc})") from None
    if model.head is not None:
        _load_head(model.head, folder / HEAD_FILE,
                   f"a {meta['head']} intent head for {meta['num_labels']} intents")
    if model.slot_head is not None:
        _load_head(model.slot_head, folder / SLOT_HEAD_FILE,
                   f"a {meta['slot_head']} slot head for {meta['num_tags']} tags")
    return model.eval()


def load_multitask_model(folder: str | Path) -> LoadedModel:
    """The multi-task model in ``folder``, on the CPU, in eval mode (kind "multitask"); a
    ``ModelLoadError`` naming the file when something in it is damaged or missing."""
    folder = Path(folder)
    meta = _description(folder)
    _check_files(folder, meta)
    label_map = _label_map(folder / LABEL_MAP_FILE, meta)
    where = str(folder.resolve())  # absolute: a folder named like a model alias stays a folder
    encoder = from_folder(folder, f"an encoder ({ENCODER_CONFIG_FILE}, {ENCODER_WEIGHTS[0]})",
                          lambda: load_encoder(where))
    layers = meta.get("num_layers")
    if layers is not None and num_encoder_layers(encoder) != layers:
        raise damaged(folder / ENCODER_CONFIG_FILE,
                      f"describes an encoder of {num_encoder_layers(encoder)} layers, but "
                      f"{MODEL_FILE} records {layers}")
    model = _model(folder, meta, encoder)
    tokenizer = from_folder(folder, "a tokenizer (tokenizer.json, tokenizer_config.json)",
                            lambda: load_tokenizer(where))
    return LoadedModel(model, meta["config"], label_map, tokenizer, MULTITASK_KIND, folder)
