"""Population Based Training: mutations from the space, validation before Ray starts, and an
end-to-end PBT sweep (real local Ray, real MLflow store) whose clones keep their lineage."""

from __future__ import annotations

import json
import random
from types import SimpleNamespace

import pytest

from search_spaces.space import Categorical, Fixed, FloatRange, IntRange, Param, SearchSpace
from trainables.errors import ConfigError
from tuning.sweep import pbt
from tuning.config import PBT_MUTATIONS, SweepConfig

SPACE = SearchSpace((
    Param("lr", FloatRange(1e-5, 3e-4, log=True)),
    Param("optimizer", Categorical(("adamw", "sgd"))),
    Param("momentum", FloatRange(0.8, 0.99), when={"optimizer": ("sgd",)}),
    Param("batch_size", Categorical((16, 32, 64))),
    Param("head_hidden", IntRange(16, 512, log=True)),
    Param("weight_decay", FloatRange(0.0, 0.1)),
    Param("grad_clip", Fixed(1.0)),
), {"trainable": "finetune", "epochs": 4})


# --------------------------------------------------------------------------- mutations from the space

def test_mutations_come_from_the_space_ranges():
    from ray.tune.search.sample import Float, Integer

    params = pbt.mutable_params(SPACE, ("lr", "weight_decay", "head_hidden", "batch_size"), "pbt")
    mutations = pbt.ray_mutations(params, "pbt")
    assert isinstance(mutations["lr"], Float) and (mutations["lr"].lower, mutations["lr"].upper) == (1e-5, 3e-4)
    assert isinstance(mutations["weight_decay"], Float) and mutations["weight_decay"].upper == 0.1
    assert isinstance(mutations["head_hidden"], Integer) and mutations["head_hidden"].upper == 513
    assert mutations["batch_size"] == [16, 32, 64]  # PBT shifts to a neighbouring choice
    bounds = pbt.ray_mutations(pbt.mutable_params(SPACE, ("lr", "weight_decay"), "pb2"), "pb2")
    assert bounds == {"lr": [1e-5, 3e-4], "weight_decay": [0.0, 0.1]}


@pytest.mark.parametrize("names, scheduler, message", [
    (("dropout_rate",), "pbt", "not a parameter of the search space"),
    (("grad_clip",), "pbt", "the search space fixes it to 1.0"),
    (("momentum",), "pbt", "exists only when {'optimizer': ('sgd',)}"),
    (("optimizer",), "pbt", "mutates a numeric range or numeric choices"),
    (("batch_size",), "pb2", "--scheduler pb2 mutates a numeric range"),
])
def test_unmutable_parameters_are_refused_with_the_fix(names, scheduler, message):
    with pytest.raises(ConfigError, match="leave it out of --mutate") as info:
        pbt.mutable_params(SPACE, names, scheduler)
    assert message in str(info.value)


def test_perturbed_values_stay_inside_the_space_range():
    random.seed(0)
    params = pbt.mutable_params(SPACE, ("lr", "weight_decay"), "pbt")
    scheduler = pbt.LineagePBT(params=params, on_clone=None, hyperparam_mutations=pbt.ray_mutations(params, "pbt"),
                               resample_probability=0.0)
    donor = SimpleNamespace(config={"lr": 3e-4, "weight_decay": 0.1, "batch_size": 16})
    seen = set()
    for _ in range(20):
        config, operations = scheduler._get_new_config(SimpleNamespace(config={}), donor)
        assert 1e-5 <= config["lr"] <= 3e-4 and 0.0 <= config["weight_decay"] <= 0.1
        assert config["batch_size"] == 16  # not mutated: the donor's value
        seen.add(operations["lr"])
    assert "* 1.2 then clipped to the space's [1e-05, 0.0003]" in seen and "* 0.8" in seen


def test_no_perturbation_after_the_last_round_with_eval_every(monkeypatch):
    """Budgets in steps: a trial counts rounds (``epoch`` = the round, ``rounds`` = its last), so
    the last epoch PBT skips is the last round, not `epochs`."""
    from ray.tune.schedulers import PopulationBasedTraining, TrialScheduler

    monkeypatch.setattr(PopulationBasedTraining, "on_trial_result", lambda *a: "ranked")
    params = pbt.mutable_params(SPACE, ("lr",), "pbt")
    scheduler = pbt.LineagePBT(params=params, on_clone=None, hyperparam_mutations=pbt.ray_mutations(params, "pbt"))
    trial = SimpleNamespace(config={"trainable": "finetune", "epochs": 2, "eval_every": "10"})
    assert scheduler.on_trial_result(None, trial, {"epoch": 2, "rounds": 5}) == "ranked"  # round 2 of 5
    assert scheduler.on_trial_result(None, trial, {"epoch": 5, "rounds": 5}) == TrialScheduler.CONTINUE
    per_epoch = SimpleNamespace(config={"trainable": "finetune", "epochs": 2})
    assert scheduler.on_trial_result(None, per_epoch, {"epoch": 2}) == TrialScheduler.CONTINUE


def test_clone_event_lists_old_donor_and_new_values():
    event = pbt.clone_event(before={"lr": 1e-5, "weight_decay": 0.0, "head": "mlp", "epochs": 3},
                            donor={"lr": 1e-3, "weight_decay": 0.01, "head": "linear", "epochs": 3},
                            after={"lr": 1.2e-3, "weight_decay": 0.01, "head": "linear", "epochs": 3},
                            mutated=("lr", "weight_decay"), operations={"lr": "* 1.2", "weight_decay": "* 1.0"},
                            epoch=2, donor_trial_id="t1", donor_epoch=1)
    assert event["changes"] == {"lr": {"old": 1e-5, "donor": 1e-3, "new": 1.2e-3, "op": "* 1.2"},
                                "weight_decay": {"old": 0.0, "donor": 0.01, "new": 0.01, "op": "* 1.0"}}
    assert event["inherited"] == {"head": {"old": "mlp", "new": "linear"}}
    assert (event["epoch"], event["donor_trial_id"], event["donor_epoch"]) == (2, "t1", 1)
    json.dumps(event)  # goes to MLflow as JSON


# --------------------------------------------------------------------------- validation before Ray

@pytest.mark.parametrize("settings, message", [
    (dict(num_trials=1), "needs a population: `num_trials` (--trials) must be >= 2, but got 1"),
    (dict(trainable="contrastive"), "works with --trainable finetune only, but got 'contrastive'"),
    (dict(trainable="any"), "works with --trainable finetune only, but got 'any'"),
    (dict(max_concurrent=2), "cannot take --max-concurrent (2)"),
    (dict(epochs=2, perturbation_interval=2), "`perturbation_interval` (2) must be smaller than `epochs` (2)"),
    (dict(perturbation_interval=0), "`perturbation_interval` must be an integer >= 1, but got 0"),
    (dict(quantile_fraction=0.6), "`quantile_fraction` must lie in (0, 0.5], but got 0.6"),
    (dict(mutate=()), "`mutate` (--mutate) must name at least one parameter"),
])
def test_population_settings_are_checked(settings, message, tmp_path):
    with pytest.raises(ConfigError) as info:
        SweepConfig(**{"scheduler": "pbt", "num_trials": 4, "epochs": 3, "storage": str(tmp_path), **settings})
    assert message in str(info.value)


def test_population_settings_survive_save_and_load(tmp_path):
    from tuning.config import load_saved_sweep

    cfg = SweepConfig(name="p", scheduler="pb2", num_trials=4, epochs=3, perturbation_interval=2,
                      quantile_fraction=0.5, mutate=("lr",), time_budget_s=60, storage=str(tmp_path))
    cfg.save()
    assert load_saved_sweep("p", str(tmp_path)) == cfg
    assert SweepConfig().mutate == PBT_MUTATIONS


@pytest.mark.parametrize("args, message", [
    (["--trials", "1"], "needs a population"),
    (["--trainable", "contrastive"], "works with --trainable finetune only"),
    (["--mutate", "lr,optimizer"], "--mutate names 'optimizer'"),
    (["--mutate", "lr,head_hidden"], "exists only when {'head': ('mlp',)}"),
])
def test_cli_refuses_bad_pbt_sweeps_before_ray_starts(args, message, tmp_path, capsys):
    from tuning.cli import main

    rc = main(["sweep", "--scheduler", "pbt", "--trials", "4", *args, "--storage", str(tmp_path)])
    err = capsys.readouterr().err
    assert rc == 2 and message in err and err.startswith("tunebert sweep: error:")
    assert not (tmp_path / "ray").exists()


def test_a_space_file_that_fixes_a_mutated_parameter_is_refused(tmp_path):
    from tuning.sweep.runner import prepare

    space = tmp_path / "space.yaml"
    space.write_text("lr: 1.0e-3\n")
    cfg = SweepConfig(name="fixed", scheduler="pbt", num_trials=2, epochs=2, space_file=str(space),
                      storage=str(tmp_path))
    with pytest.raises(ConfigError, match="fixes it to 0.001; give it a range in --space"):
        prepare(cfg)


# --------------------------------------------------------------------------- end to end

# Two presets are the whole population: one learns (lr 3e-3), one barely moves (lr 1e-6), so the
# second ranks in the bottom half after epoch 1 and, with quantile 0.5 and synchronous PBT (the
# default: every member is ranked at the same epoch), clones the first then. A constant schedule
# without warm-up makes the logged `lr` equal the config's `lr`: it shows what a clone trains with.
SPACE_YAML = """\
lr: {low: 1.0e-6, high: 1.0e-2, log: true}
classifier_dropout: {low: 0.0, high: 0.5}
weight_decay: {low: 0.0, high: 0.1}
label_smoothing: {low: 0.0, high: 0.2}
scheduler: constant
warmup_ratio: 0.0
optimizer: adamw
batch_size: 32
head: linear
pooling: mean
llrd_decay: 1.0
head_lr_multiplier: 1.0
"""
PRESET = "classifier_dropout: 0.1\nweight_decay: 0.05\nlabel_smoothing: 0.05\n"
EPOCHS = 4


@pytest.fixture(scope="module")
def pbt_sweep(tmp_path_factory, tiny_model_dir, ray_local_module):
    from tuning.sweep.runner import run_sweep

    root = tmp_path_factory.mktemp("pbt")
    (root / "space.yaml").write_text(SPACE_YAML)
    (root / "good.yaml").write_text(f"lr: 3.0e-3\npreset: good\n{PRESET}")
    (root / "slow.yaml").write_text(f"lr: 1.0e-6\npreset: slow\n{PRESET}")
    cfg = SweepConfig(name="pbt", scheduler="pbt", model=tiny_model_dir, max_length=64, epochs=EPOCHS,
                      num_trials=2, storage=str(root), space_file=str(root / "space.yaml"),
                      warm_start=(str(root / "good.yaml"), str(root / "slow.yaml")),
                      quantile_fraction=0.5, perturbation_interval=1, seed=0)
    outcome = run_sweep(cfg)
    return cfg, outcome


def _trial_runs(cfg):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(cfg.resolved_tracking_uri())
    exp = client.get_experiment_by_name(cfg.name)
    return client, client.search_runs([exp.experiment_id], "tags.`tunebert.kind` = 'trial'")


def _clones(runs):
    return [r for r in runs if "tunebert.pbt.cloned_from" in r.data.tags]


@pytest.mark.slow
def test_every_member_keeps_one_run_and_its_whole_history(pbt_sweep):
    cfg, outcome = pbt_sweep
    client, runs = _trial_runs(cfg)
    assert len(runs) == 2 and len({r.data.tags["tunebert.trial_id"] for r in runs}) == 2
    assert outcome.counts == {"FINISHED": 2, "FAILED": 0, "KILLED": 0}
    for run in runs:
        assert run.info.status == "FINISHED"
        steps = {m.step for m in client.get_metric_history(run.info.run_id, "val_accuracy")}
        assert steps == set(range(1, EPOCHS + 1))  # a clone may repeat an epoch, never lose one
        assert run.data.metrics["val_accuracy"] == pytest.approx(
            max(client.get_metric_history(run.info.run_id, "val_accuracy"),
                key=lambda m: (m.step, m.timestamp)).value)
    # the params are the initial configs: both presets
    assert sorted(r.data.tags["tunebert.preset"] for r in runs) == ["good", "slow"]
    assert outcome.best is not None and outcome.best.run_id in {r.info.run_id for r in runs}


@pytest.mark.slow
def test_clones_record_donor_epoch_and_changes(pbt_sweep):
    cfg, _ = pbt_sweep
    client, runs = _trial_runs(cfg)
    clones = _clones(runs)
    assert clones, "no trial was cloned: PBT made no exploit"
    by_trial = {r.data.tags["tunebert.trial_id"]: r for r in runs}
    for clone in clones:
        tags = clone.data.tags
        donor = by_trial[tags["tunebert.pbt.cloned_from"]]
        assert donor.info.run_id != clone.info.run_id
        assert tags["tunebert.pbt.cloned_from_run"] == donor.info.run_id
        assert 1 <= int(tags["tunebert.pbt.cloned_at_epoch"]) < EPOCHS
        changes = json.loads(tags["tunebert.pbt.changes"])
        assert set(changes) == set(PBT_MUTATIONS)
        for name, change in changes.items():
            assert {"old", "donor", "new", "op"} <= set(change) and change["op"]
        current = json.loads(tags["tunebert.pbt.config"])
        assert all(current[name] == change["new"] for name, change in changes.items())
        assert json.loads(tags["tunebert.config"]) != current  # params/config tag stay the initial ones
        # the full history, one entry per clone, the latest matching the tags
        folder = client.download_artifacts(clone.info.run_id, "pbt_lineage.json")
        history = json.loads(open(folder).read())
        assert len(history) == int(tags["tunebert.pbt.clones"]) >= 1
        assert history[-1]["changes"] == changes
        assert history[-1]["donor_run_id"] == donor.info.run_id
        assert all(e["donor_epoch"] == e["epoch"] for e in history)  # synchronous: same epoch
    # Ray's own policy log saw the same clones (the lineage comes from the scheduler's decisions)
    policy = [json.loads(line) for line in (cfg.sweep_dir / "pbt_global.txt").read_text().splitlines()]
    assert len(policy) == sum(int(c.data.tags["tunebert.pbt.clones"]) for c in clones)


@pytest.mark.slow
def test_a_clone_trains_with_its_mutated_learning_rate(pbt_sweep):
    """After a clone the optimizer state comes from the donor's checkpoint; the learning rate must
    be the clone's new one, not the donor's (the logged `lr` follows the config: constant schedule)."""
    cfg, _ = pbt_sweep
    client, runs = _trial_runs(cfg)
    mutated = []
    for clone in _clones(runs):
        history = json.loads(open(client.download_artifacts(clone.info.run_id, "pbt_lineage.json")).read())
        last = history[-1]
        lr = {m.step: m for m in sorted(client.get_metric_history(clone.info.run_id, "lr"),
                                        key=lambda m: m.timestamp)}  # the latest value of each epoch
        mutated.append(last["changes"]["lr"]["new"] != last["changes"]["lr"]["donor"])
        assert lr[EPOCHS].value == pytest.approx(last["changes"]["lr"]["new"], rel=1e-6), (
            f"after cloning, trial {clone.data.tags['tunebert.trial_id']} trained with lr "
            f"{lr[EPOCHS].value}, but its config says {last['changes']['lr']['new']} (the donor's "
            f"was {last['changes']['lr']['donor']}): the optimizer state loaded from the checkpoint "
            f"overrode the mutated learning rate")
    assert any(mutated)  # (only a clip at the range's bound could leave the donor's value)


@pytest.mark.slow
def test_checkpoints_are_pruned_once_the_population_has_ended(pbt_sweep):
    """Donors' checkpoints stay while the population trains (a clone restores one); at the end
    every member keeps one model-only checkpoint (tuning.sweep.pruning)."""
    from trainables.checkpointing import load_checkpoint
    from tuning.sweep.pruning import checkpoint_folders

    cfg, _ = pbt_sweep
    trial_dirs = [p for p in cfg.sweep_dir.iterdir() if p.is_dir() and p.name.startswith("trainable_")]
    assert len(trial_dirs) == 2
    for trial_dir in trial_dirs:
        folders = checkpoint_folders(trial_dir)
        assert len(folders) == 1, f"{trial_dir.name} kept {[f.name for f in folders]}"
        state = load_checkpoint(folders[0])
        assert state["extra"]["model_only"] is True and state["optimizer"] is None
        assert state["epoch"] == EPOCHS


@pytest.mark.slow
def test_pb2_sweep_records_its_clones(tmp_path, tiny_model_dir, ray_local):
    from tuning.sweep.runner import run_sweep

    (tmp_path / "space.yaml").write_text(SPACE_YAML)
    (tmp_path / "good.yaml").write_text(f"lr: 3.0e-3\npreset: good\n{PRESET}")
    (tmp_path / "slow.yaml").write_text(f"lr: 1.0e-6\npreset: slow\n{PRESET}")
    cfg = SweepConfig(name="pb2", scheduler="pb2", model=tiny_model_dir, max_length=64, epochs=2,
                      num_trials=2, storage=str(tmp_path), space_file=str(tmp_path / "space.yaml"),
                      warm_start=(str(tmp_path / "good.yaml"), str(tmp_path / "slow.yaml")),
                      quantile_fraction=0.5, mutate=("lr", "weight_decay"))
    outcome = run_sweep(cfg)
    assert outcome.counts == {"FINISHED": 2, "FAILED": 0, "KILLED": 0}
    client, runs = _trial_runs(cfg)
    assert len(runs) == 2
    clones = _clones(runs)
    assert [c.data.tags["tunebert.preset"] for c in clones] == ["slow"]  # cloned "good" after epoch 1
    changes = json.loads(clones[0].data.tags["tunebert.pbt.changes"])
    assert set(changes) == {"lr", "weight_decay"} and changes["lr"]["op"] == "gp-bandit"
    assert 1e-6 <= changes["lr"]["new"] <= 1e-2  # PB2 picks inside the space's bounds


@pytest.mark.slow
def test_resume_of_a_pbt_sweep_restores_the_scheduler(pbt_sweep):
    import pickle

    from tuning.sweep.runner import resume_sweep

    cfg, _ = pbt_sweep
    client, before = _trial_runs(cfg)
    saved = pickle.loads((cfg.sweep_dir / "tuner.pkl").read_bytes())
    assert isinstance(saved["_tune_config"].scheduler, pbt.LineagePBT)
    outcome = resume_sweep(cfg.name, cfg.storage)
    client, after = _trial_runs(cfg)
    assert {r.info.run_id for r in after} == {r.info.run_id for r in before}
    assert all(r.info.status == "FINISHED" for r in after)
    assert outcome.counts["FINISHED"] == 2
    for run in _clones(after):  # lineage untouched
        old = next(b for b in before if b.info.run_id == run.info.run_id)
        assert run.data.tags["tunebert.pbt.changes"] == old.data.tags["tunebert.pbt.changes"]


@pytest.mark.slow
def test_resume_after_the_driver_is_killed_mid_pbt(tiny_model_dir, massive_dir, tmp_path):
    """SIGKILL a PBT sweep once a clone is recorded; `tunebert resume` finishes both members from
    their checkpoints (a clone with its new config), one run each, lineage kept."""
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    (tmp_path / "space.yaml").write_text(SPACE_YAML)
    (tmp_path / "good.yaml").write_text(f"lr: 3.0e-3\npreset: good\n{PRESET}")
    (tmp_path / "slow.yaml").write_text(f"lr: 1.0e-6\npreset: slow\n{PRESET}")
    cfg = SweepConfig(name="killed", storage=str(tmp_path), scheduler="pbt", num_trials=2, epochs=3)
    args = [sys.executable, "-m", "tuning.cli", "sweep", "--name", "killed", "--scheduler", "pbt",
            "--trials", "2", "--epochs", "3", "--quantile-fraction", "0.5", "--model", tiny_model_dir,
            "--max-length", "64", "--data", str(massive_dir), "--space", str(tmp_path / "space.yaml"),
            "--warm-start", f"{tmp_path / 'good.yaml'},{tmp_path / 'slow.yaml'}", "--storage", str(tmp_path)]
    proc = subprocess.Popen(args, cwd=Path(__file__).resolve().parents[3], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 400
    try:
        while time.time() < deadline:
            time.sleep(0.5)
            try:
                _, runs = _trial_runs(cfg)
            except Exception:  # the store or the experiment is not there yet
                continue
            if _clones(runs):
                assert not any(r.info.status == "FINISHED" for r in runs)  # killed mid-way
                break
        else:
            pytest.fail("the sweep never recorded a clone")
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    # resumed as a user does, from a new process: not through the Ray this test process shares
    # with other tests (a trial an earlier test left holding its CPUs would leave these pending)
    resumed = subprocess.run([sys.executable, "-m", "tuning.cli", "resume", "killed", "--storage", str(tmp_path)],
                             cwd=Path(__file__).resolve().parents[3], capture_output=True, text=True,
                             timeout=600)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    client, runs = _trial_runs(cfg)
    assert len(runs) == 2 and all(r.info.status == "FINISHED" for r in runs)
    for run in runs:
        steps = {m.step for m in client.get_metric_history(run.info.run_id, "val_accuracy")}
        assert steps == {1, 2, 3}
    for clone in _clones(runs):
        current = json.loads(clone.data.tags["tunebert.pbt.config"])
        lr = max(client.get_metric_history(clone.info.run_id, "lr"), key=lambda m: (m.step, m.timestamp))
        assert lr.step == 3 and lr.value == pytest.approx(current["lr"], rel=1e-6)
