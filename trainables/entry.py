"""The one Ray Tune function trainable: runs any registered family's ``fit`` inside a trial.

Only this module touches ``ray.tune``. It resumes from Ray's checkpoint, reports every epoch with
a checkpoint, pins threads to the trial's CPUs, picks CUDA when the trial has a GPU, fails fast
when a retried trial already diverged, and releases GPU memory whatever happens.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Callable

import torch

from trainables import registry
from trainables.data import TokenizedData
from trainables.errors import NonFiniteLossError

NONFINITE_MARKER = "nonfinite_loss.txt"


def trainable(config: dict, data: TokenizedData) -> None:
    """``tune.with_parameters(trainable, data=...)``: ``config["trainable"]`` picks the family."""
    import ray
    from ray import tune

    from trainables.runtime import pick_device, set_threads

    resources = ray.get_runtime_context().get_assigned_resources()
    set_threads(resources.get("CPU", 1))
    device = pick_device(resources.get("GPU", 0))
    name = config.get("trainable", "finetune")
    cfg = registry.config_class(name).from_dict({**config, "trainable": name})
    fit = registry.fit_function(name)
    node_id = ray.get_runtime_context().get_node_id()

    def report(metrics: dict, write: Callable[[str], None]) -> None:
        with tempfile.TemporaryDirectory() as directory:
            write(directory)
            tune.report({**metrics, "node_id": node_id},
                        checkpoint=tune.Checkpoint.from_directory(directory))

    poisoned = Path(tune.get_context().get_trial_dir()) / NONFINITE_MARKER
    if poisoned.is_file():
        # Retrying cannot help: the same config from the same checkpoint diverges again.
        raise NonFiniteLossError(f"{poisoned.read_text()} (not retried)")
    checkpoint = tune.get_checkpoint()
    try:
        if checkpoint is None:
            fit(cfg, data, device=device, report=report)
        else:
            with checkpoint.as_directory() as directory:
                fit(cfg, data, device=device, report=report, resume_dir=directory)
    except NonFiniteLossError as exc:
        poisoned.write_text(str(exc))
        raise
    finally:
        if device.type == "cuda":
            import gc

            gc.collect()
            torch.cuda.empty_cache()
