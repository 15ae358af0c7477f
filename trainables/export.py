"""A trained classifier as a self-contained Hugging Face style folder: ``save_model``, ``load_model``.

Every model tunebert hands over (``tunebert train --output-dir``, ``tunebert select
--output-dir``, and the MLflow models both log) is one such folder::

    folder/
      README.md           a short model card: what the model is, its labels, how to load it
      config.json         the encoder's architecture           (encoder.save_pretrained)
      model.safetensors   the encoder's fine-tuned weights     (encoder.save_pretrained)
      tokenizer.json, tokenizer_config.json, ...  the tokenizer (tokenizer.save_pretrained)
      head.safetensors    the classification head's weights (``head.*`` of ``TextClassifier``)
      label_map.json      {"names": [...]}: class index -> label, as training wrote it
      tunebert.json       what prediction needs besides weights: the format and its version,
                          pooling, head kind and size, max_length, precision, the number of
                          labels, the encoder's layers (``num_layers``), whether to quantize
                          (``quantize``), and the whole config the model was trained with

The folder carries the encoder's architecture and the tokenizer, so ``load_model`` never reads the
base encoder the training config names (``model``: a hub id, an alias or a folder on the training
machine): the folder works offline, on another machine. It is flat, so
``AutoModel.from_pretrained(folder)`` and ``AutoTokenizer.from_pretrained(folder)`` read the
encoder and the tokenizer as they are. Weights are safetensors: reading them runs no code.

A cheap baseline (a tfidf or bilstm trial's model) is a folder of its own format, ``"format":
"tunebert-baseline"``: its tensors, tokenizer, label map and config (``trainables.baseline_export``);
``save_model`` and ``load_model`` hand it there, so it goes wherever a text classifier goes.

An ensemble is a folder with ``ensemble.json`` and one member folder per model, each in the format
above (``trainables.ensemble``), plus its own README.md (``save_ensemble_model``).

A multi-task model (one encoder with an intent head and/or a slot head) is a folder of the same
shape with ``slot_head.safetensors`` beside ``head.safetensors`` and ``"format":
"tunebert-multitask"`` (``trainables.joint_export``); ``load_model`` reads it too, as a
``LoadedModel`` of kind "multitask". An ensemble folder of such folders loads as one too: kind
"multitask", its model a ``trainables.joint_ensemble.MultitaskEnsemble`` (each head's mean
probabilities), so whatever answers a multi-task model answers it.

An encoder truncated to its bottom layers (``num_layers``) is saved as such: ``save_pretrained``
writes the kept layer count into config.json, so it loads truncated; ``tunebert.json`` records
the count too, and loading checks the two agree. A model trained with ``quantize`` is saved with
its fp32 weights (int8 packed weights are no Hugging Face format); loading quantizes it again
(``trainables.models.quantize_int8``), so it predicts as the trial's ``val_accuracy_int8`` says.

Older model folders, written before this format (a training checkpoint: ``state.pt``,
``config.json`` holding the training config, ``label_map.json``), still load, read weights-only
(``trainables.checkpointing``); they need the base encoder their config names, as they always did.

Nothing here imports Ray, MLflow or ``tuning``: ``tuning.serve.predict`` and the MLflow model
(``tuning.serve.mlflow_model``) both load through ``load_model``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional, Sequence

from torch import nn

from trainables import registry
from trainables.baseline_export import is_baseline_folder, load_baseline_model, save_baseline_model
from trainables.checkpointing import STATE_FILE, load_checkpoint, model_weights
from trainables.contrastive import ContrastiveModel
from trainables.ensemble import ProbabilityEnsemble, is_ensemble_folder, read_ensemble, save_ensemble
from trainables.errors import ConfigError, ModelLoadError
from trainables.hparams import BASELINES
from trainables.finetune import build_classifier
from trainables.joint_ensemble import multitask_ensemble, save_multitask_ensemble
from trainables.joint_export import is_multitask_folder, load_multitask_model
# the folder's file names live in trainables/model_files.py (a leaf without torch); named here too
from trainables.model_files import (  # noqa: F401
    CARD_FILE, ENCODER_CONFIG_FILE, ENCODER_WEIGHTS, FORMAT, FORMAT_VERSION, HEAD_FILE, LABEL_MAP_FILE,
    MODEL_FILE, MULTITASK_KIND, WEIGHT_SHARD, WRITTEN_FILES, written_by_save_model)
# shared with the multi-task format (trainables.joint_export); LoadedModel is importable from here
from trainables.model_folder import LoadedModel
from trainables.model_folder import check_empty as _check_empty
from trainables.model_folder import damaged as _damaged
from trainables.model_folder import from_folder as _from_folder
from trainables.model_folder import read_json as _read_json
from trainables.models import TextClassifier, load_encoder, load_tokenizer, num_encoder_layers, quantize_int8


# --------------------------------------------------------------------------- writing


def _classifier_of(model: nn.Module):
    """The ``TextClassifier`` to hand over: the model itself, or a contrastive model's classifier
    (its projection head serves the contrastive loss in training only)."""
    for candidate in (model, getattr(model, "classifier", None)):
        if isinstance(candidate, TextClassifier):
            return candidate
    raise TypeError(f"save_model needs a TextClassifier (or a model holding one as `classifier`), "
                    f"but got a {type(model).__name__}")


def save_model(folder: str | Path, model: nn.Module, *, config: dict, label_map: dict, tokenizer,
               metrics: Optional[dict] = None) -> Path:
    """Write ``model`` as a model folder (see the module docstring). ``config``: the resolved
    training config; ``label_map``: ``{"names": [...]}``; ``tokenizer``: the one training encoded
    with; ``metrics`` (optional, e.g. validation and test scores) go into the card and
    ``tunebert.json``. ``folder`` must not exist yet, or be empty. A baseline's model goes to
    ``trainables.baseline_export``."""
    from safetensors.torch import save_file

    if config.get("trainable") in BASELINES:
        return save_baseline_model(folder, model, config=config, label_map=label_map,
                                   tokenizer=tokenizer, metrics=metrics)
    folder = Path(folder)
    _check_empty(folder)
    classifier = _classifier_of(model)
    cfg = registry.config_class(config["trainable"]).from_dict(config)
    names = label_map.get("names") if isinstance(label_map, dict) else None
    num_labels = classifier.head[-1].out_features
    if not isinstance(names, list) or len(names) != num_labels:
        raise ValueError(f"label_map must be {{'names': [...]}} with one name per output of the "
                         f"model ({num_labels}), but got {label_map!r}")
    folder.mkdir(parents=True, exist_ok=True)
    classifier.encoder.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    save_file({k: v.detach().cpu().contiguous() for k, v in classifier.head.state_dict().items()},
              str(folder / HEAD_FILE), metadata={"format": FORMAT})
    (folder / LABEL_MAP_FILE).write_text(json.dumps(label_map, indent=2))
    meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "num_labels": num_labels,
            "pooling": classifier.pooling, "head": cfg.head, "head_hidden": cfg.head_hidden,
            "classifier_dropout": cfg.classifier_dropout, "max_length": cfg.max_length,
            "precision": cfg.precision, "base_model": cfg.model, "trainable": cfg.trainable,
            "num_layers": num_encoder_layers(classifier.encoder),
            "quantize": bool(getattr(cfg, "quantize", False)),
            "metrics": dict(metrics or {}), "config": config}
    (folder / MODEL_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    (folder / CARD_FILE).write_text(_card(meta, names))
    return folder


def save_ensemble_model(folder: str | Path, member_dirs: Sequence[str | Path],
                        weights: Optional[Sequence[float]] = None) -> Path:
    """An ensemble folder (``trainables.ensemble.save_ensemble``) of model folders written by
    ``save_model``, with its model card; of multi-task model folders, a multi-task ensemble
    (``trainables.joint_ensemble.save_multitask_ensemble``)."""
    if member_dirs and all(is_multitask_folder(m) for m in member_dirs):
        return save_multitask_ensemble(folder, member_dirs, weights)
    not_models = [str(m) for m in member_dirs if not is_model_folder(m)]
    if not_models:
        raise ModelLoadError(f"ensemble members must be model folders written by save_model "
                             f"(with {MODEL_FILE}), but {not_models} are not")
    folder = save_ensemble(folder, member_dirs, weights)
    members, weights = read_ensemble(folder)
    metas = [_read_json(m / MODEL_FILE) for m in members]
    names = _read_json(members[0] / LABEL_MAP_FILE)["names"]
    (folder / CARD_FILE).write_text(_ensemble_card(metas, [m.name for m in members], weights,
                                                   names))
    return folder


def _load_lines(folder_word: str) -> list[str]:
    return ["## How to load", "",
            "With tunebert installed (no sweep, Ray or MLflow needed; works offline):", "",
            "```python", "from tuning.serve.predict import load_model", "",
            f"model = load_model(\"path/to/this/{folder_word}\")",
            "model.predict([\"wake me up at seven\"])        # labels",
            "model.predict_proba([\"wake me up at seven\"])  # (texts, labels) probabilities",
            "```", "",
            f"or `tunebert predict path/to/this/{folder_word} \"wake me up at seven\"`.", ""]


def _card(meta: dict, names: list[str]) -> str:
    metrics = meta.get("metrics") or {}
    lines = ["---", "library_name: tunebert", "pipeline_tag: text-classification", "---", "",
             f"# Text classifier ({len(names)} labels)", "",
             f"Fine-tuned by tunebert ({meta['trainable']}) from `{meta['base_model']}`: the "
             f"encoder, {meta['pooling']} pooling, a {meta['head']} head. Texts are cut to "
             f"{meta['max_length']} tokens."
             + (f" The encoder keeps its bottom {meta['num_layers']} layers."
                if meta["config"].get("num_layers") else "")
             + (" Loading quantizes its Linear layers to int8 (dynamic, CPU)."
                if meta.get("quantize") else ""), "",
             f"Labels: {', '.join(f'`{n}`' for n in names)}.", ""]
    if metrics:
        lines += ["Scores: " + ", ".join(f"{k} {v:.4f}" for k, v in sorted(metrics.items())), ""]
    lines += ["## Files", "",
              "- `config.json`, `model.safetensors`: the encoder (Hugging Face `save_pretrained`)",
              "- tokenizer files: the tokenizer (Hugging Face `save_pretrained`)",
              f"- `{HEAD_FILE}`: the classification head",
              f"- `{LABEL_MAP_FILE}`: class index to label",
              f"- `{MODEL_FILE}`: pooling, head, max length, precision, the training config", ""]
    return "\n".join(lines + _load_lines("folder"))


def _ensemble_card(metas: list[dict], members: list[str], weights: list[float],
                   names: list[str]) -> str:
    lines = ["---", "library_name: tunebert", "pipeline_tag: text-classification", "---", "",
             f"# Ensemble of {len(members)} text classifiers ({len(names)} labels)", "",
             "Its prediction is the weighted mean of the members' class probabilities.", "",
             f"Labels: {', '.join(f'`{n}`' for n in names)}.", "",
             "| member | weight | base encoder | pooling | head |", "|---|---|---|---|---|"]
    lines += [f"| `{m}/` | {w:.4f} | `{meta['base_model']}` | {meta.get('pooling', '—')} | "
              f"{meta.get('head', meta.get('trainable'))} |"
              for m, w, meta in zip(members, weights, metas)]
    lines += ["", "Each member folder is a model folder of its own (see its README.md);",
              "`ensemble.json` lists the members and their weights.", ""]
    return "\n".join(lines + _load_lines("folder"))


# --------------------------------------------------------------------------- reading


def is_model_folder(folder: str | Path) -> bool:
    """A single model folder in this format (not an ensemble, not an older checkpoint)."""
    return (Path(folder) / MODEL_FILE).is_file()


def _label_map(path: Path, num_labels: Optional[int] = None) -> dict:
    """The label map in ``path`` (``{"names": [...], ...}``, as ``LabelMap.to_dict`` wrote it)."""
    label_map = _read_json(path)
    names = label_map.get("names") if isinstance(label_map, dict) else None
    if not isinstance(names, list) or not names or (num_labels and len(names) != num_labels):
        raise ModelLoadError(f"{path} must hold {{\"names\": [...]}} with one label per class"
                             f"{f' ({num_labels})' if num_labels else ''}, but holds {label_map!r}; "
                             f"the model folder is damaged: use another one or re-train")
    return label_map


# what ``_load_single`` reads from tunebert.json besides the format: absent in a damaged folder
DESCRIPTION_KEYS = ("pooling", "head", "head_hidden", "classifier_dropout", "config")


def _model_description(folder: Path) -> dict:
    """``folder/tunebert.json``, checked: the format and its version, the keys loading reads, and
    a training config this tunebert can build (``Predictor`` builds it again)."""
    path = folder / MODEL_FILE
    meta = _read_json(path)
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ModelLoadError(f"{path} is not a tunebert model description: it needs "
                             f"\"format\": \"{FORMAT}\"")
    version = meta.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise ModelLoadError(f"{folder} holds a model in format version {version!r}; this tunebert "
                             f"reads versions up to {FORMAT_VERSION}: upgrade tunebert")
    missing = [key for key in DESCRIPTION_KEYS if key not in meta]
    if missing:
        raise _damaged(path, f"lacks {', '.join(map(repr, missing))} (a model description holds "
                             f"{', '.join(DESCRIPTION_KEYS)})")
    config = meta["config"]
    head = {key: meta[key] for key in DESCRIPTION_KEYS if key != "config"}  # the config's rules
    try:
        registry.config_class(config["trainable"]).from_dict({**config, **head})
    except (KeyError, TypeError, ConfigError) as exc:
        shown = f"no {exc}" if isinstance(exc, KeyError) else str(exc)
        raise _damaged(path, f"holds a \"config\" or head settings that no training config "
                             f"allows ({shown})") from None
    return meta


def _load_single(folder: Path) -> LoadedModel:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    meta = _model_description(folder)
    missing = [name for name in (ENCODER_CONFIG_FILE, HEAD_FILE, LABEL_MAP_FILE)
               if not (folder / name).is_file()]
    if not any((folder / name).is_file() for name in ENCODER_WEIGHTS):
        missing.append(ENCODER_WEIGHTS[0])
    if missing:
        raise ModelLoadError(f"model folder {folder} is incomplete: {', '.join(missing)} missing. "
                             f"It was not fully written or copied: copy it again, or re-train")
    label_map = _label_map(folder / LABEL_MAP_FILE, meta.get("num_labels"))
    names = label_map["names"]
    where = str(folder.resolve())  # absolute: a folder named like a model alias stays a folder
    encoder = _from_folder(folder, f"an encoder ({ENCODER_CONFIG_FILE}, {ENCODER_WEIGHTS[0]})",
                           lambda: load_encoder(where))
    layers = meta.get("num_layers")  # absent in folders written before it was recorded
    if layers is not None and num_encoder_layers(encoder) != layers:
        raise ModelLoadError(f"{folder / ENCODER_CONFIG_FILE} describes an encoder of "
                             f"{num_encoder_layers(encoder)} layers, but {MODEL_FILE} records "
                             f"{layers}; the model folder is damaged: copy it again, or re-train")
    try:
        model = TextClassifier(encoder, len(names), pooling=meta["pooling"], head=meta["head"],
                               head_hidden=meta["head_hidden"], dropout=meta["classifier_dropout"])
    except (ValueError, TypeError) as exc:
        raise _damaged(folder / MODEL_FILE, f"describes a head that cannot be built ({exc})") from None
    try:
        model.head.load_state_dict(load_file(str(folder / HEAD_FILE)))
    except (SafetensorError, RuntimeError, OSError) as exc:
        raise ModelLoadError(f"{folder / HEAD_FILE} does not fit a {meta['head']} head for "
                             f"{len(names)} labels ({str(exc).splitlines()[0][:200]}); the model "
                             f"folder is damaged: copy it again, or re-train") from None
    model = _quantized_if(meta.get("quantize", False), model.eval())
    tokenizer = _from_folder(folder, "a tokenizer (tokenizer.json, tokenizer_config.json)",
                             lambda: load_tokenizer(where))
    return LoadedModel(model, meta["config"], label_map, tokenizer, "single", folder)


def _quantized_if(quantize: bool, model: nn.Module) -> nn.Module:
    """``model``, or its int8 version when it was trained with ``quantize`` (CPU inference)."""
    return quantize_int8(model).eval() if quantize else model


def _load_checkpoint(folder: Path) -> LoadedModel:
    """An older model folder: a training checkpoint, rebuilt on its base encoder."""
    state = load_checkpoint(folder)
    names = _label_map(folder / LABEL_MAP_FILE)["names"]
    cfg = registry.config_class(state["config"]["trainable"]).from_dict(state["config"])
    model = build_classifier(cfg, len(names))
    if cfg.trainable == "contrastive":  # a classifier plus its projection head

        model = ContrastiveModel(model, cfg.projection_dim)
    model.load_state_dict(model_weights(state))  # the best epoch's (averaged) weights
    model = _quantized_if(getattr(cfg, "quantize", False), model.eval())
    return LoadedModel(model, state["config"], state["label_map"],
                       load_tokenizer(cfg.model), "single", folder)


def _load_member(folder: Path) -> LoadedModel:
    if is_multitask_folder(folder):  # one encoder with an intent and/or a slot head
        return load_multitask_model(folder)
    if is_baseline_folder(folder):  # a tfidf or bilstm model
        return load_baseline_model(folder)
    if is_model_folder(folder):
        return _load_single(folder)
    if (folder / STATE_FILE).is_file():
        return _load_checkpoint(folder)  # names a missing config.json or label_map.json
    raise ModelLoadError(
        f"{str(folder)!r} is not a model folder: it has no {MODEL_FILE} (a model folder as "
        f"`tunebert train --output-dir` or `tunebert select --output-dir` writes it) and no "
        f"ensemble.json (an ensemble folder), nor {STATE_FILE} (an older tunebert's model folder)")


def load_model(folder: str | Path) -> LoadedModel:
    """The model in ``folder``: a model folder, an ensemble folder, or an older checkpoint folder;
    on the CPU, in eval mode. Raises ``ModelLoadError`` (a ``UserError``) saying what is wrong."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise ModelLoadError(f"model folder {str(folder)!r} does not exist; pass the folder "
                             f"`tunebert train --output-dir` or `tunebert select --output-dir DIR` "
                             f"wrote")
    if not is_ensemble_folder(folder):
        return _load_member(folder)
    member_dirs, weights = read_ensemble(folder)
    members = [_load_member(m) for m in member_dirs]
    first = members[0]
    if any(m.kind == MULTITASK_KIND for m in members):  # each head averaged, kind "multitask"
        return multitask_ensemble(folder, member_dirs, members, weights)
    for directory, other in zip(member_dirs[1:], members[1:]):
        if other.label_map != first.label_map:
            raise ModelLoadError(f"ensemble {folder}: member {directory.name} has another label map "
                                 f"than {member_dirs[0].name}; members must classify the same labels")
        for key in ("model", "max_length"):
            if other.config.get(key) != first.config.get(key):
                raise ModelLoadError(
                    f"ensemble {folder}: members must share one tokenizer, but `{key}` is "
                    f"{first.config.get(key)!r} in {member_dirs[0].name} and "
                    f"{other.config.get(key)!r} in {directory.name}")
    ensemble = ProbabilityEnsemble([m.model for m in members], weights).eval()
    return LoadedModel(ensemble, first.config, first.label_map, first.tokenizer, "ensemble", folder)
