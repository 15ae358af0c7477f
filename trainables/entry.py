"""The one Ray Tune function trainable: runs any registered family's ``fit`` inside a trial.

Only this module touches ``ray.tune``. It resumes from Ray's checkpoint, reports every epoch with
a checkpoint, pins threads to the trial's CPUs, picks CUDA when the trial has a GPU, fails fast
when a retried trial already diverged, and releases GPU memory whatever happens.
"""

from __future__ import annotations

import gc
import logging
import os
import tempfile
from pathlib import Path
from typing import Callable, Optional

import torch

from trainables import registry, train_workers
from trainables.checkpointing import checkpoint_folders, checkpoint_index, incomplete_reason, is_model_only
from trainables.data import TokenizedData
from trainables.errors import ConfigError, NonFiniteLossError
from trainables.runtime import pick_device, set_threads
from trainables.train_workers import WorkerGroup

log = logging.getLogger(__name__)

NONFINITE_MARKER = "nonfinite_loss.txt"

# A worker process that ran a trial is reused for the next one (no new process, no re-import of
# torch and transformers: about a third of a tiny sweep's time) unless its memory grew by more
# than this many bytes, and this share, over what it held after its first trial: then Ray starts
# a fresh process. Measured on MASSIVE with MiniLM-L6 (2 cores): two reused workers grew to 10.8
# and 7.1 GB after ~8 trials each, until Ray's OOM killer ended the sweep.
RECYCLE_GROWTH_BYTES = int(os.environ.get("TUNEBERT_RECYCLE_GROWTH_BYTES", 512 * 2**20))
RECYCLE_GROWTH_SHARE = 0.5


def check_storage_visible(folder: Path, node: str) -> None:
    """Fail a trial at its start when the node it landed on cannot see the sweep folder
    (``folder``, Ray's experiment folder in --storage): a node that joined after the sweep checked
    its storage, or one that lost its mount. Its checkpoints would stay on that node's disk and no
    other node could resume it. The driver writes the Tuner's state there before any trial starts;
    ``Tuner.can_restore`` (public API) says whether it is there."""
    from ray.tune import Tuner

    if not Tuner.can_restore(str(folder)):
        raise ConfigError(
            f"the sweep folder {folder} is not shared with Ray node {node}: the sweep's state is "
            f"not visible from there, so this trial's checkpoints could not be read by the sweep "
            f"or resumed on another node. --storage must be a folder every node mounts at the same "
            f"path (NFS, EFS, a Kubernetes ReadWriteMany volume); fix the mount on that node.")


def resident_bytes() -> int | None:
    """This process's resident memory now (Linux ``/proc``), or None where it cannot be read."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return pages * os.sysconf("SC_PAGE_SIZE")


def give_memory_back() -> None:
    """Free what the last trial left (Python cycles, CUDA's cache) and hand glibc's free heap
    pages back to the system (``malloc_trim``), so the measure that decides reuse is honest."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


def worth_reusing(baseline: int | None, now: int | None) -> bool:
    """Whether a worker holding ``now`` bytes, ``baseline`` after its first trial, may run
    another trial: unless it grew by more than ``RECYCLE_GROWTH_BYTES`` and
    ``RECYCLE_GROWTH_SHARE`` of ``baseline``."""
    if baseline is None or now is None:
        return True
    growth = now - baseline
    return not (growth > RECYCLE_GROWTH_BYTES and growth > RECYCLE_GROWTH_SHARE * baseline)


def resume_point(recorded: Path) -> Optional[Path]:
    """The checkpoint a restored trial resumes from: ``recorded`` (the one Ray's saved state
    names) when it is complete, else the newest complete one before it in the trial's folder,
    else None (the trial starts again from its first epoch). A fallback is logged as a warning.

    Never a newer one: Ray (and so the MLflow record) may not have seen the epochs a newer
    checkpoint holds, and they would never be reported. Epochs reported again after an older
    one are logged once (``tuning.tracking`` skips the steps a run already holds)."""
    problem = incomplete_reason(recorded)
    if problem is None:
        return recorded
    index = checkpoint_index(recorded)
    older = [f for f in checkpoint_folders(recorded.parent)
             if index is None or checkpoint_index(f) < index]
    for folder in reversed(older):
        if incomplete_reason(folder) is None:
            log.warning("checkpoint %s cannot be resumed from (%s: a kill cut its write or its "
                        "removal short); this trial resumes from the newest complete one before "
                        "it, %s, and trains its later epochs again", recorded, problem, folder.name)
            return folder
    log.warning("checkpoint %s cannot be resumed from (%s: a kill cut its write or its removal "
                "short) and the trial has no complete earlier one; it starts again from its "
                "first epoch", recorded, problem)
    return None


def restored_checkpoint_path(restore_arg) -> Optional[str]:
    """The folder of the checkpoint Ray hands ``Trainable.restore``, or None. Ray 2.60 passes its
    private ``_TrainingResult`` (``.checkpoint.path``); its signature also allows a ``Checkpoint`` or a path.
    Duck-typed, so no private Ray name is imported here (``trainables`` may not import
    ``tuning.sweep.ray_internals``); ``tests/tuning/sweep/test_ray_internals.py`` checks Ray still passes that."""
    checkpoint = getattr(restore_arg, "checkpoint", restore_arg)
    path = getattr(checkpoint, "path", None)
    return path if isinstance(path, str) else None


def recycled(trainable_fn: Callable) -> type:
    """Ray Tune's class for the function trainable ``trainable_fn`` (``ray.tune.trainable.
    wrap_function``), reusing its worker process across trials until ``worth_reusing`` says no;
    then ``reset_config`` answers False and Ray starts a new process for the next trial. Use with
    ``TuneConfig(reuse_actors=True)``. A class is subclassed as it is."""
    import inspect

    from ray.tune.trainable import wrap_function

    trainable_cls = trainable_fn if inspect.isclass(trainable_fn) else wrap_function(trainable_fn)

    class Recycled(trainable_cls):
        def restore(self, checkpoint_path):
            # Ray refuses to restore from a checkpoint folder that is gone (removed by its own
            # num_to_keep after a newer one was written than its saved state names): an empty
            # folder instead lets the trainable fall back (``resume_point``) and the trial live
            path = restored_checkpoint_path(checkpoint_path)
            if path and os.path.isabs(path) and not os.path.exists(path):
                os.makedirs(path, exist_ok=True)
            return super().restore(checkpoint_path)

        def reset_config(self, new_config):
            give_memory_back()
            now = resident_bytes()
            if getattr(self, "_tunebert_baseline", None) is None:  # after its first trial
                self._tunebert_baseline = now
            if not worth_reusing(self._tunebert_baseline, now):
                return False
            return super().reset_config(new_config)

    Recycled.__name__ = Recycled.__qualname__ = trainable_cls.__name__
    return Recycled


def trainable(config: dict, data: TokenizedData, workers: WorkerGroup = WorkerGroup()) -> None:
    """``tune.with_parameters(trainable, data=..., workers=...)``: ``config["trainable"]`` picks
    the family; a trial of several ``workers`` trains on Ray Train workers
    (``trainables.train_workers``) and reports here as one in this process would."""
    import ray
    from ray import tune

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
    # tunebert's --storage is a folder path: Ray's checkpoint path is a folder on this node's disk
    directory = resume_point(Path(checkpoint.path)) if checkpoint is not None else None
    try:
        if workers.spread and (directory is None or not is_model_only(directory)):
            # the trial's folder in --storage (every node sees it), not its local staging folder
            train_workers.run(name, cfg, data, workers, trial_dir=tune.get_context().get_storage().trial_fs_path,
                              report=report, resume_dir=str(directory) if directory else None)
        elif directory is None:
            fit(cfg, data, device=device, report=report)
        elif is_model_only(directory):
            # the sweep had ended this trial and pruned its checkpoint to its best model
            # (tuning.sweep.pruning waits until Ray's saved state records the end, so this is
            # a guard): it stays ended, with nothing to train and no epoch reported twice
            return
        else:
            fit(cfg, data, device=device, report=report, resume_dir=str(directory))
    except NonFiniteLossError as exc:
        poisoned.write_text(str(exc))
        raise
    finally:
        if device.type == "cuda":
            import gc

            gc.collect()
            torch.cuda.empty_cache()
