"""Final selection: top-k configs re-trained over seeds, chosen by mean validation score, and only
then tested. End to end through a real local Ray sweep and a real SQLite MLflow store."""

import json
import math
import statistics
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from trainables.data import DataConfig
from trainables.errors import ConfigError, UserError
from tuning.cli import build_parser
from tuning.results.selection import (Candidate, SelectionError, best_seed, better, choose,
                              ensemble_wins, final_selection, mean_std, resolve_data, run,
                              selection_seeds)


def _candidate(rank, scores, **kw):
    mean, std = mean_std(scores)
    return Candidate(rank, f"t{rank}", f"r{rank}", 0.5, {}, tuple(range(len(scores))),
                     tuple(scores), tuple("x" for _ in scores), mean, std, **kw)


# --------------------------------------------------------------------------- pure parts


def test_mean_std_is_the_mean_and_the_sample_standard_deviation():
    mean, std = mean_std([0.5, 0.7])
    assert mean == pytest.approx(0.6)
    assert std == pytest.approx(math.sqrt(((0.5 - 0.6) ** 2 + (0.7 - 0.6) ** 2) / 1))  # n - 1
    assert mean_std([0.8]) == (0.8, 0.0)
    assert all(math.isnan(v) for v in mean_std([0.8, float("nan")]))


def test_choose_takes_the_best_mean_then_the_lower_std_then_the_better_rank():
    a, b = _candidate(1, [0.80, 0.80]), _candidate(2, [0.90, 0.78])  # b: higher mean
    assert choose([a, b]).rank == 2
    c, d = _candidate(1, [0.70, 0.90]), _candidate(2, [0.80, 0.80])  # same mean, d steadier
    assert choose([c, d]).rank == 2
    e, f = _candidate(1, [0.1 + 0.2, 0.3]), _candidate(2, [0.3, 0.2 + 0.1])  # equal but for ulps
    assert choose([f, e]).rank == 1
    assert choose([_candidate(1, [0.4]), _candidate(2, [0.3])], mode="min").rank == 2


def test_better_is_strict_and_best_seed_takes_the_earlier_seed_on_a_tie():
    assert better(0.8, 0.7, "max") and not better(0.7, 0.8, "max") and better(0.7, 0.8, "min")
    assert not better(0.3, 0.1 + 0.2, "max") and not better(0.1 + 0.2, 0.3, "min")  # ulps: a tie
    assert not better(float("nan"), 0.1, "max") and better(0.1, float("nan"), "min")
    assert best_seed((3, 4, 5), (0.5, 0.7, 0.7), "max") == (4, 0.7)
    assert best_seed((3, 4, 5), (0.5, 0.7, 0.5), "min") == (3, 0.5)


def test_the_ensemble_is_handed_over_unless_it_scores_below_the_seed_models_mean():
    # the best seed (0.90) beats the ensemble (0.89), but that is the max of three draws; the
    # ensemble is above the seeds' mean (0.88) and is handed over
    assert ensemble_wins(0.89, [0.86, 0.88, 0.90], "max")
    assert ensemble_wins(0.88, [0.86, 0.88, 0.90], "max")  # at the mean: the ensemble
    assert not ensemble_wins(0.87, [0.86, 0.88, 0.90], "max")
    assert ensemble_wins(0.30, [0.35, 0.29], "min") and not ensemble_wins(0.33, [0.35, 0.29], "min")
    assert ensemble_wins(0.88, [0.1 + 0.2 + 0.58, 0.88], "max")  # a tie but for the last bits
    assert not ensemble_wins(float("nan"), [0.8], "max")
    assert ensemble_wins(0.8, [float("nan"), 0.7], "max")  # a diverged member is left out


def test_selection_trains_fresh_seeds_never_the_trials_own():
    assert selection_seeds({"seed": 7}, 3) == (8, 9, 10)
    assert selection_seeds({}, 1) == (1,)


def test_a_candidate_with_a_diverged_seed_cannot_be_chosen():
    best_but_diverged = _candidate(1, [0.99, float("nan")])
    assert choose([best_but_diverged, _candidate(2, [0.5, 0.5])]).rank == 2
    with pytest.raises(SelectionError, match="nothing to choose"):
        choose([best_but_diverged])


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("kwargs, message", [
    ({"top_k": 0}, "`top_k` must be an integer >= 1, but got 0"),
    ({"top_k": True}, "`top_k` must be an integer >= 1, but got True"),
    ({"seeds": 0}, "`seeds` must be an integer >= 1, but got 0"),
    ({"seeds": 1.5}, "`seeds` must be an integer >= 1, but got 1.5"),
    ({"metric": "test_accuracy"}, "`metric` must be a validation metric (val_...)"),
    ({"mode": "median"}, "`mode` must be 'max' or 'min'"),
    ({"epochs": 0}, "`epochs` must be an integer >= 1"),
    ({"sweep": "bad name!"}, "sweep name 'bad name!' is not allowed"),
    ({"workers": 0}, "`workers` must be an integer >= 1, but got 0"),
    ({"ensemble": True, "seeds": 1}, "`ensemble` needs `seeds` >= 2 (an ensemble of one model is "
                                     "that model), but got seeds=1"),
    ({"ensemble": True, "metric": "val_knn_accuracy"},
     "`ensemble` compares models on a metric the evaluation measures"),
])
def test_bad_arguments_are_refused_before_anything_is_touched(kwargs, message, tmp_path):
    kwargs = {"sweep": "s", **kwargs}
    with pytest.raises(ConfigError) as info:
        final_selection(storage=str(tmp_path), **kwargs)
    assert message in str(info.value)
    assert not any(tmp_path.iterdir())  # no store was created, nothing trained


def test_unknown_sweep_is_a_clear_user_error(tmp_path):
    with pytest.raises(UserError, match="no MLflow store at"):
        final_selection("never-ran", storage=str(tmp_path))
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    client.create_experiment("other", tags={"tunebert.sweep": "other"})
    with pytest.raises(UserError, match=r"no sweep named 'never-ran'.*\['other'\]"):
        final_selection("never-ran", storage=str(tmp_path))


def test_the_cli_subcommand_refuses_bad_counts(tmp_path):
    parser = build_parser()
    for flag in ("--top-k", "--seeds", "--workers"):
        args = parser.parse_args(["select", "s", flag, "0", "--storage", str(tmp_path), "--data", "demo"])
        with pytest.raises(UserError, match=f"`{flag[2:].replace('-', '_')}` must be an integer >= 1"):
            run(args)


def test_data_defaults_to_the_sweeps_own_and_fields_override_it(tmp_path):
    from tuning.config import SweepConfig

    with pytest.raises(ConfigError, match="or pass --data"):
        resolve_data("s", str(tmp_path))
    assert resolve_data("s", str(tmp_path), "demo") == DataConfig("demo")
    SweepConfig(name="s", storage=str(tmp_path), data=DataConfig("some/folder", "utt", "intent")).save()
    assert resolve_data("s", str(tmp_path)) == DataConfig("some/folder", "utt", "intent")
    assert resolve_data("s", str(tmp_path), label_column="y") == DataConfig("some/folder", "utt", "y")


def test_other_data_for_select_drops_the_rows_carved_from_the_sweeps_train_file(tmp_path):
    from tuning.config import SweepConfig

    carved = DataConfig("some/folder", validation_ids=(2, 5))
    SweepConfig(name="s", storage=str(tmp_path), data=carved).save()
    assert resolve_data("s", str(tmp_path)).validation_ids == (2, 5)
    assert resolve_data("s", str(tmp_path), label_column="y").validation_ids == (2, 5)
    assert resolve_data("s", str(tmp_path), "other/folder").validation_ids is None


# --------------------------------------------------------------------------- end to end


def _spy_on_the_test_split(monkeypatch, choice=False):
    """Record, in order, every tokenization (with or without test) and every evaluation of a
    test split, wherever training and selection do them; and every evaluation of a validation
    split outside the training loops (selection's scoring of the handed-over candidates). With
    ``choice``, also the moment the handed-over model is decided (its MLflow tag)."""
    import trainables.contrastive  # noqa: F401  the training loops keep the real evaluate
    import trainables.data
    import trainables.finetune  # noqa: F401
    import trainables.loops
    import tuning.tracking
    import trainables.task_data
    import tuning.results.train  # noqa: F401

    events = []
    tokenize, evaluate = trainables.data.tokenize_splits, trainables.loops.evaluate
    annotate, set_tags = tuning.tracking.annotate_run, tuning.tracking.SelectionRun.set_tags

    def spy_tokenize(*args, include_test=True, **kwargs):
        data = tokenize(*args, include_test=include_test, **kwargs)
        events.append("tokenize+test" if "test" in data.splits else "tokenize")
        if "test" in data.splits:
            data.splits["test"].is_test = True
        data.splits["validation"].is_validation = True
        return data

    def spy_evaluate(model, split, **kwargs):
        if getattr(split, "is_test", False):
            events.append("evaluate-test")
        if getattr(split, "is_validation", False):
            events.append("evaluate-validation")
        return evaluate(model, split, **kwargs)

    def spy_annotate(uri, run_id, **kwargs):
        if "tunebert.handed_over" in (kwargs.get("tags") or {}):
            events.append("handed-over")
        return annotate(uri, run_id, **kwargs)

    def spy_set_tags(run, tags):
        if "tunebert.handed_over" in tags:
            events.append("handed-over")
        return set_tags(run, tags)

    monkeypatch.setattr(trainables.data, "tokenize_splits", spy_tokenize)
    monkeypatch.setattr(trainables.task_data, "tokenize_splits", spy_tokenize)
    monkeypatch.setattr(trainables.loops, "evaluate", spy_evaluate)
    if choice:
        monkeypatch.setattr(tuning.tracking, "annotate_run", spy_annotate)
        monkeypatch.setattr(tuning.tracking.SelectionRun, "set_tags", spy_set_tags)
    return events


@pytest.mark.slow
def test_final_selection_end_to_end(ray_local, tiny_model_dir, tmp_path, monkeypatch):
    from tuning.tracking.best import top_k
    from tuning.config import SweepConfig
    from tuning.sweep.runner import run_sweep

    space = tmp_path / "space.yaml"
    space.write_text("lr: {low: 3.0e-4, high: 3.0e-3, log: true}\n")
    cfg = SweepConfig(name="sel", model=tiny_model_dir, max_length=64, epochs=2, num_trials=3,
                      storage=str(tmp_path), scheduler="none", max_concurrent=2, seed=1,
                      space_file=str(space))
    run_sweep(cfg)
    leaders = top_k("sel", 2, storage=str(tmp_path))
    events = _spy_on_the_test_split(monkeypatch)

    result = final_selection("sel", top_k=2, seeds=2, storage=str(tmp_path),
                             output_dir=str(tmp_path / "chosen"))

    # the test split: not tokenized for the 4 trainings, then evaluated for the 2 chosen models only
    assert events == ["tokenize"] * 4 + ["tokenize+test"] + ["evaluate-test"] * 2

    client = MlflowClient(cfg.resolved_tracking_uri())
    exp = client.get_experiment_by_name("sel")
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    by_kind = {}
    for r in runs:
        by_kind.setdefault(r.data.tags.get("tunebert.kind"), []).append(r)
    assert len(by_kind["trial"]) == 3 and len(by_kind["sweep"]) == 1
    (selection,) = by_kind["selection"]
    assert selection.info.run_id == result.run_id and selection.info.status == "FINISHED"
    assert selection.data.tags["mlflow.parentRunId"] == by_kind["sweep"][0].info.run_id
    seed_runs = [r for r in by_kind["train"] if r.data.tags.get("mlflow.parentRunId") == result.run_id]
    assert len(seed_runs) == 4 == len(by_kind["train"])
    assert all(r.info.status == "FINISHED" for r in seed_runs)
    assert len(top_k("sel", 10, storage=str(tmp_path))) == 3  # selection runs never rank as trials

    # each seed run trains its trial's config with a fresh seed, the trial's seed + 1 or + 2,
    # nothing else changed (the trial's own seed would only repeat its sweep run)
    per_rank = {}
    for r in seed_runs:
        rank = int(r.data.tags["tunebert.selection.rank"])
        trial = leaders[rank - 1]
        config = json.loads(r.data.tags["tunebert.config"])
        offset = int(r.data.tags["tunebert.selection.seed_offset"])
        assert r.data.tags["tunebert.selection.trial_id"] == trial.trial_id
        assert offset in (1, 2)
        assert config == {**trial.config, "seed": trial.config["seed"] + offset}
        per_rank.setdefault(rank, {})[config["seed"]] = r
    assert sorted(per_rank) == [1, 2] and all(len(v) == 2 for v in per_rank.values())

    # the table: per-seed scores are the seed runs' own, mean/std recomputed from them
    logged = selection.data.metrics
    recomputed = {}
    for rank, seeds in per_rank.items():
        scores = [seeds[s].data.metrics["val_accuracy"] for s in sorted(seeds)]
        for s in seeds:
            assert logged[f"rank{rank}_val_accuracy_seed{s}"] == seeds[s].data.metrics["val_accuracy"]
        mean, std = statistics.fmean(scores), statistics.stdev(scores)
        assert logged[f"rank{rank}_val_accuracy_mean"] == pytest.approx(mean, abs=1e-12)
        assert logged[f"rank{rank}_val_accuracy_std"] == pytest.approx(std, abs=1e-12)
        candidate = result.candidates[rank - 1]
        assert (candidate.rank, candidate.trial_id) == (rank, leaders[rank - 1].trial_id)
        assert candidate.scores == tuple(scores)
        recomputed[rank] = (mean, std)

    # the chosen one has the highest mean (ties: lower std, then better rank)
    expected = min(recomputed, key=lambda r: (-round(recomputed[r][0], 12),
                                              round(recomputed[r][1], 12), r))
    assert result.chosen.rank == expected
    assert result.chosen.trial_id == leaders[expected - 1].trial_id
    assert selection.data.tags["tunebert.chosen_trial_id"] == result.chosen.trial_id
    assert {r: logged[f"rank{r}_chosen"] for r in (1, 2)} == {r: float(r == expected) for r in (1, 2)}

    # test metrics: on the chosen config's runs and the selection run, nowhere else
    for rank, seeds in per_rank.items():
        for r in seeds.values():
            tests = {k for k in r.data.metrics if k.startswith("test_")}
            artifacts = {a.path for a in client.list_artifacts(r.info.run_id)}
            models = logged_models(client, r.info.run_id)
            assert r.data.tags["tunebert.selection.chosen"] == str(rank == expected).lower()
            if rank == expected:
                assert tests == {"test_loss", "test_accuracy", "test_macro_f1"}
                assert models == ["model"]
            else:
                assert not tests and not artifacts and not models
    chosen_runs = [per_rank[expected][s] for s in sorted(per_rank[expected])]
    accuracies = [r.data.metrics["test_accuracy"] for r in chosen_runs]
    f1s = [r.data.metrics["test_macro_f1"] for r in chosen_runs]
    assert logged["test_accuracy_mean"] == pytest.approx(statistics.fmean(accuracies), abs=1e-12)
    assert logged["test_accuracy_std"] == pytest.approx(statistics.stdev(accuracies), abs=1e-12)
    assert logged["test_macro_f1_mean"] == pytest.approx(statistics.fmean(f1s), abs=1e-12)
    assert logged["test_macro_f1_std"] == pytest.approx(statistics.stdev(f1s), abs=1e-12)
    assert result.test_accuracy_mean == pytest.approx(logged["test_accuracy_mean"])

    # the artifacts, and the chosen models kept on disk
    names = {a.path for a in client.list_artifacts(result.run_id)}
    assert {"selection.json", "selection.md", "chosen_config.yaml"} <= names
    local = client.download_artifacts(result.run_id, "selection.json", str(tmp_path))
    with open(local) as f:
        saved = json.load(f)
    assert saved["chosen"]["trial_id"] == result.chosen.trial_id
    assert [c["scores"] for c in saved["candidates"]] == [list(c.scores) for c in result.candidates]
    assert sorted(p.name for p in (tmp_path / "chosen").iterdir()) == \
        sorted(f"seed-{s}" for s in result.chosen.seeds)
    assert "| **yes** |" in result.markdown()

    # the CLI subcommand in smoke mode: top 2 x 1 seed x 1 epoch, on the sweep's own data
    assert run(build_parser().parse_args(["select", "sel", "--storage", str(tmp_path), "--smoke-test"])) == 0
    selections = client.search_runs([exp.experiment_id], "tags.`tunebert.kind` = 'selection'")
    (smoke,) = [r for r in selections if r.info.run_id != result.run_id]
    children = client.search_runs([exp.experiment_id],
                                  f"tags.`mlflow.parentRunId` = '{smoke.info.run_id}'")
    assert len(children) == 2 and smoke.data.params["seeds"] == "1"
    assert smoke.data.params["data.source"] == "demo"


@pytest.mark.slow
def test_train_config_can_leave_the_test_split_alone(tiny_model_dir, tmp_path, mlflow_uri):
    from tuning.results.train import train_config

    client = MlflowClient(mlflow_uri)
    config = {"model": tiny_model_dir, "max_length": 64, "epochs": 1, "batch_size": 32}
    full = train_config(config, DataConfig("demo"), tracking_uri=mlflow_uri, max_train_examples=64)
    assert set(full.test) == {"test_loss", "test_accuracy", "test_macro_f1"}
    assert "test_accuracy" in client.get_run(full.run_id).data.metrics
    assert logged_models(client, full.run_id) == ["model"]

    parent = client.create_run(client.get_run(full.run_id).info.experiment_id).info.run_id
    val_only = train_config(config, DataConfig("demo"), tracking_uri=mlflow_uri,
                            max_train_examples=64, evaluate_test=False, parent_run_id=parent,
                            log_model=False, output_dir=str(tmp_path / "ckpt"))
    logged = client.get_run(val_only.run_id)
    assert val_only.test == {} and not any(k.startswith("test_") for k in logged.data.metrics)
    assert "val_accuracy" in val_only.val and "val_accuracy" in logged.data.metrics
    assert logged.data.tags["mlflow.parentRunId"] == parent
    assert client.list_artifacts(val_only.run_id) == [] and logged_models(client, val_only.run_id) == []
    assert (tmp_path / "ckpt" / "tunebert.json").is_file()  # kept locally all the same


# --------------------------------------------------------------------------- the handed-over model


def logged_models(client: MlflowClient, run_id: str) -> list[str]:
    """Names of the MLflow models logged from ``run_id`` (MLflow 3 keeps them apart from the
    run's artifacts)."""
    experiment_id = client.get_run(run_id).info.experiment_id
    found = client.search_logged_models([experiment_id], filter_string=f"source_run_id = '{run_id}'")
    return sorted(m.name for m in found)


@pytest.fixture(scope="module")
def small_sweep(tmp_path_factory, tiny_model_dir, ray_local_module):
    """One small sweep (3 one-epoch trials) for the hand-over tests; each test runs its own
    selections on it and reads back only its own selection runs."""
    from tuning.config import SweepConfig
    from tuning.sweep.runner import run_sweep

    storage = tmp_path_factory.mktemp("handover")
    (storage / "space.yaml").write_text("lr: {low: 3.0e-4, high: 3.0e-3, log: true}\n")
    cfg = SweepConfig(name="handover", model=tiny_model_dir, max_length=64, epochs=1,
                      num_trials=3, storage=str(storage), scheduler="none", max_concurrent=2,
                      seed=3, space_file=str(storage / "space.yaml"))
    run_sweep(cfg)
    return cfg


def _rescore(result, split):
    """Score the kept seed models and the handed-over folder again, on their own."""
    from tuning.results.selection import evaluate_folders

    folders = [f"{result.output_dir}/seed-{s}" for s in result.chosen.seeds] + [result.model_dir]
    return evaluate_folders(folders, DataConfig("demo"), result.chosen.config, split)


@pytest.mark.slow
def test_the_ensemble_is_chosen_on_validation_and_only_then_tested(small_sweep, tmp_path,
                                                                   monkeypatch):
    from trainables.ensemble import is_ensemble_folder, read_ensemble

    storage = small_sweep.storage
    out = Path(storage) / "out-ensemble"
    events = _spy_on_the_test_split(monkeypatch, choice=True)

    result = final_selection("handover", top_k=2, seeds=3, metric="val_loss", mode="min",
                             storage=storage, epochs=2, ensemble=True, output_dir=str(out))

    # 6 trainings without test; validation for the 3 seed models and the ensemble; the choice;
    # only then test: the 3 seed models, and the ensemble once if it is the one handed over
    ensemble_won = result.handed_over == "ensemble"
    assert events == (["tokenize"] * 6 + ["tokenize"] + ["evaluate-validation"] * 4
                      + ["handed-over", "tokenize+test"] + ["evaluate-test"] * (3 + ensemble_won))
    monkeypatch.undo()

    # the choice: the best seed model by the same validation scoring, the ensemble unless it
    # scores below the seed models' mean; averaging three seeds' probabilities lowers the loss
    # here
    assert ensemble_won, f"single {result.single_val}, ensemble {result.ensemble_val}"
    *seed_scores, ensemble_score = [m["val_loss"] for m in _rescore(result, "validation")]
    assert result.single_seed == result.chosen.seeds[seed_scores.index(min(seed_scores))]
    assert (result.single_val, result.ensemble_val) == (min(seed_scores), ensemble_score)
    assert result.ensemble_val <= statistics.fmean(seed_scores)

    # one folder: a manifest and the three seed models as members
    assert result.model_dir == str((out / "model").resolve())
    assert is_ensemble_folder(result.model_dir)
    members, weights = read_ensemble(result.model_dir)
    assert [m.name for m in members] == ["member-0", "member-1", "member-2"]
    assert weights == pytest.approx([1 / 3] * 3)
    assert sorted(p.name for p in out.iterdir()) == \
        sorted(["model"] + [f"seed-{s}" for s in result.chosen.seeds])

    # its test metrics: logged once, the same when measured again, the same as predicting
    *_, again = _rescore(result, "test")
    assert result.handed_over_test == {k: again[k] for k in ("test_accuracy", "test_macro_f1")}
    from trainables.data import DataConfig, load_raw_splits
    from tuning.serve.predict import load_model

    test = load_raw_splits(DataConfig("demo"))["test"]
    predicted = load_model(result.model_dir).predict(test.texts)
    accuracy = sum(p == str(t) for p, t in zip(predicted, test.labels)) / len(test.labels)
    assert accuracy == pytest.approx(result.handed_over_test["test_accuracy"], abs=1e-12)

    client = MlflowClient(small_sweep.resolved_tracking_uri())
    selection = client.get_run(result.run_id)
    logged = selection.data.metrics
    assert selection.data.tags["tunebert.handed_over"] == "ensemble"
    assert logged["single_val_loss"] == result.single_val
    assert logged["ensemble_val_loss"] == result.ensemble_val
    assert logged["handed_over_test_accuracy"] == result.handed_over_test["test_accuracy"]
    assert logged["handed_over_test_macro_f1"] == result.handed_over_test["test_macro_f1"]
    assert selection.data.params["ensemble"] == "True"
    assert logged_models(client, result.run_id) == ["handed_over_model"]
    from tuning.serve.predict import load_model as load_logged

    logged_model = load_logged(f"runs:/{result.run_id}/handed_over_model",
                               tracking_uri=small_sweep.resolved_tracking_uri())
    assert logged_model.kind == "ensemble"
    assert list(logged_model.predict(test.texts)) == list(predicted)
    markdown = result.markdown()
    assert "## Handed-over model" in markdown
    assert f"| ensemble of the 3 seed models | {result.ensemble_val:.4f} | **yes** |" in markdown
    with open(client.download_artifacts(result.run_id, "selection.json", str(tmp_path))) as f:
        saved = json.load(f)
    assert saved["handed_over"] == "ensemble" and saved["model_dir"] == result.model_dir

    # the CLI subcommand in smoke mode with --ensemble: 2 seeds, so there is an ensemble to try
    assert run(build_parser().parse_args(["select", "handover", "--storage", storage, "--smoke-test", "--ensemble",
                                  "--metric", "val_loss", "--mode", "min"])) == 0
    (smoke,) = [r for r in client.search_runs(
        [selection.info.experiment_id], "tags.`tunebert.kind` = 'selection'")
        if r.data.params["max_train_examples"] == "64" and r.data.params["ensemble"] == "True"]
    assert smoke.data.tags["tunebert.handed_over"] in ("single", "ensemble")
    assert "ensemble_val_loss" in smoke.data.metrics


@pytest.mark.slow
def test_the_single_model_is_handed_over_when_the_ensemble_scores_below_the_seeds_mean(
        small_sweep, monkeypatch, capsys):
    from trainables.ensemble import is_ensemble_folder

    storage = small_sweep.storage
    out = Path(storage) / "out-single"
    events = _spy_on_the_test_split(monkeypatch, choice=True)

    # the highest validation loss "wins": the ensemble's loss (the NLL of the mean probability)
    # is at most its members' mean loss (Jensen), so it scores below the seeds' mean in this
    # mode. A real run whose hand-over is known in advance.
    result = final_selection("handover", top_k=1, seeds=2, metric="val_loss", mode="max",
                             storage=storage, ensemble=True, output_dir=str(out))

    assert result.handed_over == "single"
    assert events == (["tokenize"] * 2 + ["tokenize"] + ["evaluate-validation"] * 3
                      + ["handed-over", "tokenize+test"] + ["evaluate-test"] * 2)
    monkeypatch.undo()
    assert result.ensemble_val <= result.single_val
    *seed_scores, _ = [m["val_loss"] for m in _rescore(result, "validation")]
    assert result.single_val == max(seed_scores)
    assert result.single_seed == result.chosen.seeds[seed_scores.index(max(seed_scores))]
    assert result.ensemble_val < statistics.fmean(seed_scores)

    # the handed-over model is that seed's plain model folder; its test row is that seed's
    model_dir = Path(result.model_dir)
    assert model_dir == (out / "model").resolve() and not is_ensemble_folder(model_dir)
    for weights in ("model.safetensors", "head.safetensors"):
        assert (model_dir / weights).read_bytes() == \
            (out / f"seed-{result.single_seed}" / weights).read_bytes()
    (row,) = [r for r in result.test if r["seed"] == result.single_seed]
    assert result.handed_over_test == {k: row[k] for k in ("test_accuracy", "test_macro_f1")}
    client = MlflowClient(small_sweep.resolved_tracking_uri())
    tags = client.get_run(result.run_id).data.tags
    assert tags["tunebert.handed_over"] == "single"
    assert tags["tunebert.handed_over_seed"] == str(result.single_seed)
    assert "| best seed model (seed " in result.markdown()

    from tuning.cli import main

    capsys.readouterr()
    assert main(["predict", str(model_dir), "wake me up at 7", "play some jazz"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split("\t")[1] for line in lines] == ["wake me up at 7", "play some jazz"]


@pytest.mark.slow
def test_workers_give_the_same_selection_as_one_at_a_time(small_sweep):
    """Two trainings at a time in worker processes, each on one share of the cores, against the
    same trainings one at a time here. This process runs at the workers' thread count for both:
    torch sums in another order on another number of threads, which moves losses in their last
    digits; the pool itself must change nothing."""
    import torch

    from tuning.results.jobs import threads_per_worker

    storage = small_sweep.storage
    kwargs = dict(top_k=2, seeds=2, storage=storage, ensemble=True)
    threads = torch.get_num_threads()
    torch.set_num_threads(threads_per_worker(2))
    try:
        one = final_selection("handover", workers=1, **kwargs)
        two = final_selection("handover", workers=2, **kwargs)
    finally:
        torch.set_num_threads(threads)

    def content(result):
        d = result.to_dict()
        for c in d["candidates"]:
            c.pop("run_ids")
        for row in d["test"]:
            row.pop("run_id")
        d.pop("run_id")
        return d

    assert content(two) == content(one)
    assert (two.chosen.rank, two.chosen.trial_id) == (one.chosen.rank, one.chosen.trial_id)
    client = MlflowClient(small_sweep.resolved_tracking_uri())
    logged = [client.get_run(r.run_id).data for r in (one, two)]
    assert logged[1].metrics == logged[0].metrics
    assert logged[1].params["workers"] == "2"
    experiment = client.get_run(two.run_id).info.experiment_id
    children = client.search_runs([experiment], f"tags.`mlflow.parentRunId` = '{two.run_id}'")
    assert len(children) == 4 and all(r.info.status == "FINISHED" for r in children)
