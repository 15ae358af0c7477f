"""ASHA whose rungs survive a driver restart.

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

Relies on ``AsyncHyperBandScheduler``'s ``_brackets``, ``_trial_info`` and ``_Bracket._rungs``
(a list of ``(milestone, {trial_id: score})``): Ray has no public API for rung state. Checked
against Ray 2.60; ``tests/tuning/test_asha.py`` fails if that layout changes.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Optional

from ray.tune.schedulers import AsyncHyperBandScheduler

log = logging.getLogger(__name__)

RUNGS_FILE = "asha_rungs.jsonl"


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
        reached = (trial.last_result or {}).get(self._time_attr)
        if saved is None or not reached:  # a new trial, or one Ray restores from its start
            return
        bracket = self._brackets[saved["bracket"]] if saved["bracket"] < len(self._brackets) else \
            self._trial_info[trial.trial_id]
        self._trial_info[trial.trial_id] = bracket
        for milestone, recorded in bracket._rungs:
            if milestone <= reached and milestone in saved["rungs"]:
                recorded[trial.trial_id] = saved["rungs"][milestone]

    def on_trial_result(self, tune_controller, trial, result):
        before = self._rungs_of(trial.trial_id)
        action = super().on_trial_result(tune_controller, trial, result)
        self._append(trial.trial_id, before)
        return action

    def on_trial_complete(self, tune_controller, trial, result):
        before = self._rungs_of(trial.trial_id)
        bracket = self._trial_info.get(trial.trial_id)
        super().on_trial_complete(tune_controller, trial, result)
        if bracket is not None:
            self._append(trial.trial_id, before, bracket)

    # -- the rungs file
    def _rungs_of(self, trial_id: str) -> dict:
        bracket = self._trial_info.get(trial_id)
        if bracket is None:
            return {}
        return {milestone: recorded[trial_id] for milestone, recorded in bracket._rungs
                if trial_id in recorded}

    def _append(self, trial_id: str, before: dict, bracket=None) -> None:
        bracket = bracket or self._trial_info.get(trial_id)
        if bracket is None:
            return
        new = [(m, recorded[trial_id]) for m, recorded in bracket._rungs
               if trial_id in recorded and m not in before]
        if not new:
            return
        index = self._brackets.index(bracket)
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
