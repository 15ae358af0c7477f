"""The sweep's compact console view (``tuning.sweep.progress``) and the logging set-up behind it
(``tuning.console``), driven through the Ray Tune callback hooks with stand-in trials."""

from __future__ import annotations

import logging
import pickle
from dataclasses import dataclass, field

import pytest

from tuning import console
from tuning.sweep.progress import SweepProgress, planned_epochs, standing_out


@dataclass
class _Trial:  # the attributes of ray.tune.experiment.Trial the callback reads
    trial_id: str
    config: dict
    status: str = "RUNNING"
    last_result: dict = field(default_factory=dict)
    path: str = "/tmp/sweep/trial"


class _Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def _lines(capsys) -> list[str]:
    return capsys.readouterr().out.splitlines()


def test_standing_out_names_the_parameters_furthest_from_the_earlier_trials():
    earlier = [{"lr": 1e-4, "batch_size": 32, "optimizer": "adamw", "pooling": "mean", "dropout": 0.1},
               {"lr": 2e-4, "batch_size": 32, "optimizer": "adamw", "pooling": "cls", "dropout": 0.12}]
    keys = ["lr", "batch_size", "optimizer", "pooling", "dropout"]
    # lr 100x the others (log scale), a new optimizer; batch size and dropout as before
    config = {"lr": 1e-2, "batch_size": 32, "optimizer": "sgd", "pooling": "mean", "dropout": 0.11}
    assert standing_out(config, earlier, keys, n=2) == ["lr", "optimizer"]
    # the first trial: nothing to compare with, the first n in the space's order
    assert standing_out(config, [], keys, n=3) == ["lr", "batch_size", "optimizer"]
    # a parameter no earlier trial had (a conditional one) stands out
    usual = {"lr": 1.5e-4, "batch_size": 32, "optimizer": "adamw", "pooling": "mean", "dropout": 0.11}
    assert standing_out({**usual, "head_hidden": 64}, earlier, keys + ["head_hidden"], n=1) == ["head_hidden"]


def test_planned_epochs_is_the_trials_full_length():
    assert planned_epochs({"trainable": "finetune", "epochs": 4}) == 4
    assert planned_epochs({"trainable": "finetune", "epochs": 4, "stop_epoch": 3}) == 3


def test_a_trial_prints_one_line_when_it_starts_and_one_when_it_ends(capsys):
    console.setup(0)
    progress = SweepProgress(["lr", "optimizer"], "best_val_accuracy", "max", num_trials=3,
                             time_budget_s=None, planned_epochs=lambda config: 4,
                             clock_fn=_Clock())
    progress.setup()
    a, b = _Trial("t_00000", {"lr": 1e-4, "optimizer": "adamw"}), _Trial("t_00001", {"lr": 3e-3, "optimizer": "sgd"})
    progress.on_step_begin(0, [a, b])
    progress.on_trial_start(0, [a, b], a)
    for epoch, score in ((1, 0.61), (2, 0.74), (3, 0.72), (4, 0.70)):
        progress.on_trial_result(0, [a, b], a, {"epoch": epoch, "best_val_accuracy": max(0.61, score)
                                                if epoch == 1 else 0.74 if epoch > 1 else score})
    progress.on_trial_complete(0, [a, b], a)
    progress.on_trial_start(0, [a, b], b)
    progress.on_trial_result(0, [a, b], b, {"epoch": 1, "best_val_accuracy": 0.20})
    progress.on_trial_complete(0, [a, b], b)  # ASHA stopped it after one of four epochs
    assert _lines(capsys) == [
        "[tunebert] trial t_00000 started: lr=0.0001 optimizer=adamw",
        "[tunebert] trial t_00000 finished: 4 epoch(s), best val_accuracy 0.7400 (epoch 2)",
        "[tunebert] trial t_00001 started: lr=0.003 optimizer=sgd",
        "[tunebert] trial t_00001 stopped early: 1 epoch(s), best val_accuracy 0.2000 (epoch 1)",
    ]


def test_the_status_line_counts_trials_names_the_best_and_estimates_the_time_left(capsys):
    console.setup(0)
    clock = _Clock()
    progress = SweepProgress(["lr"], "best_val_accuracy", "max", num_trials=10, time_budget_s=None,
                             planned_epochs=lambda config: 2, status_every_s=60, clock_fn=clock)
    trials = [_Trial(f"t_{i:05d}", {"lr": 1e-4 * (i + 1)}) for i in range(4)]
    progress.on_step_begin(0, trials)  # the clock starts; no status line yet
    for trial, score, epochs in ((trials[0], 0.8, 2), (trials[1], 0.9, 1)):
        progress.on_trial_start(0, trials, trial)
        progress.on_trial_result(0, trials, trial, {"epoch": epochs, "best_val_accuracy": score})
        progress.on_trial_complete(0, trials, trial)
        trial.status = "TERMINATED"
    progress.on_trial_start(0, trials, trials[2])
    progress.on_trial_error(0, trials, trials[2])
    trials[2].status, trials[3].status = "ERROR", "RUNNING"
    capsys.readouterr()
    clock.now += 30
    progress.on_step_begin(1, trials)
    assert _lines(capsys) == []  # not a minute yet
    clock.now += 30  # 60 s: 3 of 10 ended, so about 7 x 20 s left
    progress.on_step_begin(2, trials)
    assert _lines(capsys) == [
        "[tunebert] sweep: 3/10 done (1 stopped early, 1 failed), 1 running, 6 pending, best "
        "val_accuracy 0.9000 (t_00001), 1m00s elapsed, ~2m20s left"]
    # a time budget caps the estimate
    progress.time_budget_s = 90
    clock.now += 60
    progress.on_step_begin(3, trials)
    assert _lines(capsys)[0].endswith("2m00s elapsed, ~0s left")
    # later the lines thin out: every sixth of the time elapsed (here about 2 minutes)
    clock.now += 480  # 10 min elapsed
    progress.on_step_begin(4, trials)
    capsys.readouterr()
    clock.now += 95  # 11m35s / 6 = 1m56s: not yet
    progress.on_step_begin(5, trials)
    assert _lines(capsys) == []
    clock.now += 25  # 12 min / 6 = 2 min since the last line
    progress.on_step_begin(6, trials)
    assert len(_lines(capsys)) == 1


def test_a_failed_trial_is_a_warning_that_says_where_its_error_is(capsys):
    console.setup(0)
    progress = SweepProgress(["lr"], "val_accuracy", "max", 2, None, planned_epochs=lambda c: 2)
    trial = _Trial("t_00007", {"lr": 1.0}, path="/runs/sweep/finetune_t_00007")
    progress.on_trial_start(0, [trial], trial)
    progress.on_trial_error(0, [trial], trial)
    assert _lines(capsys)[-1] == ("[tunebert] warning: trial t_00007 failed after 0 epoch(s); its "
                                  "error is in /runs/sweep/finetune_t_00007 and in its MLflow run")


def test_a_pickled_view_starts_afresh_when_a_sweep_resumes():
    progress = SweepProgress(["lr"], "val_accuracy", "max", 2, None)
    progress.started_at, progress.ended = 5.0, {"t": "finished"}
    again = pickle.loads(pickle.dumps(progress))
    assert again.started_at is None and again.ended == {} and again.num_trials == 2
    assert again.planned_epochs is planned_epochs


@pytest.mark.parametrize("verbosity, shown", [(-1, ["error"]), (0, ["info", "warning", "error"]),
                                              (1, ["debug", "info", "warning", "error"])])
def test_verbosity_decides_which_messages_print(verbosity, shown, capsys):
    console.setup(verbosity)
    try:
        logger = logging.getLogger("tuning.some_module")
        for level in ("debug", "info", "warning", "error"):
            getattr(logger, level)(f"a {level} message")
        printed = _lines(capsys)
        assert [line.split()[-2] for line in printed] == shown
        assert all(line.startswith("[tunebert] ") for line in printed)
        ray = console.ray_settings()
        assert ray["init"]["log_to_driver"] is (verbosity > 0)
        assert ray["tune_verbose"] == (2 if verbosity > 0 else 0)
    finally:
        console.setup(0)


def test_the_cli_takes_verbose_and_quiet_on_every_command():
    from tuning.cli import build_parser

    parser = build_parser()
    assert parser.parse_args(["sweep", "-v"]).verbosity == 1
    assert parser.parse_args(["best", "x", "--quiet"]).verbosity == -1
    assert parser.parse_args(["presets"]).verbosity == 0
    with pytest.raises(SystemExit):
        parser.parse_args(["sweep", "-v", "-q"])
