"""A final selection with every hand-over candidate (best seed model, seed ensemble, cross-config
ensemble, distilled student), end to end on a tiny BERT: each scored on validation by the same
evaluation as its folder scores on its own, timed and weighed, the rule applied, the student a
normal model folder trained with its teacher, the test split read only for the one handed over."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from trainables.data import DataConfig
from tuning.cli import build_parser
from tuning.results.handover import HandoverRule, Option, pick
from tuning.results.selection import final_selection, run


@pytest.fixture(scope="module")
def sweep(tmp_path_factory, tiny_model_dir, ray_local_module):
    from tuning.config import SweepConfig
    from tuning.sweep.runner import run_sweep

    storage = tmp_path_factory.mktemp("candidates")
    (storage / "space.yaml").write_text("lr: {low: 3.0e-4, high: 3.0e-3, log: true}\n")
    cfg = SweepConfig(name="cands", model=tiny_model_dir, max_length=64, epochs=1, num_trials=2,
                      storage=str(storage), scheduler="none", max_concurrent=2, seed=5,
                      space_file=str(storage / "space.yaml"))
    run_sweep(cfg)
    return cfg


@pytest.mark.slow
def test_every_candidate_is_scored_on_validation_and_the_rule_picks_one(sweep, monkeypatch):
    import tuning.results.selection_run as selection_run
    from tuning.results.evaluation import evaluate_folders

    # score every candidate folder again, on its own, while it still exists (the work folder
    # goes when the selection ends), and record when the test split is first read
    seen: dict[str, float] = {}
    events: list[str] = []
    real_decide, real_test = selection_run.handovers.decide, selection_run.evaluate_on_test

    def decide(options, seed_scores, **kw):
        for o in options:
            seen[o.kind] = evaluate_folders([o.folder], DataConfig("demo"), chosen_config[0],
                                            "validation")[0]["val_accuracy"]
        events.append("decide")
        return real_decide(options, seed_scores, **kw)

    chosen_config = []
    real_mark = selection_run._mark_chosen

    def mark(*a, **k):
        out = real_mark(*a, **k)
        chosen_config.append(out[1].config)
        return out

    monkeypatch.setattr(selection_run.handovers, "decide", decide)
    monkeypatch.setattr(selection_run, "_mark_chosen", mark)
    monkeypatch.setattr(selection_run, "evaluate_on_test",
                        lambda *a, **k: events.append("test") or real_test(*a, **k))
    out = Path(sweep.storage) / "out"
    result = final_selection("cands", top_k=2, seeds=2, storage=sweep.storage, epochs=2,
                             ensemble=True, output_dir=str(out),
                             rule=HandoverRule(cross=True, distill=True, temperature=3.0,
                                               alpha=0.7))
    monkeypatch.undo()
    assert events == ["decide", "test"]  # test read once, after the choice

    options = [Option(**{"folder": "", **o}) for o in result.handover_options]
    assert [o.kind for o in options] == ["single", "ensemble", "cross", "student"]
    assert [o.members for o in options] == [1, 2, 2, 1]
    for o in options:  # the score the rule saw is the folder's own validation score
        assert o.val == pytest.approx(seen[o.kind], abs=1e-12)
        assert o.latency_ms > 0 and o.size_mb > 0
    assert options[1].size_mb > options[0].size_mb  # two models weigh more than one
    assert options[0].fair == pytest.approx(sum(
        evaluate_folders([f"{out}/seed-{s}" for s in result.chosen.seeds], DataConfig("demo"),
                         result.chosen.config, "validation")[i]["val_accuracy"]
        for i in range(2)) / 2)
    seed_scores = [o.fair for o in options[:1]] * 2  # the mean of two equals the mean
    expected = pick(options, seed_scores, mode="max")
    assert [o.handed_over for o in options] == [o.kind == expected.kind for o in options]
    assert result.handed_over == expected.kind

    # the handed-over folder is kept and predicts; its test score is logged once
    from tuning.serve.predict import load_model

    assert load_model(result.model_dir).predict(["wake me up at seven"])
    client = MlflowClient(sweep.resolved_tracking_uri())
    selection = client.get_run(result.run_id)
    metrics, params = selection.data.metrics, selection.data.params
    assert params["cross_config"] == "True" and params["distill"] == "True"
    assert params["distill_temperature"] == "3.0" and params["distill_alpha"] == "0.7"
    for o in options:
        assert metrics[f"handover_{o.kind}_val_accuracy"] == pytest.approx(o.val)
        assert metrics[f"handover_{o.kind}_latency_ms"] == pytest.approx(o.latency_ms)
    assert metrics["handed_over_test_accuracy"] == result.handed_over_test["test_accuracy"]

    # the student: its own MLflow run, trained with the better ensemble as teacher
    student = client.get_run(selection.data.tags["tunebert.student_run_id"])
    teacher = max(options[1:3], key=lambda o: o.val)
    assert student.data.tags["tunebert.selection.student"] == "true"
    assert student.data.tags["tunebert.selection.teacher"] == teacher.kind
    assert student.data.params["distill_temperature"] == "3.0"
    assert student.data.params["distill_alpha"] == "0.7"
    assert int(student.data.params["seed"]) == max(result.chosen.seeds) + 1
    assert student.info.status == "FINISHED"

    markdown = result.markdown()
    assert "| candidate | val_accuracy | latency ms | size MB | handed over |" in markdown
    assert markdown.count("**yes**") >= 2  # the chosen config and the handed-over candidate
    for o in options:
        assert f"| {o.label} | {o.val:.4f} |" in markdown


@pytest.mark.slow
def test_prefer_latency_hands_over_the_fastest_close_candidate_from_the_cli(sweep, capsys):
    parser = build_parser()
    args = parser.parse_args(["select", "cands", "--storage", sweep.storage, "--smoke-test",
                              "--ensemble", "--cross-config", "--distill", "--prefer", "latency",
                              "--within", "100", "--student-layers", "1"])
    assert run(args) == 0
    client = MlflowClient(sweep.resolved_tracking_uri())
    experiment = client.get_experiment_by_name("cands")
    (selection,) = [r for r in client.search_runs([experiment.experiment_id],
                                                 "tags.`tunebert.kind` = 'selection'")
                    if r.data.params.get("prefer") == "latency"]
    metrics = selection.data.metrics
    kinds = [k for k in ("single", "ensemble", "cross", "student")
             if f"handover_{k}_latency_ms" in metrics]
    assert set(kinds) == {"single", "ensemble", "cross", "student"}
    # the student keeps 1 of the tiny encoder's 2 layers: a smaller folder than the single model
    assert selection.data.params["student_layers"] == "1"
    assert metrics["handover_student_size_mb"] < metrics["handover_single_size_mb"]
    # within 100 points every finite candidate qualifies: the fastest one is handed over
    fastest = min(kinds, key=lambda k: metrics[f"handover_{k}_latency_ms"])
    assert selection.data.tags["tunebert.handed_over"] == fastest
    assert selection.data.tags["tunebert.handover_rule"] == \
        "fastest within 100 points of the most accurate"
    assert math.isfinite(metrics["handed_over_test_accuracy"])


def test_a_student_without_an_ensemble_is_refused_before_anything_runs(tmp_path):
    parser = build_parser()
    args = parser.parse_args(["select", "nothing", "--storage", str(tmp_path), "--distill",
                              "--metric", "val_accuracy"])
    with pytest.raises(Exception, match="learns from an ensemble: add --ensemble"):
        run(args)
    args = parser.parse_args(["select", "nothing", "--storage", str(tmp_path), "--ensemble",
                              "--distill", "--distill-alpha", "2", "--metric", "val_accuracy"])
    with pytest.raises(Exception, match="distill_alpha"):
        run(args)


def test_waves_that_fit():
    from tuning.results.fill import waves_that_fit

    assert waves_that_fit(100.0, 30.0) == 3
    assert waves_that_fit(29.0, 30.0) == 0
    assert waves_that_fit(-5.0, 30.0) == 0
    assert waves_that_fit(100.0, math.nan) == 0 and waves_that_fit(100.0, 0.0) == 0


@pytest.mark.slow
def test_the_time_left_trains_more_seeds_of_the_chosen_config_only(sweep):
    import time

    client = MlflowClient(sweep.resolved_tracking_uri())
    plenty = final_selection("cands", top_k=2, seeds=2, storage=sweep.storage, epochs=1,
                             ensemble=True, fill_until=time.time() + 3600, fill_reserve_s=0.0)
    # at most twice the seeds the configs were compared with, the others untouched
    assert len(plenty.chosen.seeds) == 4
    assert plenty.chosen.seeds[2:] == (max(plenty.chosen.seeds[:2]) + 1,
                                       max(plenty.chosen.seeds[:2]) + 2)
    assert all(len(c.seeds) == 2 for c in plenty.candidates if not c.chosen)
    assert len(plenty.test) == 4  # every seed model of the chosen config is tested
    ensemble = next(o for o in plenty.handover_options if o["kind"] == "ensemble")
    assert ensemble["members"] == 4
    assert client.get_run(plenty.run_id).data.metrics["extra_seeds"] == 2
    assert "2 more seed(s) of the chosen config" in plenty.markdown()
    # the time is up: nothing more
    none_left = final_selection("cands", top_k=2, seeds=2, storage=sweep.storage, epochs=1,
                                ensemble=True, fill_until=time.time(), fill_reserve_s=0.0)
    assert len(none_left.chosen.seeds) == 2
    assert "extra_seeds" not in client.get_run(none_left.run_id).data.metrics
