"""`tunebert tune`: the budget split (pure, hand-computed), bad input refused before Ray, the whole
pipeline end to end through the CLI (real local Ray, real SQLite MLflow), and resume after the
sweep phase without re-running the sweep."""

import json
import math

import pytest
from mlflow.tracking import MlflowClient

from trainables.errors import ConfigError
from tuning.cli import main
from tuning.results.pipeline import (DEADLINE_FILE, PIPELINE_FILE, PipelineConfig, fit_selection,
                             selection_seconds, selection_speedup, shrink_steps, split_budget,
                             trial_epoch_seconds)

# --------------------------------------------------------------------------- the budget split


def test_shrink_steps_take_the_larger_first_and_top_k_on_a_tie():
    assert shrink_steps(3, 3) == [(3, 3), (2, 3), (2, 2), (1, 2), (1, 1)]
    assert shrink_steps(2, 5) == [(2, 5), (2, 4), (2, 3), (2, 2), (1, 2), (1, 1)]
    assert shrink_steps(4, 1) == [(4, 1), (3, 1), (2, 1), (1, 1)]
    assert shrink_steps(1, 1) == [(1, 1)]


def test_selection_seconds_count_whole_waves_of_the_slowest_config():
    # 3 configs x 3 seeds = 9 trainings, 2 at a time = 5 waves of the slowest (700 s) + 100 s
    assert selection_seconds(3, 3, 2, [500, 400, 700], 100) == 5 * 700 + 100
    # only the top 2 configs: the third's 700 s no longer counts
    assert selection_seconds(2, 3, 1, [500, 400, 700], 100) == 6 * 500 + 100
    assert selection_seconds(1, 1, 4, [500], 100) == 600


@pytest.mark.parametrize("workers, expected", [
    # budget 2 h, one training 600 s (4 epochs of 150 s), evaluation 150 s; selection <= 3600 s
    (1, (2, 2, 4 * 600 + 150)),       # 3x3 = 5550 s, 2x3 = 3750 s: too long; 2x2 = 2550 s fits
    (2, (3, 3, 5 * 600 + 150)),       # ceil(9 / 2) = 5 waves: 3150 s
    (3, (3, 3, 3 * 600 + 150)),       # 3 waves: 1950 s
])
def test_split_budget_reserves_the_selection_and_gives_the_sweep_the_rest(workers, expected):
    split = split_budget(7200, 600, 150, 3, 3, workers)
    top_k, seeds, select_s = expected
    assert (split.selection.top_k, split.selection.seeds, split.select_s) == (top_k, seeds, select_s)
    assert split.sweep_s == 7200 - select_s
    assert split.selection.fits and split.basis == "measured speed"


def test_split_budget_falls_back_to_a_fixed_share_when_speed_is_unknown():
    split = split_budget(7200, None, 0.0, 3, 3, 1)
    assert split.select_s == pytest.approx(0.35 * 7200) and split.sweep_s == pytest.approx(4680)
    assert (split.selection.top_k, split.selection.seeds, split.basis) == (3, 3, "fixed share")


def test_split_budget_refuses_a_budget_that_cannot_hold_one_trial_and_one_training():
    # 1000 s: half is 500 s, less than one training (600 s) + evaluation (150 s), so the
    # selection takes 750 s and leaves 250 s, less than one sweep trial (600 s)
    with pytest.raises(ConfigError, match=r"--time-budget 16m40s is too small.*at least 22m30s"):
        split_budget(1000, 600, 150, 3, 3, 1)
    # 1350 s is just enough: 750 s for 1 x 1, 600 s for the sweep
    split = split_budget(1350, 600, 150, 3, 3, 1)
    assert (split.selection.top_k, split.selection.seeds, split.sweep_s) == (1, 1, 600)
    assert not split.selection.fits  # 750 s is more than half the budget


def test_fit_selection_after_the_sweep_shrinks_to_what_is_left():
    # 2000 s left; ranks take 500, 400 and 700 s; evaluation 100 s:
    # 3x3 = 6400, 2x3 = 3100, 2x2 = 2100, 1x2 = 1100 s fits
    plan = fit_selection(2000, [500, 400, 700], 100, 3, 3)
    assert (plan.top_k, plan.seeds, plan.seconds, plan.fits) == (1, 2, 1100, True)
    assert fit_selection(10_000, [500, 400, 700], 100, 3, 3).seconds == 6400
    # a sweep with one finished trial: top_k is what there is
    assert fit_selection(10_000, [300], 50, 3, 2) == fit_selection(10_000, [300], 50, 1, 2)
    # nothing fits: one training runs anyway, and says it does not fit
    plan = fit_selection(100, [500], 100, 3, 3)
    assert (plan.top_k, plan.seeds, plan.seconds, plan.fits) == (1, 1, 600, False)


def test_selection_speedup_is_the_ratio_of_threads_on_cpu_and_none_elsewhere(monkeypatch):
    monkeypatch.setattr("os.cpu_count", lambda: 8)
    # sweep trials on 1 thread each; one selection training gets all 8, two get 4 each
    assert selection_speedup(1, 0, 1) == 8 and selection_speedup(1, 0, 2) == 4
    assert selection_speedup(2, 0, 1) == 4
    assert selection_speedup(8, 0, 4) == 1  # never below 1: the selection is no slower
    assert selection_speedup(1, 1, 1) == 1  # GPU trials: the same device either way
    assert selection_speedup(1, 0, 1, "ray://head:10001") == 1  # a cluster: its nodes are unknown


def test_trial_epoch_seconds_come_from_the_trials_ray_results(tmp_path):
    folder = tmp_path / "finetune_abc_00001"
    folder.mkdir()
    folder.joinpath("result.json").write_text(
        json.dumps({"epoch": 1, "time_this_iter_s": 12.5}) + "\n"
        + json.dumps({"epoch": 2, "time_this_iter_s": 10.0}) + "\nnot json\n")
    (tmp_path / "finetune_abc_00002").mkdir()
    assert trial_epoch_seconds(tmp_path, "abc_00001") == [12.5, 10.0]
    assert trial_epoch_seconds(tmp_path, "abc_00002") == []


@pytest.mark.parametrize("kwargs, message", [
    ({"top_k": 0}, "`top_k` (--top-k) must be an integer >= 1, but got 0"),
    ({"seeds": 1.5}, "`seeds` (--seeds) must be an integer >= 1, but got 1.5"),
    ({"select_workers": 0}, "`select_workers` (--select-workers) must be an integer >= 1"),
    ({"budget_s": 0}, "`budget_s` (--time-budget) must be a positive number of seconds"),
    ({"max_select_share": 1.0}, "`max_select_share` must lie strictly between 0 and 1"),
])
def test_pipeline_config_refuses_bad_settings(kwargs, message):
    with pytest.raises(ConfigError) as info:
        PipelineConfig(**kwargs)
    assert message in str(info.value)
    assert PipelineConfig.from_dict(PipelineConfig().to_dict()) == PipelineConfig()


# --------------------------------------------------------------------------- bad input, no Ray


@pytest.mark.parametrize("extra, message", [
    (["--top-k", "0"], "`top_k` (--top-k) must be an integer >= 1, but got 0"),
    (["--select-workers", "0"], "`select_workers` (--select-workers) must be an integer >= 1"),
    (["--time-budget", "1s"], "--time-budget 1s is too small"),
    (["--trials", "0"], "`num_trials` must be an integer >= 1"),
    # issue 21 item 3 (part A)
    (["--cpus-per-trial", "0.001"], "`cpus_per_trial` (--cpus-per-trial) must be at least 0.1"),
    (["--gpus-per-trial", "nan"], "`gpus_per_trial` (--gpus-per-trial) must be a finite number"),
    (["--max-length", "1000"], "`max_length` (--max-length) 1000 is more than model"),
    (["--label-column", "text"], "--text-column and --label-column are both 'text'"),
])
def test_bad_input_exits_2_before_ray_starts(extra, message, tiny_model_dir, tmp_path, capsys):
    import ray

    started = ray.is_initialized()
    rc = main(["tune", "--name", "bad", "--model", tiny_model_dir, "--max-length", "64",
               "--storage", str(tmp_path), *extra])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("tunebert tune: error:")
    assert message in err
    assert "Traceback" not in err
    assert not (tmp_path / "ray").exists()  # nothing written, no sweep started
    assert ray.is_initialized() == started


class _Planned(Exception):
    pass


def _planned(monkeypatch, *argv) -> tuple:
    """The (SweepConfig, PipelineConfig) `tunebert tune ARGV` hands to ``run_pipeline``."""
    from tuning.results import pipeline

    def capture(sweep, config):
        raise _Planned(sweep, config)

    monkeypatch.setattr(pipeline, "run_pipeline", capture)
    with pytest.raises(_Planned) as info:
        main(["tune", *argv])
    return info.value.args


def test_tune_starts_from_the_hand_config_unless_told_otherwise(monkeypatch, tmp_path):
    sweep, _ = _planned(monkeypatch, "--storage", str(tmp_path))
    assert sweep.warm_start == ("hand",)
    sweep, _ = _planned(monkeypatch, "--storage", str(tmp_path), "--warm-start", "")
    assert sweep.warm_start == ()
    sweep, _ = _planned(monkeypatch, "--storage", str(tmp_path), "--warm-start", "llrd_warmup")
    assert sweep.warm_start == ("llrd_warmup",)
    sweep, _ = _planned(monkeypatch, "--storage", str(tmp_path), "--trainable", "contrastive")
    assert sweep.warm_start == ()  # the hand config is a fine-tuning one


def test_tune_with_pbt_and_no_trials_gets_a_population_it_can_perturb(monkeypatch, tmp_path, capsys):
    """Issue 21: without --trials, `tune` queued 1,000 trials (BUDGET_TRIALS), which as one
    synchronous PBT population is never ranked, so never perturbed, within a budget."""
    from tuning.config import DEFAULT_POPULATION

    sweep, _ = _planned(monkeypatch, "--storage", str(tmp_path), "--scheduler", "pbt")
    assert sweep.num_trials == DEFAULT_POPULATION == 8
    assert "--scheduler pbt without --trials: a population of 8 trials" in capsys.readouterr().out
    sweep, _ = _planned(monkeypatch, "--storage", str(tmp_path), "--scheduler", "pbt", "--trials", "5")
    assert sweep.num_trials == 5
    sweep, _ = _planned(monkeypatch, "--storage", str(tmp_path))  # ASHA: the budget still decides
    assert sweep.num_trials == 1000


def test_tune_takes_objectives_and_constraints_and_then_hands_over_one_model(monkeypatch, tmp_path,
                                                                            capsys):
    sweep, config = _planned(monkeypatch, "--storage", str(tmp_path), "--objective",
                             "val_accuracy:max", "--objective", "latency_ms_p50:min",
                             "--constraint", "size_mb<=100")
    assert [str(o) for o in sweep.objective_list] == ["val_accuracy:max", "latency_ms_p50:min"]
    assert [str(c) for c in sweep.constraint_list] == ["size_mb<=100"]
    # an ensemble of 3 would be 3 times the latency and size the constraint was checked on
    assert config.ensemble is False
    assert "with --constraint the chosen single model is handed over" in capsys.readouterr().out
    _, config = _planned(monkeypatch, "--storage", str(tmp_path))
    assert config.ensemble is True


def test_a_non_empty_output_dir_is_refused_before_ray_starts(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    rc = main(["tune", "--model", tiny_model_dir, "--storage", str(tmp_path / "runs"),
               "--output-dir", str(out)])
    assert rc == 2 and "is not an empty folder" in capsys.readouterr().err
    assert (out / "keep.txt").read_text() == "mine" and not (tmp_path / "runs" / "ray").exists()


# --------------------------------------------------------------------------- end to end


def _spy_on_the_test_split(monkeypatch):
    """Record, in order, every tokenization (with or without test) and every evaluation of a
    test split that selection and training do in this process."""
    import trainables.data
    import trainables.loops
    import trainables.task_data
    import tuning.results.train  # noqa: F401

    events = []
    tokenize, evaluate = trainables.data.tokenize_splits, trainables.loops.evaluate

    def spy_tokenize(*args, include_test=True, **kwargs):
        data = tokenize(*args, include_test=include_test, **kwargs)
        events.append("tokenize+test" if "test" in data.splits else "tokenize")
        if "test" in data.splits:
            data.splits["test"].is_test = True
        return data

    def spy_evaluate(model, split, **kwargs):
        if getattr(split, "is_test", False):
            events.append("evaluate-test")
        return evaluate(model, split, **kwargs)

    monkeypatch.setattr(trainables.data, "tokenize_splits", spy_tokenize)
    monkeypatch.setattr(trainables.task_data, "tokenize_splits", spy_tokenize)
    monkeypatch.setattr(trainables.loops, "evaluate", spy_evaluate)
    return events


def _parent_run(tmp_path, name):
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.get_experiment_by_name(name)
    (parent,) = client.search_runs([exp.experiment_id], "tags.`tunebert.kind` = 'sweep'")
    trials = client.search_runs([exp.experiment_id], "tags.`tunebert.kind` = 'trial'")
    return client, parent, trials


def _predicts(model_dir, text="wake me up at seven"):
    """The handed-over folder loads as one model and classifies a text."""
    from tuning.serve.predict import load_model

    predictor = load_model(model_dir)
    (label,) = predictor.predict([text])
    assert label in predictor.labels
    return predictor


@pytest.mark.slow
def test_tune_smoke_test_end_to_end(ray_local, tiny_model_dir, tmp_path, capsys, monkeypatch):
    events = _spy_on_the_test_split(monkeypatch)
    # one selection worker: the spy below sees only this process's trainings
    rc = main(["tune", "--smoke-test", "--name", "whole", "--select-workers", "1", "--model", tiny_model_dir,
               "--max-length", "64", "--storage", str(tmp_path), "--time-budget", "1h"])
    out = capsys.readouterr().out
    assert rc == 0

    state = json.loads((tmp_path / "ray" / "whole" / PIPELINE_FILE).read_text())["state"]
    result = state["result"]
    assert state["phase"] == "done" and state["session"] is None
    assert (state["top_k"], state["seeds"]) == (2, 2)  # smoke: top 2 x 2 seeds, room to spare
    # the handed-over model: a folder under <storage>/models/<name>, that loads and predicts
    model_dir = result["model_dir"]
    assert model_dir.startswith(str(tmp_path / "models" / "whole"))
    _predicts(model_dir)
    # printed: folder, validation and test scores, config, the predict command
    assert f"- model: `{model_dir}`" in out
    assert f"validation val_accuracy: **{result['val']:.4f}**" in out
    assert f"test accuracy: **{result['test_accuracy']:.4f}**" in out
    assert "```yaml" in out and f"model: {tiny_model_dir}" in out
    assert f"tunebert predict {model_dir} " in out
    assert "| sweep |" in out and "| selection + test" in out

    # everything on the sweep's parent run
    client, parent, trials = _parent_run(tmp_path, "whole")
    assert len(trials) == 2
    # the hand config is tried first (tune's --warm-start default), the other trial is sampled
    presets = sorted(json.loads(t.data.tags["tunebert.config"]).get("preset") or "" for t in trials)
    assert presets == ["", "hand"]
    metrics, tags = parent.data.metrics, parent.data.tags
    assert metrics["pipeline.val_accuracy"] == pytest.approx(result["val"])
    assert metrics["pipeline.test_accuracy"] == pytest.approx(result["test_accuracy"])
    assert metrics["pipeline.test_macro_f1"] == pytest.approx(result["test_macro_f1"])
    assert metrics["pipeline.budget_s"] == 3600
    # the split: plan + sweep + the selection's reserve is the budget; planned vs actual logged
    assert state["plan_s"] + state["sweep_planned_s"] + state["select_reserved_s"] == pytest.approx(3600)
    for key in ("sweep_planned_s", "select_reserved_s", "select_planned_s", "plan_s"):
        assert metrics[f"pipeline.{key}"] == pytest.approx(state[key])
    for phase in ("sweep", "select"):
        assert 0 < metrics[f"pipeline.{phase}_actual_s"] < 3600
    assert metrics["pipeline.total_s"] == pytest.approx(state["plan_s"] + state["sweep_actual_s"]
                                                        + state["select_actual_s"])
    assert tags["tunebert.pipeline.model_dir"] == model_dir
    assert tags["tunebert.pipeline.handed_over"] == result["handed_over"]
    # every hand-over candidate (tune builds them all by default), one handed over, in the summary
    assert [c["kind"] for c in result["candidates"]] == ["single", "ensemble", "cross", "student"]
    assert [c["kind"] for c in result["candidates"] if c["handed_over"]] == [result["handed_over"]]
    assert result["rule"] == "most accurate"
    assert "| candidate | val_accuracy | latency ms | size MB | handed over |" in out
    # the selection filled its time: the chosen config got twice the seeds it was compared with
    assert len(result["seeds"]) == 4
    assert json.loads(tags["tunebert.pipeline.best_config"]) == result["config"]
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id, "pipeline")}
    assert {f"pipeline/{PIPELINE_FILE}", "pipeline/pipeline.md"} <= artifacts
    # the selection run is in the same experiment, nested under the sweep's parent run
    selection = client.get_run(result["selection_run_id"])
    assert selection.data.tags["mlflow.parentRunId"] == parent.info.run_id
    assert selection.data.params["ensemble"] == "True"

    # the test split: evaluated only after the last selection training and validation pass, and
    # then only for the chosen config's models (the sweep's preparation tokenizes it, as every
    # sweep does, only to drop it before the trials get the data)
    last_train_only = max(i for i, e in enumerate(events) if e == "tokenize")
    assert events.count("tokenize") >= 4  # 2 configs x 2 seeds, trained without the test split
    assert "evaluate-test" not in events[:last_train_only]
    after = events[last_train_only + 1:]
    assert after[0] == "tokenize+test" and set(after[1:]) == {"evaluate-test"} and len(after) >= 3

    # resuming a finished pipeline just prints its result
    rc = main(["resume", "whole", "--storage", str(tmp_path)])
    again = capsys.readouterr().out
    assert rc == 0 and f"- model: `{model_dir}`" in again and "[tunebert] select:" not in again


@pytest.mark.slow
def test_resume_after_the_sweep_phase_does_not_rerun_the_sweep(ray_local, tiny_model_dir, tmp_path,
                                                                 capsys, monkeypatch):
    from trainables.data import DataConfig
    from tuning.sweep import runner
    from tuning.config import SweepConfig
    from tuning.results.pipeline import advance, start_pipeline

    sweep = SweepConfig(name="halfway", model=tiny_model_dir, max_length=64, epochs=1, num_trials=2,
                        storage=str(tmp_path), data=DataConfig("demo"))
    config = PipelineConfig(budget_s=3600, top_k=2, seeds=2, select_epochs=1, max_train_examples=64)
    pipeline = advance(start_pipeline(sweep, config), until="select")  # stop after the sweep
    saved = json.loads(pipeline.path.read_text())["state"]
    assert saved["phase"] == "select" and saved["result"] is None
    assert 0 < saved["sweep_actual_s"] and saved["select_actual_s"] == 0
    # the sweep got its share as a time budget, and the deadline stopper was armed
    assert json.loads(pipeline.path.read_text())["sweep"]["time_budget_s"] == \
        pytest.approx(saved["sweep_planned_s"])
    assert float((pipeline.folder / DEADLINE_FILE).read_text()) > 0
    _, parent, trials = _parent_run(tmp_path, "halfway")
    trial_runs = sorted(r.info.run_id for r in trials)

    def result_files():
        return sorted((p.name, p.stat().st_mtime) for p in pipeline.folder.glob("*/result.json"))

    before = result_files()

    def must_not_run(*args, **kwargs):
        raise AssertionError("the finished sweep phase was run again")

    monkeypatch.setattr(runner, "run_sweep", must_not_run)
    monkeypatch.setattr(runner, "resume_sweep", must_not_run)
    capsys.readouterr()
    assert main(["resume", "halfway", "--storage", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "continuing 'halfway' in its select phase" in out

    state = json.loads(pipeline.path.read_text())["state"]
    assert state["phase"] == "done"
    assert state["sweep_actual_s"] == pytest.approx(saved["sweep_actual_s"])  # not re-run
    assert state["select_actual_s"] > 0
    _, parent, trials = _parent_run(tmp_path, "halfway")
    assert sorted(r.info.run_id for r in trials) == trial_runs
    assert result_files() == before  # no trial trained again
    assert parent.data.metrics["pipeline.test_accuracy"] == \
        pytest.approx(state["result"]["test_accuracy"])
    assert math.isfinite(parent.data.metrics["pipeline.val_accuracy"])
    _predicts(state["result"]["model_dir"])


# --------------------------------------------------------------------------- stopping and resuming


def test_the_deadline_stopper_reads_its_file_and_survives_pickling(tmp_path):
    import pickle
    import time

    from tuning.sweep.runner import DeadlineStopper

    path = tmp_path / "deadline"
    stopper = DeadlineStopper(str(path))
    assert not stopper.stop_all()  # no file: no deadline
    path.write_text(f"{time.time() - 1}\n")
    restored = pickle.loads(pickle.dumps(stopper))  # as Ray saves it with the experiment
    assert restored.path == str(path) and restored.stop_all()
    path.write_text(f"{time.time() + 3600}\n")  # a resume moves the deadline
    assert not pickle.loads(pickle.dumps(stopper)).stop_all()


def test_a_killed_process_is_charged_up_to_its_last_heartbeat(tmp_path):
    import os

    from tuning.config import SweepConfig
    from tuning.results.pipeline import ALIVE_FILE, Pipeline, PipelineState, advance, load_pipeline

    state = PipelineState(phase="sweep", sweep_planned_s=1000, sweep_actual_s=50,
                          session={"phase": "sweep", "started_at": 10_000.0})
    pipeline = Pipeline(SweepConfig(name="killed", storage=str(tmp_path)), PipelineConfig(), state)
    pipeline.save()
    alive = pipeline.folder / ALIVE_FILE
    alive.touch()
    os.utime(alive, (10_120.0, 10_120.0))  # its last heartbeat: 120 s after the session began
    advance(load_pipeline("killed", str(tmp_path)), until="sweep")  # counts, runs nothing
    saved = load_pipeline("killed", str(tmp_path)).state
    assert saved.sweep_actual_s == pytest.approx(170) and saved.session is None
    assert "stopped during the sweep phase after about 2m00s" in saved.notes[-1]


@pytest.mark.slow
def test_a_killed_sweep_phase_resumes_through_the_sweeps_own_resume(ray_local, tiny_model_dir,
                                                                     tmp_path, capsys, monkeypatch):
    """SIGKILL `tunebert tune` once its sweep has Ray state; `tunebert resume` continues that sweep
    (runner.resume_sweep, not a new sweep) and then the rest of the pipeline."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from tuning.sweep import runner

    args = [sys.executable, "-m", "tuning.cli", "tune", "--name", "cut", "--model", tiny_model_dir,
            "--max-length", "64", "--storage", str(tmp_path), "--trials", "3", "--epochs", "2",
            "--scheduler", "none", "--max-concurrent", "1", "--top-k", "1", "--seeds", "2",
            "--time-budget", "1h"]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    folder = tmp_path / "ray" / "cut"
    deadline = time.time() + 300
    try:
        # killed once Ray has saved the sweep's state, so the resume goes through Tuner.restore
        # (before that snapshot a resume starts the sweep's trials again: not the case tested)
        # (and the searcher's state beside it: Ray writes the experiment's state first)
        while not all(any(folder.glob(pattern)) for pattern in (
                "experiment_state-*.json", "search_gen_state-*.json", "searcher-state-*.pkl")):
            assert proc.poll() is None and time.time() < deadline, (
                f"Ray saved no experiment state within 300 s (exit {proc.poll()})")
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    killed = json.loads((folder / PIPELINE_FILE).read_text())["state"]
    assert killed["phase"] == "sweep" and killed["session"]["phase"] == "sweep"
    saved = {p.name: p.stat().st_size for p in sorted(folder.iterdir()) if p.is_file()}

    calls = []
    real_resume, real_run = runner.resume_sweep, runner.run_sweep
    monkeypatch.setattr(runner, "resume_sweep",
                        lambda *a, **k: calls.append("resume") or real_resume(*a, **k))
    monkeypatch.setattr(runner, "run_sweep", lambda *a, resume=False, **k: calls.append(
        f"run(resume={resume})") or real_run(*a, resume=resume, **k))
    from ray import tune

    restored = []
    real_restore = tune.Tuner.restore
    monkeypatch.setattr(tune.Tuner, "restore", classmethod(
        lambda cls, path, **k: restored.append(os.path.realpath(path)) or real_restore(path, **k)))
    assert main(["resume", "cut", "--storage", str(tmp_path)]) == 0
    assert calls == ["resume", "run(resume=True)"]  # the killed sweep continued; no new sweep
    assert restored == [os.path.realpath(folder)], "the resume did not restore Ray's saved state"

    state = json.loads((folder / PIPELINE_FILE).read_text())["state"]
    assert state["phase"] == "done" and state["session"] is None
    assert any("stopped during the sweep phase" in note for note in state["notes"])
    client, parent, trials = _parent_run(tmp_path, "cut")
    # what Ray had saved when the sweep was killed, should the resume not run every trial
    assert len(trials) == 3, f"{len(trials)} trial run(s) after the resume; Ray's saved files: {saved}"
    assert len({r.data.tags["tunebert.trial_id"] for r in trials}) == 3
    assert all(r.info.status == "FINISHED" for r in trials)
    assert parent.info.status == "FINISHED"
    _predicts(state["result"]["model_dir"])


@pytest.mark.parametrize("damage", [b"caf\xe9 {", b'{"sweep": {', b"[1, 2]"])
def test_a_damaged_pipeline_state_exits_2_naming_the_file(damage, tmp_path, capsys):
    from tuning.results.pipeline import pipeline_path

    path = pipeline_path("cut", str(tmp_path))
    path.parent.mkdir(parents=True)
    path.write_bytes(damage)
    rc = main(["resume", "cut", "--storage", str(tmp_path)])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.startswith("tunebert resume: error: the saved state of pipeline 'cut'")
    assert str(path) in err and "is damaged" in err and "Traceback" not in err
    assert path.read_bytes() == damage  # left as it was
