"""ASHA whose rungs survive a driver restart, and its ``max_t`` in rounds (``max_rounds``) when
trials report every ``eval_every`` steps instead of every epoch.

Ray Tune saves the trials and the searcher with the experiment, but not the scheduler: a restored
``Tuner`` brings back the ASHA it was built with, rungs empty (Ray 2.60: ``TuneController
.save_to_dir`` skips ``_scheduler_alg``; ``Tuner.restore`` unpickles the scheduler from
``tuner.pkl``, written before the first trial). With empty rungs nothing is stopped until they
refill, so trials already judged weak would train to full length after a resume.

``ResumableASHA`` appends every value a rung records to a file in the sweep folder and, when Ray
adds a restored trial, puts back that trial's values for the rungs it had reached according to
Ray's own saved state (its last result's ``time_attr``). Values recorded after Ray's last snapshot
are left out on purpose: Ray runs that trial again from its last saved checkpoint, it reports those
epochs again and is judged again, as it would have been without the restart.

Ray has no public API for rung state: it is read and written through ``tuning.sweep.ray_internals``
(``asha_rungs`` and its neighbours), which checks at import that the layout is the one tested.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Optional

from ray.tune.schedulers import AsyncHyperBandScheduler

from search_spaces.space import Categorical, Fixed, IntRange, SearchSpace
from trainables.hparams import default_of
from trainables.rounds import most_rounds
from tuning.sweep import ray_internals as internals

log = logging.getLogger(__name__)

RUNGS_FILE = "asha_rungs.jsonl"


def batch_sizes(space: SearchSpace, presets: list[tuple[dict, dict]] = ()) -> set[int]:
    """Every batch size a trial of ``space`` or of a warm-start preset ((enqueued, overrides)
    pairs) can train with."""
    param = space.get("batch_size")
    dist = param.dist if param is not None else Fixed(space.constants.get("batch_size", default_of("batch_size")))
    if isinstance(dist, Categorical):
        sizes = set(dist.choices)
    elif isinstance(dist, IntRange):
        sizes = set(range(dist.low, dist.high + 1, dist.step or 1))
    else:
        sizes = {dist.value}
    return {int(s) for s in sizes} | {int(p["batch_size"]) for p in
                                      ({**overrides, **enqueued} for enqueued, overrides in presets)
                                      if p.get("batch_size")}


def max_rounds(space: SearchSpace, presets: list[tuple[dict, dict]], *, epochs: int, eval_every: str,
               train_size: int) -> int:
    """ASHA's ``max_t`` in round mode (``eval_every``): the most rounds any trial can report,
    ``ceil(epochs * steps_per_epoch / steps_per_round)`` at the batch size that gives the most
    (in steps, the smallest), over the space's batch sizes and the presets'."""
    return most_rounds(eval_every, epochs=epochs, train_size=train_size,
                       batch_sizes=batch_sizes(space, presets))


class ResumableASHA(AsyncHyperBandScheduler):
    """``ASHAScheduler`` (same arguments) that records its rungs in ``rungs_file`` (JSON lines:
    trial id, bracket, milestone, score) and restores them for the trials Ray restores."""

    def __init__(self, rungs_file: str, **asha_args):
        super().__init__(**asha_args)
        self.rungs_file = str(rungs_file)
        self._saved: Optional[dict[str, dict]] = None  # trial id -> {"bracket", "rungs": {milestone: score}}

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_saved"] = None  # read again from the file by the restored copy
        return state

    # -- Ray's scheduler hooks
    def on_trial_add(self, tune_controller, trial):
        super().on_trial_add(tune_controller, trial)
        if self._saved is None:
            self._saved = self._read()
        saved = self._saved.pop(trial.trial_id, None)
        reached = (trial.last_result or {}).get(internals.asha_time_attr(self))
        if saved is None or not reached:  # a new trial, or one Ray restores from its start
            return
        brackets = internals.asha_brackets(self)
        bracket = brackets[saved["bracket"]] if saved["bracket"] < len(brackets) else \
            internals.asha_bracket_of(self, trial.trial_id)
        internals.set_asha_bracket_of(self, trial.trial_id, bracket)
        for milestone, _ in internals.asha_rungs(bracket):
            if milestone <= reached and milestone in saved["rungs"]:
                internals.set_asha_rung_score(bracket, milestone, trial.trial_id, saved["rungs"][milestone])

    def on_trial_result(self, tune_controller, trial, result):
        before = self._rungs_of(trial.trial_id)
        action = super().on_trial_result(tune_controller, trial, result)
        self._append(trial.trial_id, before)
        return action

    def on_trial_complete(self, tune_controller, trial, result):
        before = self._rungs_of(trial.trial_id)
        bracket = internals.asha_bracket_of(self, trial.trial_id)
        super().on_trial_complete(tune_controller, trial, result)
        if bracket is not None:
            self._append(trial.trial_id, before, bracket)

    # -- the rungs file
    def _rungs_of(self, trial_id: str) -> dict:
        bracket = internals.asha_bracket_of(self, trial_id)
        if bracket is None:
            return {}
        return {milestone: recorded[trial_id] for milestone, recorded in internals.asha_rungs(bracket)
                if trial_id in recorded}

    def _append(self, trial_id: str, before: dict, bracket=None) -> None:
        bracket = bracket or internals.asha_bracket_of(self, trial_id)
        if bracket is None:
            return
        new = [(m, recorded[trial_id]) for m, recorded in internals.asha_rungs(bracket)
               if trial_id in recorded and m not in before]
        if not new:
            return
        index = internals.asha_brackets(self).index(bracket)
        with open(self.rungs_file, "a") as out:  # one line per value: a torn last line is skipped
            for milestone, score in new:
                out.write(json.dumps({"trial_id": trial_id, "bracket": index,
                                      "milestone": milestone, "score": float(score)}) + "\n")

    def _read(self) -> dict[str, dict]:
        saved: dict[str, dict] = {}
        path = Path(self.rungs_file)
        if not path.is_file():
            return saved
        for line in path.read_text().splitlines():
            try:
                row = json.loads(line)
            except ValueError:
                continue  # the driver died while writing this line
            entry = saved.setdefault(row["trial_id"], {"bracket": row["bracket"], "rungs": {}})
            entry["bracket"] = row["bracket"]
            entry["rungs"][row["milestone"]] = row["score"]  # a later value (a re-judged epoch) wins
        if saved:
            log.info("ASHA: rungs of %d trial(s) read back from %s", len(saved), path)
        return saved
