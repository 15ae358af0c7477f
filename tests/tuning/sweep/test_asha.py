"""tuning.sweep.asha.ResumableASHA: the rungs survive a driver restart the way Ray restores a sweep (the
scheduler unpickled as it was built, then every restored trial added again with its last saved
result), so a weak trial is still stopped at the rung."""

from __future__ import annotations

import pickle

import pytest
from ray.tune.experiment import Trial
from ray.tune.schedulers import ASHAScheduler, TrialScheduler

from tuning.sweep.asha import ResumableASHA

ARGS = dict(time_attr="training_iteration", metric="score", mode="max", max_t=4, grace_period=1,
            reduction_factor=2)


def _trial(trial_id: str, last_iteration: int = 0) -> Trial:
    trial = Trial("trainable", config={}, trial_id=trial_id, stub=True)
    if last_iteration:
        trial.run_metadata.last_result = {"training_iteration": last_iteration}
    return trial


def _report(scheduler, trial, iteration: int, score: float) -> str:
    return scheduler.on_trial_result(None, trial, {"training_iteration": iteration, "score": score})


def _run_then_restore(scheduler):
    """Two strong trials pass rung 1; ``b`` also reaches rung 2, after Ray's last snapshot. The
    driver dies; Ray restores the scheduler from ``tuner.pkl`` (as built) and adds back ``a``
    (ended after iteration 4) and ``b`` (saved after iteration 1)."""
    built = pickle.dumps(scheduler)  # Tuner pickles it before the first trial
    a, b = _trial("a"), _trial("b")
    for trial in (a, b):
        scheduler.on_trial_add(None, trial)
    for iteration in (1, 2, 3, 4):
        _report(scheduler, a, iteration, 0.8)
    scheduler.on_trial_complete(None, a, {"training_iteration": 4, "score": 0.8})
    assert _report(scheduler, b, 1, 0.85) == TrialScheduler.CONTINUE
    assert _report(scheduler, b, 2, 0.1) == TrialScheduler.STOP  # judged after the snapshot
    restored = pickle.loads(built)
    restored.on_trial_add(None, _trial("a", last_iteration=4))
    restored.on_trial_add(None, _trial("b", last_iteration=1))
    return restored


def test_restored_rungs_stop_a_weak_trial_at_the_rung(tmp_path):
    restored = _run_then_restore(ResumableASHA(str(tmp_path / "rungs.jsonl"), **ARGS))
    weak = _trial("weak")
    restored.on_trial_add(None, weak)
    assert _report(restored, weak, 1, 0.05) == TrialScheduler.STOP


def test_values_recorded_after_rays_snapshot_are_judged_again(tmp_path):
    restored = _run_then_restore(ResumableASHA(str(tmp_path / "rungs.jsonl"), **ARGS))
    b = _trial("b", last_iteration=1)
    # Ray runs b again from iteration 1: its rung-2 score is judged again, not taken as recorded
    assert _report(restored, b, 2, 0.95) == TrialScheduler.CONTINUE
    rung_2 = dict(restored._brackets[0]._rungs)[2]
    assert rung_2 == {"a": 0.8, "b": 0.95}


def test_rays_own_asha_forgets_its_rungs_on_restore():
    """Why ResumableASHA exists: the same restore with Ray's ASHAScheduler lets the weak trial
    through (if this starts failing, Ray saves scheduler state now: drop ResumableASHA)."""
    restored = _run_then_restore(ASHAScheduler(**ARGS))
    weak = _trial("weak")
    restored.on_trial_add(None, weak)
    assert _report(restored, weak, 1, 0.05) == TrialScheduler.CONTINUE


def test_a_torn_last_line_is_skipped(tmp_path):
    path = tmp_path / "rungs.jsonl"
    scheduler = ResumableASHA(str(path), **ARGS)
    restored = _run_then_restore(scheduler)
    with open(path, "a") as out:
        out.write('{"trial_id": "c", "brack')  # the driver died mid-line
    again = ResumableASHA(str(path), **ARGS)  # a second restore
    again.on_trial_add(None, _trial("a", last_iteration=4))
    assert dict(again._brackets[0]._rungs)[1] == {"a": 0.8}
    assert dict(restored._brackets[0]._rungs)[1] == {"a": 0.8, "b": 0.85}


def test_max_t_counts_rounds_with_eval_every():
    """Budgets in steps: ASHA's time axis is the reporting round, and max_t the most rounds a
    trial of the space (or a warm-start preset) runs: ceil(epochs * steps_per_epoch / eval_every)
    at the batch size that gives the most."""
    from search_spaces.finetune import finetune_space
    from search_spaces.space import Categorical, Fixed, Param, SearchSpace
    from tuning.sweep.asha import batch_sizes, max_rounds

    space = SearchSpace((Param("batch_size", Categorical((32, 64))),), {"trainable": "finetune"})
    # 1000 examples, 2 epochs, batch 32: 32 steps/epoch, 64 steps, 10 per round -> 7 rounds
    assert max_rounds(space, [], epochs=2, eval_every="10", train_size=1000) == 7
    # a warm-start preset with batch 16: 63 steps/epoch, 126 steps -> 13 rounds
    assert max_rounds(space, [({"batch_size": 16}, {})], epochs=2, eval_every="10", train_size=1000) == 13
    # in examples, about the same count whatever the batch: ceil(2 * 32 / ceil(250 / 32)) = 8
    assert max_rounds(space, [], epochs=2, eval_every="250ex", train_size=1000) == 8
    fixed = SearchSpace((Param("batch_size", Fixed(100)),), {})
    assert max_rounds(fixed, [], epochs=3, eval_every="4", train_size=1000) == 8  # ceil(30 / 4)
    assert batch_sizes(finetune_space()) == {16, 32, 64, 128}
    assert batch_sizes(SearchSpace((), {})) == {32}  # not in the space: the registry default


@pytest.mark.slow
def test_a_sweep_with_eval_every_runs_asha_on_rounds(ray_local, tiny_model_dir, tmp_path):
    """Budgets in steps, end to end (real Ray, Optuna, MLflow): every report is a round of 3
    steps, so ASHA's rungs, Ray's iterations, MLflow's steps and the checkpoints count rounds."""
    import json
    from pathlib import Path

    from mlflow.tracking import MlflowClient

    from tuning.config import SweepConfig
    from tuning.sweep.runner import run_sweep

    space = tmp_path / "space.yaml"
    space.write_text("batch_size: 32\n")  # 360 demo examples: 12 steps an epoch, 4 rounds of 3
    cfg = SweepConfig(name="rounds", model=tiny_model_dir, max_length=64, epochs=1, num_trials=4,
                      storage=str(tmp_path), space_file=str(space), eval_every="3", seed=2,
                      grace_period=1, reduction_factor=2, max_concurrent=2)
    run_sweep(cfg)
    results = {p.parent.name: [json.loads(line) for line in p.read_text().splitlines()]
               for p in Path(cfg.sweep_dir).glob("*/result.json")}
    assert len(results) == 4
    for rows in results.values():
        assert [r["training_iteration"] for r in rows] == [r["epoch"] for r in rows] == \
            list(range(1, len(rows) + 1))
        assert [r["step"] for r in rows] == [3 * r["epoch"] for r in rows]
        assert all(r["rounds"] == 4 and r.get("checkpoint_dir_name") for r in rows)  # one per round
    assert max(len(rows) for rows in results.values()) == 4  # max_t: 4 rounds in a 1-epoch sweep
    rungs = [json.loads(line) for line in (cfg.sweep_dir / "asha_rungs.jsonl").read_text().splitlines()]
    assert {r["milestone"] for r in rungs} >= {1, 2}  # a rung beyond epochs=1: ASHA counts rounds
    client = MlflowClient(cfg.resolved_tracking_uri())
    experiment = client.get_experiment_by_name("rounds")
    trials = [r for r in client.search_runs([experiment.experiment_id])
              if r.data.tags.get("tunebert.kind") == "trial"]
    longest = max(trials, key=lambda r: len(client.get_metric_history(r.info.run_id, "val_accuracy")))
    assert [m.step for m in client.get_metric_history(longest.info.run_id, "val_accuracy")] == [1, 2, 3, 4]
    assert json.loads(longest.data.tags["tunebert.config"])["eval_every"] == "3"
    assert 1 <= longest.data.metrics["best_epoch"] <= 4
