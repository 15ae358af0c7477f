"""Scoring saved model folders (plain or ensemble) on validation or test: the only place the final
selection reads the test split, and only for the chosen config's models, after the choice."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

from trainables import registry, task_data
from trainables.data import DataConfig
from trainables.errors import DataError


def load_model_folder(folder: str | Path):
    """(model on CPU, config, label map) of a model folder (``trainables.export.load_model``): a
    self-contained model folder, an ensemble folder whose members share the label map and the
    tokenizer (``model``, ``max_length``; the config returned is then the first member's), or an
    older checkpoint folder. Raises ``ModelLoadError`` for anything else."""
    from trainables.export import load_model  # local: keeps torch off --help

    loaded = load_model(folder)
    return loaded.model, loaded.config, loaded.label_map


def evaluate_folders(folders: Sequence[str | Path], data_config: DataConfig, config: dict,
                     split: str) -> list[dict]:
    """Metrics (``val_*`` or ``test_*``: loss, accuracy, macro_f1) of each model folder (plain or
    ensemble) on ``split``; for a multitask ``config`` those of ``evaluate_multitask`` (intent,
    slot and sentence scores, and on test the F1 per slot type). For ``'validation'`` the test
    split is not even tokenized; ``'test'`` is the only place selection reads the test split."""
    import torch

    from trainables import loops, models  # local: keeps torch off --help

    if split not in ("validation", "test"):
        raise ValueError(f"split must be 'validation' or 'test', but got {split!r}")
    if config["trainable"] == task_data.MULTITASK:
        return _evaluate_multitask_folders(folders, data_config, config, split)
    cfg = registry.config_class(config["trainable"]).from_dict(config)
    data, _ = task_data.load_encoded(data_config, cfg.trainable, models.load_tokenizer(cfg.model),
                                     model=cfg.model, max_length=cfg.max_length,
                                     include_test=split == "test")
    label_map = json.loads(json.dumps(data.label_map.to_dict()))
    device = torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
    results = []
    for directory in folders:
        model, _, folder_labels = load_model_folder(directory)
        if folder_labels != label_map:
            raise DataError(f"the data's label map changed since the model in {directory} was "
                            f"trained; selection needs the same data for training and testing")
        result = loops.evaluate(model.to(device), data.splits[split], batch_size=64,
                                pad_token_id=data.pad_token_id, num_labels=data.num_labels,
                                device=device, precision=cfg.precision)
        results.append(result.as_metrics("test" if split == "test" else "val"))
        del model
    return results


def _evaluate_multitask_folders(folders: Sequence[str | Path], data_config: DataConfig,
                                config: dict, split: str) -> list[dict]:
    """``evaluate_folders`` for multi-task models (plain or ensemble): the joint data encoded as
    the multitask trials encode it, each folder scored by ``trainables.joint.evaluate_multitask``
    (the loss weighted as in training, so ``val_loss`` is the trials' own)."""
    import torch

    from trainables import joint, models  # local: keeps torch off --help

    cfg = registry.config_class(config["trainable"]).from_dict(config)
    raw = task_data.load_raw(data_config, cfg.trainable)
    data = task_data.encode(raw, models.load_tokenizer(cfg.model), trainable=cfg.trainable,
                            model=cfg.model, max_length=cfg.max_length,
                            include_test=split == "test")
    expected = json.loads(json.dumps(joint.label_maps(data)))
    prefix = "test" if split == "test" else "val"
    device = torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
    results = []
    for directory in folders:
        model, _, folder_labels = load_model_folder(directory)
        if folder_labels != expected:
            raise DataError(f"the data's intents or tags changed since the model in {directory} "
                            f"was trained; selection needs the same data for training and testing")
        result = joint.evaluate_multitask(
            model.to(device), data.splits[split], data, batch_size=64, device=device,
            precision=cfg.precision, prefix=prefix,
            weights=(cfg.intent_loss_weight, cfg.slot_loss_weight))
        per_type = ({f"test_slot_f1_{kind}": s.f1 for kind, s in result.per_type.items()}
                    if split == "test" else {})  # as `tunebert train` logs test
        results.append({**result.metrics, **per_type})
        del model
    return results


def evaluate_on_test(checkpoints: Sequence[str], data_config: DataConfig, config: dict) -> list[dict]:
    """Test metrics of each model folder: the only place selection reads the test split."""
    return evaluate_folders(checkpoints, data_config, config, "test")
