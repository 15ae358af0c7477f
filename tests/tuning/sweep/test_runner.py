"""End-to-end sweeps through a real local Ray, real Optuna and a real SQLite MLflow store."""

import json
import math

import pytest
from mlflow.tracking import MlflowClient

from tuning.tracking.best import best_config, best_run, top_k
from tuning.config import SweepConfig
from tuning.sweep.runner import run_sweep

pytestmark = pytest.mark.slow


def _runs(uri, name):
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(name)
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    parents = [r for r in runs if r.data.tags.get("tunebert.kind") == "sweep"]
    children = [r for r in runs if r.data.tags.get("tunebert.kind") == "trial"]
    return client, parents, children


def test_sweep_logs_parent_and_children_and_best_config(ray_local, tiny_model_dir, tmp_path):
    cfg = SweepConfig(name="e2e", model=tiny_model_dir, max_length=64, epochs=2, num_trials=3,
                      storage=str(tmp_path), scheduler="none", warm_start=("llrd_warmup",),
                      max_concurrent=2, seed=1)
    outcome = run_sweep(cfg)
    uri = cfg.resolved_tracking_uri()
    client, parents, children = _runs(uri, "e2e")
    assert len(parents) == 1 and len(children) == 3
    parent = parents[0]
    assert parent.info.status == "FINISHED"
    assert len({c.data.tags["tunebert.trial_id"] for c in children}) == 3
    best_acc = {}
    for child in children:
        assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert child.info.status == "FINISHED"
        history = client.get_metric_history(child.info.run_id, "val_accuracy")
        assert sorted(m.step for m in history) == [1, 2]  # one point per epoch, step = epoch
        for key in ("train_loss", "val_loss", "val_macro_f1", "lr", "samples_per_s"):
            assert len(client.get_metric_history(child.info.run_id, key)) == 2
        config = json.loads(child.data.tags["tunebert.config"])
        assert child.data.params["lr"] == str(config["lr"])  # params are the resolved config
        assert set(child.data.params) >= {"lr", "batch_size", "optimizer", "epochs", "model"}
        # a trial's score is its best validation epoch (a tie keeps the earlier epoch)
        top = max(sorted(history, key=lambda m: m.step), key=lambda m: m.value)
        best_acc[child.info.run_id] = (top.value, top.step)
        assert child.data.metrics["best_val_accuracy"] == top.value
        assert child.data.metrics["best_epoch"] == top.step
    # the warm-start preset ran first, with its own values (fixed ones included)
    preset_runs = [c for c in children if c.data.tags.get("tunebert.preset") == "llrd_warmup"]
    assert len(preset_runs) == 1
    p = json.loads(preset_runs[0].data.tags["tunebert.config"])
    assert (p["batch_size"], p["llrd_decay"], p["warmup_ratio"], p["head_hidden"], p["epochs"]) == (16, 0.9, 0.2, 10, 2)
    # best config = the child with the highest best-epoch val_accuracy; the exported config
    # records the epoch that produced it (stop_epoch, None when it was the last)
    expected = max(children, key=lambda c: best_acc[c.info.run_id][0])
    value, epoch = best_acc[expected.info.run_id]
    assert best_config("e2e", storage=str(tmp_path)) == {
        **json.loads(expected.data.tags["tunebert.config"]), "stop_epoch": epoch if epoch < 2 else None}
    best = best_run("e2e", storage=str(tmp_path))
    assert best.run_id == expected.info.run_id == outcome.best.run_id
    assert best.score("val_accuracy") == pytest.approx(value)
    ranked = top_k("e2e", 3, storage=str(tmp_path))
    assert [r.score() for r in ranked] == sorted((v for v, _ in best_acc.values()), reverse=True)
    # the best trial's checkpoint and label map are artifacts of the parent run
    names = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"best_checkpoint", "label_map.json", "best_config.yaml", "search_space.yaml"} <= names
    ckpt = {a.path for a in client.list_artifacts(parent.info.run_id, "best_checkpoint")}
    assert "best_checkpoint/state.pt" in ckpt
    parent = client.get_run(parent.info.run_id)
    assert parent.data.metrics["best_val_accuracy"] == pytest.approx(best.score())
    assert parent.data.tags["tunebert.best_trial_id"] == best.trial_id


def test_asha_with_diverging_trials_failed_ones_are_never_best(ray_local, tiny_model_dir, tmp_path):
    # a space where some trials blow up (NaN): they must end FAILED and never be best
    space = tmp_path / "space.yaml"
    space.write_text("optimizer: sgd\nmomentum: 0.99\ngrad_clip: 0.0\nhead_lr_multiplier: 1000.0\n"
                     "lr: {low: 1.0e-4, high: 10.0, log: true}\n")
    cfg = SweepConfig(name="mixed", model=tiny_model_dir, max_length=64, epochs=3, num_trials=6,
                      storage=str(tmp_path), space_file=str(space), max_failures=0, seed=3,
                      grace_period=1, reduction_factor=2)
    outcome = run_sweep(cfg)
    client, _, children = _runs(cfg.resolved_tracking_uri(), "mixed")
    assert len(children) == 6
    failed = [c for c in children if c.info.status == "FAILED"]
    assert failed, "expected some diverging trials with lr up to 10"
    for c in failed:
        assert "NonFiniteLossError" in c.data.tags["tunebert.error"]
    finished = [c for c in children if c.info.status == "FINISHED"]
    best = best_run("mixed", storage=str(tmp_path))
    assert best.run_id in {c.info.run_id for c in finished}
    assert math.isfinite(best.metrics["val_accuracy"])
    assert outcome.counts["FAILED"] == len(failed)


def test_time_budget_stops_the_sweep(ray_local, tiny_model_dir, tmp_path):
    cfg = SweepConfig(name="budget", model=tiny_model_dir, max_length=64, epochs=2, num_trials=500,
                      time_budget_s=8, storage=str(tmp_path), scheduler="none", max_concurrent=1)
    outcome = run_sweep(cfg)
    total = sum(outcome.counts.values())
    assert 1 <= total < 500
    _, parents, children = _runs(cfg.resolved_tracking_uri(), "budget")
    assert parents[0].info.status == "FINISHED"
    assert all(c.info.status in ("FINISHED", "KILLED") for c in children)


@pytest.mark.parametrize("mode", ["two-stage", "two-stage-finetune", "joint"])
def test_contrastive_sweep_of_each_mode(ray_local, tiny_model_dir, tmp_path, mode):
    space = tmp_path / "space.yaml"
    space.write_text(f"mode: {mode}\ncontrastive_epochs: 1\ncontrastive_batch_size: 32\nlr: 1.0e-3\n")
    cfg = SweepConfig(name=f"c-{mode}", trainable="contrastive", model=tiny_model_dir, max_length=64,
                      epochs=1, num_trials=2, storage=str(tmp_path), space_file=str(space),
                      max_concurrent=2, scheduler="none")  # every trial runs all its epochs
    run_sweep(cfg)
    client, parents, children = _runs(cfg.resolved_tracking_uri(), f"c-{mode}")
    assert len(parents) == 1 and len(children) == 2
    total = 1 if mode == "joint" else 2
    for child in children:
        assert child.info.status == "FINISHED"
        config = json.loads(child.data.tags["tunebert.config"])
        assert config["trainable"] == "contrastive" and config["mode"] == mode
        steps = sorted(m.step for m in client.get_metric_history(child.info.run_id, "val_accuracy"))
        assert steps == list(range(1, total + 1))
        if mode != "joint":  # the contrastive stage reported its k-NN signal
            assert client.get_metric_history(child.info.run_id, "val_knn_accuracy")
    assert best_run(f"c-{mode}", storage=str(tmp_path)).trainable == "contrastive"


def test_mixed_sweep_ranks_both_families_and_trains_the_best(ray_local, tiny_model_dir, tmp_path):
    from trainables.data import DataConfig
    from tuning.results.train import train_config

    space = tmp_path / "space.yaml"
    space.write_text("contrastive_epochs: 1\ncontrastive_batch_size: 32\n")
    cfg = SweepConfig(name="mixed", trainable="any", model=tiny_model_dir, max_length=64, epochs=1,
                      num_trials=3, storage=str(tmp_path), space_file=str(space),
                      warm_start=("supcon", "llrd_warmup"), max_concurrent=2, scheduler="none")
    run_sweep(cfg)
    client, parents, children = _runs(cfg.resolved_tracking_uri(), "mixed")
    assert len(parents) == 1 and len(children) == 3
    families = {c.data.tags["tunebert.trainable"] for c in children}
    # the two presets ran first, one of each; the third trial may draw a baseline family too
    assert {"finetune", "contrastive"} <= families
    presets = {c.data.tags.get("tunebert.preset"): json.loads(c.data.tags["tunebert.config"]) for c in children}
    assert presets["supcon"]["trainable"] == "contrastive" and presets["supcon"]["contrastive_epochs"] == 1
    assert presets["llrd_warmup"]["trainable"] == "finetune"
    ranked = top_k("mixed", 3, storage=str(tmp_path))
    assert len(ranked) == 3
    for trial in ranked:  # training a config works for either family
        config = {**trial.config, "epochs": 1}
        out = train_config(config, DataConfig("demo"), tracking_uri=cfg.resolved_tracking_uri(),
                           experiment="retrain")
        assert out.config["trainable"] == trial.trainable
        assert 0.0 <= out.test["test_accuracy"] <= 1.0


def test_contrastive_trials_stopped_in_their_first_stage_are_never_best(ray_local, tiny_model_dir, tmp_path):
    # ASHA stops some trials after one contrastive epoch: their val_accuracy is a k-NN proxy
    space = tmp_path / "space.yaml"
    space.write_text("mode: two-stage\ncontrastive_epochs: 2\ncontrastive_batch_size: 32\nlr: 1.0e-3\n")
    cfg = SweepConfig(name="stage1", trainable="contrastive", model=tiny_model_dir, max_length=64,
                      epochs=1, num_trials=6, storage=str(tmp_path), space_file=str(space),
                      max_concurrent=1, grace_period=1, reduction_factor=2, seed=4)
    run_sweep(cfg)
    client, _, children = _runs(cfg.resolved_tracking_uri(), "stage1")
    stopped_early = [c for c in children if c.data.metrics.get("stage") == 1]
    assert stopped_early, "ASHA stopped no trial in its contrastive stage"
    ranked = top_k("stage1", 6, storage=str(tmp_path))
    assert ranked and all(r.metrics["stage"] == 2 for r in ranked)
    assert {r.run_id for r in ranked}.isdisjoint({c.info.run_id for c in stopped_early})


# --------------------------------------------------------------------------- resume's trust boundary


class _Unpickled:
    """A pickle that leaves a file behind when it is loaded: proof that it was unpickled."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _saved_sweep(tmp_path):
    """A saved sweep 's' under ``tmp_path`` whose ``tuner.pkl`` would leave ``marker`` if loaded."""
    import pickle

    cfg = SweepConfig(name="s", storage=str(tmp_path))
    cfg.save()
    marker = tmp_path / "unpickled"
    (cfg.sweep_dir / "tuner.pkl").write_bytes(pickle.dumps(_Unpickled(marker)))
    for path in (tmp_path, tmp_path / "ray", cfg.sweep_dir, cfg.sweep_dir / "tuner.pkl"):
        path.chmod(0o755 if path.is_dir() else 0o644)
    return cfg, marker


@pytest.mark.parametrize("writable", ["storage", "sweep folder", "tuner.pkl", "experiment state"])
def test_resume_refuses_state_other_users_can_write_before_unpickling_it(writable, tmp_path,
                                                                         capsys):
    from tuning.cli import main

    cfg, marker = _saved_sweep(tmp_path)
    (cfg.sweep_dir / "experiment_state-2025-01-01_00-00-00.json").write_text("{}")
    path = {"storage": tmp_path, "sweep folder": cfg.sweep_dir,
            "tuner.pkl": cfg.sweep_dir / "tuner.pkl",
            "experiment state": cfg.sweep_dir / "experiment_state-2025-01-01_00-00-00.json"}[writable]
    path.chmod(path.stat().st_mode | 0o002)
    assert main(["resume", "s", "--storage", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("tunebert resume: error: refusing to resume sweep 's'") and "\n" not in err.strip()
    assert f"{path} is not yours alone: other users can write to it" in err
    assert "unpickling runs any code" in err and f"chmod go-w {path}" in err
    assert "Traceback" not in err and not marker.exists()


def test_resume_refuses_state_owned_by_another_user(tmp_path, monkeypatch):
    import os

    from trainables.errors import ConfigError
    from tuning.sweep.storage_trust import check_safe_to_unpickle

    cfg, marker = _saved_sweep(tmp_path)
    if os.getuid() == 0:
        os.chown(cfg.sweep_dir / "tuner.pkl", 4321, -1)
    else:  # only root can give a file away: be someone else instead
        me = os.getuid()
        monkeypatch.setattr(os, "getuid", lambda: me + 1)
    with pytest.raises(ConfigError, match="is owned by uid .*, not by you .*resume as the owner"):
        check_safe_to_unpickle(cfg.root, cfg.sweep_dir, "s")
    assert not marker.exists()


def test_resume_accepts_state_only_its_owner_can_write(tmp_path):
    from tuning.sweep.storage_trust import check_safe_to_unpickle, unsafe_reason

    cfg, marker = _saved_sweep(tmp_path)
    check_safe_to_unpickle(cfg.root, cfg.sweep_dir, "s")  # refuses nothing
    # a folder above the sweep's may be shared the way /tmp is (others cannot replace our entries)
    tmp_path.chmod(0o1777)
    check_safe_to_unpickle(cfg.root, cfg.sweep_dir, "s")
    cfg.sweep_dir.chmod(0o1777)  # but not the sweep's own: anyone could add a newer state file
    assert "other users can write to it" in unsafe_reason(cfg.sweep_dir)
    assert not marker.exists()


def test_a_masked_saved_address_asks_for_the_password_again(tmp_path, monkeypatch):
    """A sweep saved with `--address ray://user:PW@…` holds `***` for PW; a resume in a new
    process without --address must say so, not try to join with `***` as the password."""
    import ray

    from trainables.errors import ConfigError
    from tuning import credentials
    from tuning.sweep import runner
    from tuning.config import SweepConfig

    monkeypatch.setattr(credentials, "_known", {})  # a new process: no password seen
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda *a, **k: pytest.fail("joined with a masked password"))
    cfg = SweepConfig(name="s", storage=str(tmp_path), address="ray://user:***@head:10001")
    with pytest.raises(ConfigError, match=r"pass it again: --address ray://user:PASSWORD@head:10001"):
        runner._init_ray(cfg)
