"""Multi-objective and constrained sweeps: the Pareto front and constraints by hand, the settings'
validation, ranking from a real SQLite MLflow store (no Ray), the searcher Ray drives (no Ray
started), the report's figure, and one end-to-end sweep (slow)."""

import json
import math

import pytest
from mlflow.tracking import MlflowClient

from trainables.errors import ConfigError
from tuning import tracking
from tuning.tracking.best import (Goal, best_config, best_run, dominates, front, front_rows, pareto_front,
                         rank, sweep_goal, top_k)
from tuning.config import Constraint, Objective, SweepConfig, load_saved_sweep

ACC_LAT = ("val_accuracy:max", "latency_ms_p50:min")


# --------------------------------------------------------------------------- the front by hand


def test_pareto_front_of_accuracy_up_latency_down():
    points = [(0.90, 5.0),   # 0 front: the most accurate at its latency
              (0.85, 3.0),   # 1 front
              (0.80, 4.0),   # 2 dominated by 1 (less accurate and slower)
              (0.90, 6.0),   # 3 dominated by 0 (as accurate, slower)
              (0.70, 1.0),   # 4 front: the fastest
              (0.85, 3.0)]   # 5 equal to 1: neither dominates the other, both stay
    assert pareto_front(points, ["max", "min"]) == [0, 1, 4, 5]


def test_pareto_front_other_directions_and_edges():
    points = [(1.0, 1.0), (2.0, 0.5), (2.0, 2.0), (0.5, 3.0)]
    assert pareto_front(points, ["min", "min"]) == [0, 1, 3]
    assert pareto_front(points, ["max", "max"]) == [2, 3]  # (0.5, 3.0): the largest second value
    assert pareto_front(points, ["min", "max"]) == [3]
    assert pareto_front([(0.9,), (0.8,), (0.9,)], ["max"]) == [0, 2]  # one objective: the ties at best
    assert pareto_front([], ["max", "min"]) == []
    assert dominates((0.9, 2.0), (0.8, 3.0), ["max", "min"])
    assert not dominates((0.9, 2.0), (0.9, 2.0), ["max", "min"])  # equal: not better anywhere
    assert not dominates((0.9, 4.0), (0.8, 3.0), ["max", "min"])  # a trade-off
    with pytest.raises(ConfigError, match="every mode must be 'max' or 'min'"):
        pareto_front([(1.0,)], ["up"])
    with pytest.raises(ConfigError, match="one value per mode"):
        pareto_front([(1.0, 2.0)], ["max"])


def test_constraints_by_hand():
    at_most = Constraint.parse("latency_ms_p50<=5")
    assert (at_most.metric, at_most.op, at_most.bound) == ("latency_ms_p50", "<=", 5.0)
    assert at_most.violation(4.0) == -1.0 and at_most.violation(6.5) == 1.5
    assert at_most.holds({"latency_ms_p50": 5.0}) and not at_most.holds({"latency_ms_p50": 5.01})
    assert not at_most.holds({}) and not at_most.holds({"latency_ms_p50": math.nan})  # unknown: infeasible
    at_least = Constraint.parse(" throughput_b32 >= 2.5e2 ")
    assert str(at_least) == "throughput_b32>=250"
    assert at_least.violation(300.0) == -50.0 and not at_least.holds({"throughput_b32": 249.0})
    for bad in ("latency_ms_p50<5", "latency_ms_p50<=fast", "<=5", "size_mb<=nan", "size_mb==3"):
        with pytest.raises(ConfigError, match="a constraint is METRIC<=NUMBER or METRIC>=NUMBER"):
            Constraint.parse(bad)
    assert Objective.parse("latency_ms_p50:min") == Objective("latency_ms_p50", "min")
    for bad in ("val_accuracy", "val_accuracy:up", ":max"):
        with pytest.raises(ConfigError, match="an objective is METRIC:max or METRIC:min"):
            Objective.parse(bad)


# --------------------------------------------------------------------------- settings


@pytest.mark.parametrize("settings, message", [
    (dict(objectives=("val_accuracy:max", "latency:min")),
     "objective 'latency:min' names metric 'latency', which trials do not report; known metrics: ["),
    (dict(metric="accuracy"), "`metric` (--metric) names metric 'accuracy'"),
    (dict(constraints=("latency_p50<=5",)), "need `deploy_metrics` on"),
    (dict(objectives=("val_loss:min", "latency_ms_p50:min")), "the first objective must be `metric`:`mode`"),
    (dict(metric="val_accuracy_int8", mode="max", objectives=("val_accuracy_int8:max", "latency_ms_p50:min")),
     "the first objective, 'val_accuracy_int8', must be a metric trials report every epoch"),
    (dict(scheduler="none", metric="val_accuracy_int8", mode="max"), "report it at their last epoch only"),
    (dict(objectives=("val_accuracy:max", "val_accuracy:min")), "each metric can be one objective only"),
    (dict(trainable="contrastive", objectives=("val_accuracy:max", "val_accuracy_perturbed:max")),
     "only finetune or tfidf or bilstm or multitask trials report"),
    (dict(trainable="any", constraints=("val_accuracy_int8>=0.5",)), "only finetune trials report"),
    (dict(metric="val_slot_f1", mode="max"), "only multitask trials report"),
    (dict(trainable="any", metric="val_sentence_accuracy", mode="max"), "use --trainable multitask"),
    (dict(scheduler="pbt", num_trials=4, epochs=3, objectives=("val_accuracy:max", "val_loss:min")),
     "cannot take several objectives"),
    (dict(constraints=("size_mb<10",)), "a constraint is METRIC<=NUMBER"),
])
def test_bad_objectives_and_constraints_are_refused(settings, message):
    with pytest.raises(ConfigError) as info:
        SweepConfig(name="x", **settings)
    assert message in str(info.value)


@pytest.mark.parametrize("settings", [
    # deployment costs arrive with every epoch (measured before the first): ASHA can run on them
    dict(metric="latency_ms_p50", mode="min", objectives=("latency_ms_p50:min", "val_accuracy:max")),
    dict(scheduler="none", metric="size_mb", mode="min"),
    # contrastive trials report them too, for the classifier they hand over
    dict(trainable="contrastive", objectives=ACC_LAT, constraints=("size_mb<=100",)),
    dict(trainable="any", constraints=("peak_memory_mb<=4000", "latency_ms_p95<=20")),
])
def test_deployment_costs_can_lead_and_every_trainable_reports_them(settings):
    cfg = SweepConfig(name="x", **settings)
    assert cfg.objective_list[0].metric == settings.get("metric", "val_accuracy")


def test_settings_round_trip_and_old_sweeps_still_load(tmp_path):
    cfg = SweepConfig(name="mo", storage=str(tmp_path), objectives=ACC_LAT,
                      constraints=("size_mb<=100", "peak_memory_mb<=4000"))
    assert cfg.objective_list == (Objective("val_accuracy", "max"), Objective("latency_ms_p50", "min"))
    assert [str(c) for c in cfg.constraint_list] == ["size_mb<=100", "peak_memory_mb<=4000"]
    saved = cfg.to_dict()
    assert saved["objectives"] == list(ACC_LAT) and saved["constraints"] == ["size_mb<=100", "peak_memory_mb<=4000"]
    assert SweepConfig.from_dict(json.loads(json.dumps(saved))) == cfg
    cfg.save()
    assert load_saved_sweep("mo", str(tmp_path)) == cfg  # what resume rebuilds
    old = {k: v for k, v in saved.items() if k not in ("objectives", "constraints")}
    assert SweepConfig.from_dict(old).objective_list == (Objective("val_accuracy", "max"),)
    assert SweepConfig(name="x", metric="peak_memory_mb", mode="min").objective_list[0].metric == "peak_memory_mb"


def test_cli_reads_objectives_and_refuses_unknown_ones_before_ray(tmp_path, capsys):
    from tuning.cli import build_parser, main
    from tuning.settings import objective_settings

    args = build_parser().parse_args(["sweep", "--objective", "val_accuracy:max", "--objective",
                                      "latency_ms_p50:min", "--constraint", "size_mb <= 100"])
    assert objective_settings(args) == {"metric": "val_accuracy", "mode": "max", "objectives": ACC_LAT,
                                        "constraints": ("size_mb<=100",)}
    args = build_parser().parse_args(["sweep", "--metric", "val_loss", "--mode", "min"])
    assert objective_settings(args) == {"metric": "val_loss", "mode": "min", "constraints": ()}
    rc = main(["sweep", "--objective", "val_accuracy:max", "--objective", "latency_p50:min",
               "--storage", str(tmp_path)])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("tunebert sweep: error: objective 'latency_p50:min' names metric")
    assert "'latency_ms_p50'" in err and "need `deploy_metrics` on" in err
    rc = main(["sweep", "--metric", "val_loss", "--objective", "val_accuracy:max",
               "--storage", str(tmp_path)])
    assert rc == 2 and "disagree with the first --objective" in capsys.readouterr().err
    assert not (tmp_path / "ray").exists()


def test_metrics_a_space_switches_off_are_refused():
    from trainables import registry

    on = registry.resolve_config({"trainable": "finetune"})
    off = registry.resolve_config({"trainable": "finetune", "deploy_metrics": False})
    registry.check_reported(["val_accuracy", "latency_ms_p50", "size_mb"], [on])
    registry.check_reported(["size_mb"], [off])  # sizes are reported without the timings
    with pytest.raises(ConfigError, match="reports only with `deploy_metrics` on, but the search "
                                          "space sets deploy_metrics=False"):
        registry.check_reported(["latency_ms_p50"], [on, off])
    # contrastive trials time their classifier too, unless their config says not to
    cold = registry.resolve_config({"trainable": "contrastive", "deploy_metrics": False})
    registry.check_reported(["latency_ms_p50"], [on, registry.resolve_config({"trainable": "contrastive"})])
    with pytest.raises(ConfigError, match="sets deploy_metrics=False"):
        registry.check_reported(["latency_ms_p50"], [on, cold])


# --------------------------------------------------------------------------- ranking from MLflow


def _trial(client, experiment_id, parent_id, trial_id, metrics, status="FINISHED", lr=1e-4):
    run = client.create_run(experiment_id, tags={
        tracking.KIND: "trial", tracking.SWEEP: "mo", tracking.TRIAL_ID: trial_id,
        tracking.PARENT: parent_id,
        tracking.CONFIG: json.dumps({"trainable": "finetune", "epochs": 2, "lr": lr})})
    for key, value in metrics.items():
        client.log_metric(run.info.run_id, key, value, step=2)
    client.log_metric(run.info.run_id, "best_epoch", 2, step=2)
    client.set_terminated(run.info.run_id, status)
    return run.info.run_id


def _sweep(mlflow_uri, tmp_path, **settings):
    cfg = SweepConfig(name="mo", storage=str(tmp_path), tracking_uri=mlflow_uri, **settings)
    experiment_id, parent_id = tracking.start_sweep_run(mlflow_uri, "mo", cfg.to_dict(), None)
    client = MlflowClient(mlflow_uri)
    trials = {  # best_val_accuracy, latency_ms_p50, size_mb
        "a": (0.90, 5.0, 40.0),   # front
        "b": (0.85, 3.0, 20.0),   # front
        "c": (0.80, 4.0, 20.0),   # dominated by b
        "d": (0.92, 9.0, 120.0),  # front, but size_mb > 100: infeasible under the constraint
        "e": (0.70, 1.0, 10.0),   # front
    }
    for trial_id, (acc, lat, size) in trials.items():
        _trial(client, experiment_id, parent_id, trial_id,
               {"best_val_accuracy": acc, "val_accuracy": acc, "latency_ms_p50": lat, "size_mb": size},
               lr=acc * 1e-3)
    # ASHA stopped it after its first epoch: accurate, but no latency (never on the front)
    _trial(client, experiment_id, parent_id, "f", {"best_val_accuracy": 0.95, "val_accuracy": 0.95})
    _trial(client, experiment_id, parent_id, "g", {"best_val_accuracy": 0.99, "latency_ms_p50": 0.1},
           status="FAILED")
    return cfg


def test_front_and_best_of_a_two_objective_sweep(mlflow_uri, tmp_path):
    _sweep(mlflow_uri, tmp_path, objectives=ACC_LAT)
    goal = sweep_goal("mo", tracking_uri=mlflow_uri)
    assert goal == Goal((Objective("val_accuracy", "max"), Objective("latency_ms_p50", "min")), ())
    points = front("mo", tracking_uri=mlflow_uri)
    assert [r.trial_id for r in points] == ["d", "a", "b", "e"]  # best accuracy first
    # best: the front's point best on the first objective; --prefer: best on another
    assert best_run("mo", tracking_uri=mlflow_uri).trial_id == "d"
    assert best_config("mo", tracking_uri=mlflow_uri)["lr"] == pytest.approx(0.92e-3)
    assert best_run("mo", prefer="latency_ms_p50", tracking_uri=mlflow_uri).trial_id == "e"
    with pytest.raises(ConfigError, match="`prefer` must be one of the sweep's objectives"):
        best_run("mo", prefer="size_mb", tracking_uri=mlflow_uri)
    # ranking by one metric ignores the other objective: the ASHA-stopped trial leads
    assert top_k("mo", 1, "val_accuracy", tracking_uri=mlflow_uri)[0].trial_id == "f"
    # the report picks what best picks
    from tuning.report import load_trials, pick_best

    assert pick_best(load_trials(mlflow_uri, "mo"), "mo", mlflow_uri, str(tmp_path)).trial_id == "d"


def test_constraints_make_trials_infeasible(mlflow_uri, tmp_path):
    _sweep(mlflow_uri, tmp_path, objectives=ACC_LAT, constraints=("size_mb<=100",))
    assert [r.trial_id for r in front("mo", tracking_uri=mlflow_uri)] == ["a", "b", "e"]
    assert best_run("mo", tracking_uri=mlflow_uri).trial_id == "a"
    # a constraint holds for ranking by any metric, and a trial that never reported it fails it
    assert [r.trial_id for r in top_k("mo", 9, "val_accuracy", tracking_uri=mlflow_uri)] == ["a", "b", "c", "e"]


def test_one_objective_with_a_constraint_gives_the_best_feasible_trial(mlflow_uri, tmp_path):
    _sweep(mlflow_uri, tmp_path, scheduler="none", constraints=("latency_ms_p50<=4.5",))
    assert best_run("mo", tracking_uri=mlflow_uri).trial_id == "b"  # a (5.0 ms) and d are too slow
    assert [r.trial_id for r in front("mo", tracking_uri=mlflow_uri)] == ["b"]


def test_rank_is_lexicographic_so_its_first_is_on_the_front():
    from tuning.tracking.best import TrialRun

    def run(trial_id, acc, lat):
        return TrialRun(trial_id, trial_id, "finetune", {}, {"best_val_accuracy": acc, "latency_ms_p50": lat},
                        "", "FINISHED")

    goal = Goal((Objective("val_accuracy", "max"), Objective("latency_ms_p50", "min")))
    runs = [run("slow", 0.9, 8.0), run("fast", 0.9, 2.0), run("weak", 0.5, 1.0)]
    assert [r.trial_id for r in rank(runs, goal)] == ["fast", "slow", "weak"]  # a tie goes to latency
    rows = front_rows([runs[1]], goal)
    assert rows[0]["val_accuracy"] == 0.9 and rows[0]["latency_ms_p50"] == 2.0 and rows[0]["point"] == 1


def test_best_front_prints_the_front(mlflow_uri, tmp_path, capsys):
    from tuning.cli import main

    _sweep(mlflow_uri, tmp_path, objectives=ACC_LAT, constraints=("size_mb<=100",))
    assert main(["best", "mo", "--front", "--tracking-uri", mlflow_uri]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].startswith("# Pareto front of sweep 'mo': val_accuracy:max, latency_ms_p50:min "
                               "subject to size_mb<=100.")
    assert table[1].split() == ["point", "trial_id", "val_accuracy", "latency_ms_p50", "size_mb",
                                "epoch", "run_id"]
    assert [line.split()[1] for line in table[3:]] == ["a", "b", "e"]
    assert main(["best", "mo", "--front", "--format", "json", "--tracking-uri", mlflow_uri]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["trial_id"], r["val_accuracy"], r["latency_ms_p50"]) for r in rows] == [
        ("a", 0.90, 5.0), ("b", 0.85, 3.0), ("e", 0.70, 1.0)]
    assert main(["best", "mo", "--format", "json", "--prefer", "latency_ms_p50",
                 "--tracking-uri", mlflow_uri]) == 0
    assert json.loads(capsys.readouterr().out)["lr"] == pytest.approx(0.70e-3)
    assert main(["best", "mo", "--front", "--metric", "val_loss", "--tracking-uri", mlflow_uri]) == 2


# --------------------------------------------------------------------------- the searcher (no Ray started)


def _searcher(constraints=()):
    from search_spaces.finetune import finetune_space
    from tuning.sweep.search import build_searcher

    space = finetune_space(model="m", max_length=64, epochs=2, seed=0, precision="fp32")
    return build_searcher(space, kind="tpe", seed=0, metric=["best_val_accuracy", "latency_ms_p50"],
                          mode=["max", "min"], num_trials=6, presets=[], constraints=constraints)


def test_searcher_tells_optuna_every_objective_and_constraint():
    from optuna.trial import TrialState
    from ray.tune.search import ConcurrencyLimiter

    from tuning.sweep.search import ObjectivesSearch

    searcher = _searcher([Constraint.parse("size_mb<=100")])
    assert isinstance(searcher, ObjectivesSearch)
    # Ray checks each result for the searcher's metric: every epoch carries the first objective
    assert (searcher.metric, searcher.mode) == ("best_val_accuracy", "max")
    assert searcher.objectives == ["best_val_accuracy", "latency_ms_p50"]
    assert ConcurrencyLimiter(searcher, 2).metric == "best_val_accuracy"
    for trial_id in "abcd":
        assert searcher.suggest(trial_id)["trainable"] == "finetune"
    searcher.on_trial_result("a", {"best_val_accuracy": 0.5, "training_iteration": 1})  # ignored
    searcher.on_trial_complete("a", {"best_val_accuracy": 0.9, "latency_ms_p50": 3.0, "size_mb": 150.0})
    searcher.on_trial_complete("b", {"best_val_accuracy": 0.8})  # no latency (e.g. never timed)
    searcher.on_trial_complete("c", None, error=True)
    searcher.on_trial_complete("d", {"best_val_accuracy": 0.7, "latency_ms_p50": 1.0, "size_mb": 40.0})
    study = searcher._ot_study
    assert [o.name for o in study.directions] == ["MAXIMIZE", "MINIMIZE"]
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL,
                                         TrialState.COMPLETE]
    assert trials[0].values == [0.9, 3.0] and trials[3].values == [0.7, 1.0]
    assert trials[0].constraints == {"size_mb<=100": 50.0}  # > 0: infeasible for the sampler
    assert trials[3].constraints == {"size_mb<=100": -60.0}
    assert trials[1].constraints == {}  # never reported: unknown, left unset
    assert searcher.suggest("e")  # TPE goes on proposing


def test_single_objective_searcher_is_ray_s_own_unless_constrained():
    from ray.tune.search.optuna import OptunaSearch

    from search_spaces.finetune import finetune_space
    from tuning.sweep.search import ObjectivesSearch, build_searcher

    space = finetune_space(model="m", max_length=64, epochs=2, seed=0, precision="fp32")
    plain = build_searcher(space, kind="tpe", seed=0, metric=["best_val_accuracy"], mode=["max"],
                           num_trials=6, presets=[])
    assert type(plain) is OptunaSearch and plain.metric == "best_val_accuracy"
    constrained = build_searcher(space, kind="random", seed=0, metric="best_val_accuracy", mode="max",
                                 num_trials=6, presets=[], constraints=[Constraint.parse("latency_ms_p50<=5")])
    assert isinstance(constrained, ObjectivesSearch)
    constrained.suggest("a")
    constrained.on_trial_complete("a", {"best_val_accuracy": 0.9, "latency_ms_p50": 7.0})
    (trial,) = constrained._ot_study.get_trials()
    assert trial.value == 0.9 and trial.constraints == {"latency_ms_p50<=5": 2.0}


# --------------------------------------------------------------------------- the report's figure


def test_pareto_figure(mlflow_uri, tmp_path):
    from tuning.report import load_trials, pick_best, plot_pareto

    _sweep(mlflow_uri, tmp_path, objectives=ACC_LAT, constraints=("size_mb<=100",))
    trials = load_trials(mlflow_uri, "mo")
    goal = sweep_goal("mo", tracking_uri=mlflow_uri)
    best = pick_best(trials, "mo", mlflow_uri, str(tmp_path))
    path = plot_pareto(trials, goal, [r.trial_id for r in front("mo", tracking_uri=mlflow_uri)],
                       best.trial_id, tmp_path / "pareto.png")
    assert path.is_file() and path.stat().st_size > 10_000


# --------------------------------------------------------------------------- end to end


@pytest.mark.slow
def test_two_objective_sweep_front_matches_mlflow(ray_local, tiny_model_dir, tmp_path, capsys):
    from tuning.cli import main
    from tuning.report import build_report
    from tuning.sweep.runner import run_sweep

    # a constraint every trial meets: the sampler is told it, and the front stays the same
    cfg = SweepConfig(name="mo-e2e", model=tiny_model_dir, max_length=64, epochs=1, num_trials=3,
                      storage=str(tmp_path), objectives=ACC_LAT, constraints=("size_mb<=1000",),
                      max_concurrent=2, seed=2)
    outcome = run_sweep(cfg)
    assert outcome.counts["FINISHED"] == 3
    saved = load_saved_sweep("mo-e2e", str(tmp_path))  # what resume rebuilds
    assert (saved.objectives, saved.constraints) == (ACC_LAT, ("size_mb<=1000",))
    # the Optuna study Ray saved with the sweep: two objectives and the constraint, every trial told
    import pickle

    study = pickle.loads(max(cfg.sweep_dir.glob("searcher-state-*.pkl")).read_bytes())["_ot_study"]
    assert [d.name for d in study.directions] == ["MAXIMIZE", "MINIMIZE"]
    told = study.get_trials()
    assert [t.state.name for t in told] == ["COMPLETE"] * 3
    assert all(len(t.values) == 2 and t.constraints["size_mb<=1000"] < 0 for t in told)
    capsys.readouterr()
    assert main(["best", "mo-e2e", "--front", "--format", "json", "--storage", str(tmp_path)]) == 0
    rows = json.loads(capsys.readouterr().out)
    # the front, recomputed here from the MLflow runs themselves
    client = MlflowClient(cfg.resolved_tracking_uri())
    experiment = client.get_experiment_by_name("mo-e2e")
    runs = [r for r in client.search_runs([experiment.experiment_id])
            if r.data.tags.get(tracking.KIND) == "trial"]
    assert len(runs) == 3
    points = {r.data.tags[tracking.TRIAL_ID]: (r.data.metrics["best_val_accuracy"],
                                               r.data.metrics["latency_ms_p50"]) for r in runs}
    expected = {t for t, p in points.items()
                if not any(dominates(q, p, ["max", "min"]) for u, q in points.items() if u != t)}
    assert {row["trial_id"] for row in rows} == expected
    for row in rows:
        assert (row["val_accuracy"], row["latency_ms_p50"]) == pytest.approx(points[row["trial_id"]])
        assert row["size_mb"] <= 1000
    assert rows[0]["val_accuracy"] == max(row["val_accuracy"] for row in rows)
    assert outcome.best.trial_id == rows[0]["trial_id"]  # the sweep's recorded best is the front's first
    report = build_report("mo-e2e", storage=str(tmp_path), log_to_mlflow=False)
    assert "pareto" in report.figures and report.figures["pareto"].is_file()
