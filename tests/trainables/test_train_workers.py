"""Trials spread over several workers (issue 24): what a trial of several workers holds and what
is refused, and real sweeps whose trials train on two gloo Ray Train workers on CPU and report,
checkpoint, resume and reach MLflow as a one-worker trial does."""

from __future__ import annotations

import json
import os
import time

import pytest
from mlflow.tracking import MlflowClient

from trainables.checkpointing import checkpoint_folders, load_checkpoint
from trainables.errors import ConfigError
from trainables.trial_resources import RELAY_MEMORY, WorkerGroup
from tuning.config import SweepConfig
from tuning.sweep.cluster import check_trial_resources, trials_at_once
from tuning.sweep.prepare import check_local_resources

# everything fixed: no dropout (the one randomness a worker's part of a batch would draw apart
# from the whole batch), no R-Drop/SupCon (refused over several workers), no serving measures
SPACE = ("lr: 1.0e-3\nbatch_size: 16\nhead_lr_multiplier: 10.0\nclassifier_dropout: 0.0\n"
         "hidden_dropout: 0.0\nattention_dropout: 0.0\ndeploy_metrics: false\nperturb_eval: null\n")


def test_a_spread_trial_holds_its_workers_and_reserves_no_cpu_itself():
    one = SweepConfig(name="s", cpus_per_trial=2, gpus_per_trial=0.5).worker_group
    assert not one.spread and one.trial_resources() == {"cpu": 2, "gpu": 0.5}
    cpus = SweepConfig(name="s", workers_per_trial=3, cpus_per_trial=2).worker_group
    assert cpus == WorkerGroup(3, 2, 0.0) and cpus.spread
    assert cpus.worker_bundle() == {"CPU": 2} and cpus.total() == {"CPU": 6}
    assert cpus.trial_resources() == {"cpu": 0, "gpu": 0, "memory": RELAY_MEMORY}
    gpus = SweepConfig(name="s", gpus_per_trial=4).worker_group  # the GPUs are the workers
    assert gpus == WorkerGroup(4, 1.0, 1.0) and gpus.total() == {"CPU": 4, "GPU": 4}


@pytest.mark.parametrize("settings, message", [
    (dict(trainable="contrastive", workers_per_trial=2), "only finetune trials can do, but the sweep's trainable is 'contrastive'"),
    (dict(trainable="multitask", gpus_per_trial=2), "only finetune trials can do, but the sweep's trainable is 'multitask'"),
    (dict(trainable="any", workers_per_trial=2), "trainable is 'any'"),
    (dict(scheduler="pbt", num_trials=4, workers_per_trial=2), "population-based training .* cannot spread trials"),
])
def test_families_and_schedulers_that_cannot_spread_a_trial_are_refused(settings, message):
    with pytest.raises(ConfigError, match=message):
        SweepConfig(name="s", **settings)


def test_a_trial_needing_more_cpus_than_this_machine_has_is_refused_before_ray_starts():
    cpus = len(os.sched_getaffinity(0))
    check_local_resources(SweepConfig(name="s", workers_per_trial=cpus))  # fits exactly
    with pytest.raises(ConfigError, match=rf"a trial over {cpus + 1} workers \(--workers-per-trial\) holds "
                                          rf"--cpus-per-trial 1 CPUs for each worker, {cpus + 1} in all, "
                                          rf"but this machine has {cpus}.*Use --workers-per-trial {cpus} or fewer"):
        check_local_resources(SweepConfig(name="s", workers_per_trial=cpus + 1))


def test_the_ray_check_counts_a_trials_workers_and_caps_trials_at_once(ray_local):
    # the test Ray has 2 CPUs: room for two workers of one CPU, one spread trial at a time
    check_trial_resources(SweepConfig(name="s", workers_per_trial=2))
    assert trials_at_once(SweepConfig(name="s", workers_per_trial=2)) == 1
    assert trials_at_once(SweepConfig(name="s", workers_per_trial=2, cpus_per_trial=0.5)) == 2
    assert trials_at_once(SweepConfig(name="s", workers_per_trial=2, cpus_per_trial=0.5, max_concurrent=1)) == 1
    assert trials_at_once(SweepConfig(name="s", max_concurrent=3)) == 3  # one worker: as given
    with pytest.raises(ConfigError, match=r"the local Ray cannot run a trial: one trial trains on 3 workers "
                                          r"\(--workers-per-trial\) of 1 CPUs, 0 GPUs each, and its 1 node\(s\) "
                                          r"hold room for 2 such worker\(s\).*Lower --workers-per-trial"):
        check_trial_resources(SweepConfig(name="s", workers_per_trial=3), node_wait_s=0)


# real sweeps ------------------------------------------------------------------------------

def _sweep(tiny_model_dir, tmp_path, name, **settings):
    from tuning.sweep.runner import run_sweep

    tmp_path.mkdir(parents=True, exist_ok=True)
    space = tmp_path / "space.yaml"
    space.write_text(SPACE)
    cfg = SweepConfig(name=name, model=tiny_model_dir, max_length=64, epochs=2, num_trials=1,
                      storage=str(tmp_path), scheduler="none", space_file=str(space), seed=0,
                      precision="fp32", **settings)
    return cfg, run_sweep(cfg)


def _trial_runs(cfg):
    client = MlflowClient(cfg.resolved_tracking_uri())
    exp = client.get_experiment_by_name(cfg.name)
    return client, client.search_runs([exp.experiment_id], "tags.`tunebert.kind` = 'trial'")


def _history(client, run, key):
    return [m.value for m in sorted(client.get_metric_history(run.info.run_id, key), key=lambda m: m.step)]


def _all_cpus_free(ray, want: float, wait_s: float = 30.0) -> bool:
    """Whether Ray's CPUs are all free again (a trial's workers and their placement group gone)."""
    end = time.time() + wait_s
    while time.time() < end:
        if ray.available_resources().get("CPU", 0) >= want:
            return True
        time.sleep(0.5)
    return False


@pytest.mark.slow
def test_a_sweep_of_two_worker_trials_reports_and_checkpoints_as_one_worker_trials(
        ray_local, tiny_model_dir, tmp_path):
    one_cfg, one = _sweep(tiny_model_dir, tmp_path / "one", "one-worker")
    two_cfg, two = _sweep(tiny_model_dir, tmp_path / "two", "two-workers", workers_per_trial=2)
    assert one.counts == two.counts == {"FINISHED": 1, "FAILED": 0, "KILLED": 0}
    (one_client, [one_run]), (client, [two_run]) = _trial_runs(one_cfg), _trial_runs(two_cfg)
    # the same config (same space and seed), the same keys every epoch
    assert json.loads(two_run.data.tags["tunebert.config"]) == json.loads(one_run.data.tags["tunebert.config"])
    assert set(two_run.data.metrics) == set(one_run.data.metrics)
    for key in ("val_accuracy", "train_loss", "val_loss", "best_val_accuracy"):
        assert sorted(m.step for m in client.get_metric_history(two_run.info.run_id, key)) == [1, 2], key
    # the same global batches, so the same loss curve up to float rounding (DDP averages grads)
    for key in ("train_loss", "val_loss", "val_accuracy"):
        assert _history(client, two_run, key) == pytest.approx(_history(one_client, one_run, key),
                                                               rel=1e-4, abs=1e-5), key
    assert two_run.data.metrics["best_epoch"] == one_run.data.metrics["best_epoch"]
    # Ray Tune holds the trial's checkpoints; the ended trial's loads as a model
    [trial_dir] = [d for d in two_cfg.sweep_dir.iterdir() if d.is_dir() and checkpoint_folders(d)]
    state = load_checkpoint(checkpoint_folders(trial_dir)[-1])
    assert state["epoch"] == 2 and state["model"]
    assert not (trial_dir / "train_workers").exists()  # rank 0's copies are gone once reported
    result = [json.loads(line) for line in (trial_dir / "result.json").read_text().splitlines()]
    assert [r["epoch"] for r in result] == [1, 2]
    assert _all_cpus_free(ray_local, 2), "the trial's workers still hold CPUs after the sweep"


@pytest.mark.slow
def test_a_two_worker_trial_that_fails_resumes_from_its_checkpoint(ray_local, tiny_model_dir, tmp_path,
                                                                   fail_marker):
    fail_marker.write_text("2")  # the first worker to start epoch 2 raises, once
    cfg, outcome = _sweep(tiny_model_dir, tmp_path, "two-workers-retried", workers_per_trial=2,
                          max_failures=1)
    assert not fail_marker.exists(), "the fault was never injected"
    assert outcome.counts == {"FINISHED": 1, "FAILED": 0, "KILLED": 0}
    [error] = list(cfg.sweep_dir.glob("*/error.txt"))
    assert "injected failure at point 2" in error.read_text()
    # the retried trial went on at epoch 2 from its epoch-1 checkpoint instead of starting over
    result = [json.loads(line) for line in (error.parent / "result.json").read_text().splitlines()]
    assert [r["epoch"] for r in result] == [1, 2]
    client, [run] = _trial_runs(cfg)
    assert sorted(m.step for m in client.get_metric_history(run.info.run_id, "train_loss")) == [1, 2]
    assert _all_cpus_free(ray_local, 2)
