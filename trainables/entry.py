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
from trainables.checkpointing import is_model_only
from trainables.data import TokenizedData
from trainables.errors import ConfigError, NonFiniteLossError

NONFINITE_MARKER = "nonfinite_loss.txt"
# Ray Tune writes this into the experiment folder on the driver before any trial starts
# (ray/tune/impl/tuner_internal.py, _TUNER_PKL); tuning.runner relies on it for resume too.
SWEEP_STATE_FILE = "tuner.pkl"


def check_storage_visible(folder: Path, node: str) -> None:
    """Fail a trial at its start when the node it landed on cannot see the sweep folder
    (``folder``, Ray's experiment folder in --storage): a node that joined after the sweep checked
    its storage, or one that lost its mount. Its checkpoints would stay on that node's disk and no
    other node could resume it."""
    if not (folder / SWEEP_STATE_FILE).is_file():
        raise ConfigError(
            f"the sweep folder {folder} is not shared with Ray node {node}: the sweep's state is "
            f"not visible from there, so this trial's checkpoints could not be read by the sweep "
            f"or resumed on another node. --storage must be a folder every node mounts at the same "
            f"path (NFS, EFS, a Kubernetes ReadWriteMany volume); fix the mount on that node.")


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
    # tunebert's --storage is a folder path, so Ray's storage path is one on this node's disk
    check_storage_visible(Path(tune.get_context().get_storage().experiment_fs_path),
                          f"{ray.util.get_node_ip_address()} (id {node_id[:12]})")

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
                if is_model_only(directory):
                    # the sweep had ended this trial and pruned its checkpoint to its best model
                    # (tuning.pruning waits until Ray's saved state records the end, so this is
                    # a guard): it stays ended, with nothing to train and no epoch reported twice
                    return
                fit(cfg, data, device=device, report=report, resume_dir=directory)
    except NonFiniteLossError as exc:
        poisoned.write_text(str(exc))
        raise
    finally:
        if device.type == "cuda":
            import gc

            gc.collect()
            torch.cuda.empty_cache()
