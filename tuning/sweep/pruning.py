"""Checkpoint pruning: a trial that has ended keeps only what its best epoch needs.

While a trial runs, Ray keeps its last ``--keep-checkpoints`` epoch checkpoints, each with the
optimizer, scheduler and averaging state needed to resume it (about four copies of the model with
AdamW). Once the trial has ended (finished, stopped by ASHA, or stopped by the time budget or a
deadline) nothing resumes it, so ``CheckpointPruner`` rewrites its last checkpoint to the
handed-over weights alone (``trainables.checkpointing.shrink_to_model``) and deletes the older
ones: a 30-trial bert-base sweep then keeps one model per trial (~0.4 GB each) instead of tens of
GB. Failed trials are left as they are.

When a trial counts as ended: Ray Tune called ``on_trial_complete``, or the trial was TERMINATED
at the end of a loop step (``on_step_end``; stoppers end trials without ``on_trial_complete``).
An interrupted sweep (Ctrl-C, SIGTERM) marks its running trials TERMINATED only after the loop,
in its cleanup, after saving them as running: they are never seen ended here and keep their
resumable checkpoints. An ended trial is pruned only once Ray's saved experiment state (the
newest ``experiment_state-*.json``, what ``tunebert resume`` restores) records it TERMINATED: Ray
saves that state every few seconds, so a driver killed in between would otherwise resume the
trial from a pruned checkpoint (``trainables.entry`` also refuses to train from a model-only
checkpoint). PBT/PB2 clone a member from a donor's checkpoint, so under them nothing is pruned
before the whole population has ended, at the end of the sweep.

The checkpoint kept is the one Ray's saved state records for the trial (the one a restore would
read), and only once it is also the trial's latest here: a saved state that names an older one
has not caught up yet, and nothing is removed until it has. A folder is removed by renaming it
out of Ray's ``checkpoint_<N>`` names first (``remove_checkpoint``), so a kill during the removal
leaves no half-deleted folder that looks like a checkpoint.

Runs in the driver only (a Ray Tune callback); picklable (Ray saves it with the experiment).
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from pathlib import Path
from typing import Optional

from ray.tune import Callback

from trainables.checkpointing import STATE_FILE, checkpoint_folders, shrink_to_model
from trainables.errors import CheckpointError
import tuning.tracking as tracking
from tuning.sweep.ray_internals import saved_checkpoint_path

log = logging.getLogger(__name__)

MB = 2 ** 20


def folder_bytes(folder: Path) -> int:
    """Bytes of the files under ``folder`` (0 if it does not exist)."""
    total = 0
    for root, _, files in os.walk(folder):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:  # removed meanwhile
                pass
    return total


REMOVING_PREFIX = ".removing-"  # a folder being removed: no longer one of Ray's checkpoint_<N>


def remove_checkpoint(folder: Path) -> int:
    """Remove a checkpoint folder: renamed out of the ``checkpoint_<N>`` names first (one atomic
    step), then deleted. Returns the bytes freed."""
    size = folder_bytes(folder)
    doomed = folder.with_name(f"{REMOVING_PREFIX}{folder.name}")
    shutil.rmtree(doomed, ignore_errors=True)  # left by a removal killed before
    os.replace(folder, doomed)
    shutil.rmtree(doomed, ignore_errors=True)
    return size - folder_bytes(doomed)


def prune_trial(trial_dir: Path, latest: Optional[Path] = None) -> int:
    """Shrink the trial's checkpoint ``latest`` (default: the newest) to model-only and delete the
    others, and any half-removed folder a killed pruning left. Returns the bytes freed."""
    folders = checkpoint_folders(trial_dir)
    latest = latest if latest is not None and latest.is_dir() else (folders[-1] if folders else None)
    if latest is None:
        return 0
    freed = 0
    for leftover in trial_dir.glob(f"{REMOVING_PREFIX}*"):
        freed += folder_bytes(leftover)
        shutil.rmtree(leftover, ignore_errors=True)
    for folder in folders:
        if folder.resolve() != latest.resolve():
            freed += remove_checkpoint(folder)
    if (latest / STATE_FILE).is_file():
        freed += shrink_to_model(latest)
    return freed


class SavedTrial:
    """A trial as Ray's saved experiment state records it: its status and the path of the
    checkpoint a restore would resume it from (None if it recorded none)."""

    def __init__(self, status: str, checkpoint: Optional[str]):
        self.status, self.checkpoint = status, checkpoint


def saved_trials(sweep_dir: Path) -> dict[str, SavedTrial]:
    """trial id -> ``SavedTrial`` in Ray's newest saved experiment state (the file a restore
    reads: Ray takes the greatest ``experiment_state-<timestamp>.json``); {} when there is none
    yet or it cannot be read now."""
    import json

    files = sorted(sweep_dir.glob("experiment_state-*.json"))
    if not files:
        return {}
    try:
        saved = json.loads(files[-1].read_text())
        found = {}
        for state, run_metadata in saved.get("trial_data", []):
            trial = json.loads(state)
            # the checkpoint manager is cloudpickled in there: Ray's own loader reads it (our sweep
            # folder, as `resume` reads)
            found[trial["trial_id"]] = SavedTrial(trial["status"], saved_checkpoint_path(run_metadata))
        return found
    except Exception as exc:  # being replaced right now, or not Ray's format: next time
        log.debug("Ray's saved state %s cannot be read now: %s", files[-1], exc)
        return {}


class CheckpointPruner(Callback):
    """Prunes each ended trial's checkpoints (see the module docstring) and reports the sweep
    folder's disk use at the end of the sweep."""

    CHECK_EVERY_S = 5.0  # how often Ray's saved state is read while ended trials wait for it

    def __init__(self, sweep_name: str, sweep_dir: str, *, population_based: bool):
        self.sweep_name = sweep_name
        self.sweep_dir = str(sweep_dir)
        self.population_based = population_based
        self._ended: dict[str, object] = {}  # trial id -> Trial, seen ended during the loop
        self._pruned: set[str] = set()
        self._checked_at = 0.0
        self.freed_bytes = 0
        self.usage: dict[str, float] = {}

    def __getstate__(self):
        state = dict(self.__dict__)
        state.update(_ended={}, _checked_at=0.0)  # Trial objects stay in this process
        return state

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._ended[trial.trial_id] = trial

    def on_step_end(self, iteration, trials, **info):
        for trial in trials:
            if trial.status == "TERMINATED" and trial.trial_id not in self._ended:
                self._ended[trial.trial_id] = trial
        waiting = set(self._ended) - self._pruned
        if waiting and not self.population_based and time.monotonic() - self._checked_at >= self.CHECK_EVERY_S:
            self._checked_at = time.monotonic()
            self._prune_saved(waiting, trials)

    def _prune_saved(self, trial_ids: set[str], trials) -> None:
        """Prune those of ``trial_ids`` that Ray's saved state records as TERMINATED, with the
        trial's latest checkpoint as the one a restore would read."""
        saved = saved_trials(self._experiment_dir(trials))
        for trial_id in sorted(trial_ids):
            record = saved.get(trial_id)
            if record is not None and record.status == "TERMINATED" and \
                    self._saved_is_latest(record, self._ended[trial_id]):
                self._prune(self._ended[trial_id])

    @staticmethod
    def _saved_is_latest(record: SavedTrial, trial) -> bool:
        latest = trial.checkpoint.path if trial.checkpoint is not None else None
        if record.checkpoint is None or latest is None:
            return record.checkpoint == latest
        return Path(record.checkpoint).resolve() == Path(latest).resolve()

    def _experiment_dir(self, trials) -> Path:
        located = next((t.path for t in trials if t.path), None)
        return Path(located).parent if located else Path(self.sweep_dir)

    def _prune(self, trial) -> None:
        if trial.trial_id in self._pruned or not trial.path:
            return
        self._pruned.add(trial.trial_id)
        latest = trial.checkpoint.path if trial.checkpoint is not None else None
        try:
            self.freed_bytes += prune_trial(Path(trial.path), Path(latest) if latest else None)
        except (OSError, CheckpointError) as exc:  # pruning saves disk; it must never stop a sweep
            log.warning("could not prune the checkpoints of trial %s: %s", trial.trial_id, exc)

    def on_experiment_end(self, trials, **info):
        # Ray saved the experiment state just before (tune.py: checkpoint(force=True) before
        # cleanup), so what it records as ended is final. PBT: only once the whole population
        # has ended (no donor is needed any more).
        if not self.population_based or all(t.trial_id in self._ended or t.status == "ERROR" for t in trials):
            self._prune_saved(set(self._ended) - self._pruned, trials)
        sweep_dir = self._experiment_dir(trials)
        checkpoints = sum(folder_bytes(c) for t in trials if t.path
                          for c in checkpoint_folders(Path(t.path)))
        self.usage = {"disk_sweep_mb": folder_bytes(sweep_dir) / MB,
                      "disk_checkpoints_mb": checkpoints / MB,
                      "disk_pruned_mb": self.freed_bytes / MB}
        freed = self.usage["disk_pruned_mb"]
        log.debug(f"disk: the sweep folder {sweep_dir} holds {self.usage['disk_sweep_mb']:.1f} MB, "
                 f"{self.usage['disk_checkpoints_mb']:.1f} MB of it checkpoints of {len(trials)} "
                 f"trials" + (f"; pruning ended trials to their best epoch's model freed "
                              f"{freed:.1f} MB" if freed >= 0.05 else ""))
        self._log_usage()

    def _log_usage(self) -> None:
        logger = tracking.MlflowTrialLogger.live(self.sweep_name)
        if logger is None:
            return
        try:
            tracking.annotate_run(logger.uri, logger.parent_run_id, metrics=self.usage)
        except Exception as exc:  # the store may be down; the printed line stays
            log.warning("could not log disk use to the sweep's MLflow run: %s", tracking.redact(str(exc)))
