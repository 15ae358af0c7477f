"""How fast a trial trains, for planning ``tunebert tune``'s budget: one short training measured
on this machine before the sweep, and the epoch times a finished sweep's trials left in Ray's
results."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any, Optional

from trainables import registry, task_data

PROBE_TRAIN_EXAMPLES = 96                   # three batches of 32: enough for a steady rate
PROBE_VAL_EXAMPLES = 32


def measure_epoch_seconds(prep) -> Optional[float]:
    """Seconds one sweep trial needs per epoch, from one short training on this machine.

    Trains a default fine-tuning config of the sweep's model on ``PROBE_TRAIN_EXAMPLES`` training
    texts (a seeded sample) with the threads one trial gets, and scales its rate to the train
    split plus a forward pass over validation (a third of a training step per example). The
    first batches are the slowest (allocation, warm-up), so the estimate errs long. Returns None
    when the trials will not run on this machine's hardware (a remote cluster, or GPUs here
    missing): the caller then falls back to a fixed share.
    """
    import numpy as np
    import torch

    cfg = prep.config
    remote = cfg.address not in (None, "", "local")
    if remote or (cfg.gpus_per_trial > 0 and not torch.cuda.is_available()):
        return None
    device = torch.device("cuda", 0) if cfg.gpus_per_trial > 0 else torch.device("cpu")
    # a multitask sweep's epochs are a multitask trial's (two heads); every other family's, a
    # fine-tuning epoch's
    family = "multitask" if cfg.trainable == "multitask" else "finetune"
    config = registry.config_class(family).from_dict(registry.resolve_config(
        {"trainable": family, "model": cfg.model, "max_length": cfg.max_length, "epochs": 1,
         "seed": cfg.seed, "precision": cfg.precision, "perturb_eval": None}))
    train, val = prep.data.splits["train"], prep.data.splits["validation"]
    rng = np.random.default_rng(cfg.seed)

    def sample(split, n):
        return task_data.take(split, rng.permutation(len(split))[:n])

    data = dataclasses.replace(prep.data, splits={"train": sample(train, PROBE_TRAIN_EXAMPLES),
                                                  "validation": sample(val, PROBE_VAL_EXAMPLES)})
    rates: list[float] = []
    threads = torch.get_num_threads()
    if device.type == "cpu":
        torch.set_num_threads(max(1, int(cfg.cpus_per_trial)))  # as runtime.set_threads in a trial
    def report(metrics: dict, write) -> None:
        rates.append(metrics["samples_per_s"])

    try:
        registry.fit_function(family)(config, data, device=device, report=report)
    finally:
        torch.set_num_threads(threads)
    rate = rates[-1] if rates and math.isfinite(rates[-1]) and rates[-1] > 0 else None
    if rate is None:
        return None
    return len(train) / rate + len(val) / (3 * rate)


def trial_epoch_seconds(sweep_dir: Path, trial_id: str) -> list[float]:
    """``time_this_iter_s`` of every epoch a trial reported (Ray's result.json; train, validation
    and checkpoint together)."""
    seconds = []
    for path in sorted(Path(sweep_dir).glob(f"*_{trial_id}/result.json")):
        for line in path.read_text(errors="replace").splitlines():
            try:
                value = json.loads(line).get("time_this_iter_s")
            except (json.JSONDecodeError, AttributeError):
                continue
            if isinstance(value, (int, float)) and math.isfinite(value) and value > 0:
                seconds.append(float(value))
    return seconds


def training_epochs(config: dict[str, Any], epochs: Optional[int] = None) -> int:
    """Epochs one training of ``config`` runs (both stages of a contrastive config), with the
    classifier epochs replaced by ``epochs`` when given (as the selection does)."""
    config = {**config, **({"epochs": epochs, "stop_epoch": None} if epochs else {})}
    cfg = registry.config_class(config.get("trainable", "finetune")).from_dict(config)
    return int(getattr(cfg, "total_epochs", cfg.last_epoch))  # a sweep's stop_epoch shortens it
