"""`tunebert report` of a multitask (joint intent + slot) sweep: ranked by the sweep's own metric,
learning curves one panel per task, the best trial's intent and slot confusion and its F1 per slot
type on the validation split; and the sweep's metric (not val_accuracy) for every family."""

import pytest
from PIL import Image

from trainables import task_data
from trainables.data import DataConfig
from trainables.spans import TypeScores
from tuning.config import SweepConfig
from tuning.report import MULTITASK_FIGURES, build_report
from tuning.report.data import TrialRecord, curve_metrics
from tuning.report.figures import plot_slot_confusion
from tuning.report.page import render_html
from tuning.report.study import build_study, completed
from tuning.report.tagging import (OTHER_TYPES, SlotConfusion, frequent_types, slot_confusion_counts,
                                   slot_type)
from tuning.sweep.runner import run_sweep
from tuning.tracking.best import best_run


def _trial(number, metric, metrics, trainable="finetune"):
    return TrialRecord(run_id=f"run{number}", trial_id=f"t{number}", status="FINISHED",
                       end_reason="completed", config={"trainable": trainable, "lr": 1e-5 * (number + 1)},
                       metrics=metrics, start_ms=number, end_ms=number + 1, metric=metric)


# --------------------------------------------------------------------------- pure parts


def test_slot_types_merge_b_and_i():
    assert [slot_type(t) for t in ("B-time", "I-time", "O", "B-party_size_number")] == \
        ["time", "time", "O", "party_size_number"]


def test_the_slot_confusion_counts_every_gold_word_once_at_its_types():
    gold = [["B-time", "I-time", "O", "B-city"], ["I-time", "O", "B-food"]]
    predicted = [["B-time", "B-city", "O", "O"], ["B-time", "B-food", "B-city"]]
    counts, names = slot_confusion_counts(gold, predicted, shown=["time", "city"])
    assert names == ["time", "city", "O", OTHER_TYPES]
    # rows gold, columns predicted; by hand: time->time twice (B-/I- merged, the boundary error
    # on I-time/B-time too), time->city once, O->O once, O->food (other) once, city->O once,
    # food (other)->city once
    assert counts.tolist() == [[2, 1, 0, 0],
                               [0, 0, 1, 0],
                               [0, 0, 1, 1],
                               [0, 1, 0, 0]]
    assert counts.sum() == sum(len(tags) for tags in gold)


def test_the_other_types_row_is_left_out_when_no_word_falls_there():
    counts, names = slot_confusion_counts([["B-time", "O"]], [["I-time", "O"]], shown=["time"])
    assert names == ["time", "O"] and counts.tolist() == [[1, 0], [0, 1]]
    with pytest.raises(ValueError, match="2 gold tags but 1 predicted"):
        slot_confusion_counts([["B-time", "O"]], [["O"]], shown=["time"])


def test_frequent_types_rank_by_gold_spans_then_name_and_skip_types_never_in_gold():
    scores = {kind: TypeScores(0.5, 0.5, 0.5, support) for kind, support in
              [("city", 3), ("time", 5), ("artist", 3), ("ghost", 0), ("year", 1)]}
    assert frequent_types(scores, k=3) == ["time", "artist", "city"]
    assert frequent_types(scores) == ["time", "artist", "city", "year"]


def test_the_curves_show_each_task_of_a_multitask_sweep_and_the_sweeps_metric_otherwise():
    joint = {"val_intent_accuracy": 0.9, "val_slot_f1": 0.8, "val_sentence_accuracy": 0.7,
             "val_task_mean": 0.85, "val_loss": 1.0}
    two = {k: v for k, v in joint.items() if k != "val_sentence_accuracy"}
    assert curve_metrics([_trial(0, "val_sentence_accuracy", joint, "multitask")]) == \
        ("val_intent_accuracy", "val_slot_f1", "val_sentence_accuracy", "val_loss")
    assert curve_metrics([_trial(0, "val_task_mean", two, "multitask")]) == \
        ("val_intent_accuracy", "val_slot_f1", "val_task_mean", "val_loss")
    assert curve_metrics([_trial(0, "val_macro_f1", joint, "multitask")])[0] == "val_macro_f1"
    assert curve_metrics([_trial(0, "val_accuracy", {})]) == ("val_accuracy", "val_loss")
    assert curve_metrics([_trial(0, "val_loss", {})]) == ("val_loss", "val_accuracy")


def test_a_sweep_ranked_by_val_loss_scores_its_trials_by_their_best_epoch_loss():
    trials = [_trial(i, "val_loss", {"val_loss": 9.0, "best_val_loss": loss, "val_accuracy": acc,
                                     "best_val_accuracy": acc})
              for i, (loss, acc) in enumerate([(0.9, 0.8), (0.4, 0.6), (0.7, 0.9)])]
    assert [t.value for t in trials] == [0.9, 0.4, 0.7]  # best_val_loss, not val_accuracy
    study = build_study(trials, {"lr": "numeric"}, set(), mode="min")
    assert study.best_trial.number == 1 and len(completed(study)) == 3
    page = render_html("loss", store="sqlite:///x", parent_run_id=None, trials=trials, best=trials[1],
                       kinds={"lr": "numeric"}, wall_s=None, figures={}, notes={}, confusion=None)
    assert "<td>best val_loss</td><td>0.4000</td>" in page


def _slots():
    per_type = {"time": TypeScores(1.0, 0.5, 2 / 3, 2), "city": TypeScores(0.0, 0.0, 0.0, 1),
                "food": TypeScores(0.0, 0.0, 0.0, 0)}
    counts, names = slot_confusion_counts([["B-time", "I-time", "O", "B-city"], ["B-time", "O"]],
                                          [["B-time", "O", "O", "B-food"], ["B-time", "O"]],
                                          frequent_types(per_type, k=1))
    return SlotConfusion("t0", counts, names, per_type, 0.5, 2)


def test_the_page_shows_the_slot_f1_of_every_type_most_spans_first(tmp_path):
    slots = _slots()
    best = _trial(0, "val_sentence_accuracy", {"best_val_sentence_accuracy": 0.5,
                                               "best_val_slot_f1": 0.5}, "multitask")
    figures = {"slot_confusion": plot_slot_confusion(slots, tmp_path / "slot_confusion.png")}
    with Image.open(figures["slot_confusion"]) as image:
        assert min(image.size) > 300
    page = render_html("j", store="sqlite:///x", parent_run_id=None, trials=[best], best=best,
                       kinds={}, wall_s=None, figures=figures, notes={}, confusion=None, slots=slots)
    assert "<td>best val_sentence_accuracy</td><td>0.5000</td>" in page
    assert "Slot confusion matrix (validation split)" in page
    assert "on 2 tagged validation examples (6 words): 0.5000; the trial logged 0.5000" in page
    table = page[page.index("F1 per slot type (3 types"):]
    assert table.index("<td>time</td><td>2</td><td>1.000</td><td>0.500</td><td>0.667</td>") \
        < table.index("<td>city</td><td>1</td>") < table.index("<td>food</td><td>0</td>")


# --------------------------------------------------------------------------- a real sweep


def _validation(snips_slice):
    """(labelled examples, words that carry a gold tag) of the validation split, read apart from
    the report."""
    val = task_data.load_raw(DataConfig(str(snips_slice)), task_data.MULTITASK)["validation"]
    return (sum(label is not None for label in val.labels),
            sum(len(tags) for tags in val.tags if tags is not None))


@pytest.mark.slow
def test_report_of_a_multitask_sweep(ray_local, tiny_model_dir, snips_slice, tmp_path):
    cfg = SweepConfig(name="jrep", trainable="multitask", data=DataConfig(str(snips_slice)),
                      model=tiny_model_dir, max_length=48, epochs=2, num_trials=3,
                      storage=str(tmp_path), scheduler="none", warm_start=("joint-hand",),
                      max_concurrent=2, seed=0)
    run_sweep(cfg)

    report = build_report("jrep", storage=str(tmp_path))

    # ranked by the sweep's own metric, as `tunebert best` ranks
    best = best_run("jrep", storage=str(tmp_path))
    leader = next(t for t in report.trials if t.trial_id == best.trial_id)
    assert all(t.metric == "val_sentence_accuracy" for t in report.trials)
    assert leader.value == best.metrics["best_val_sentence_accuracy"]
    page = report.html.read_text(encoding="utf-8")
    assert f"<td>best val_sentence_accuracy</td><td>{leader.value:.4f}</td>" in page
    assert "finite val_accuracy" not in page and "importances for val_accuracy" not in page

    # every figure, the multitask ones too; curves one panel per task
    assert {"history", "curves", "confusion", "slot_confusion"} <= set(report.figures), report.notes
    assert set(MULTITASK_FIGURES) <= set(report.figures)
    for png in report.figures.values():
        with Image.open(png) as image:
            image.verify()
    assert ("One panel per task: val_intent_accuracy, val_slot_f1, val_sentence_accuracy and "
            "val_loss per epoch") in page

    # the intent confusion of the best trial's checkpoint, on validation (not the text path)
    assert report.confusion.trial_id == best.trial_id
    assert report.confusion.accuracy == pytest.approx(best.metrics["best_val_intent_accuracy"], abs=1e-6)
    labelled, tagged_words = _validation(snips_slice)
    assert report.confusion.total == labelled

    # the slot confusion: every tagged validation word once; the re-evaluated F1 is the trial's
    slots = report.slots
    assert slots.total == tagged_words and slots.counts.shape[0] == len(slots.names)
    assert slots.types_shown == 12 and slots.names[12] == "O"
    assert slots.f1 == pytest.approx(best.metrics["best_val_slot_f1"], abs=1e-6)
    for kind, scores in slots.per_type.items():
        assert f"<td>{kind}</td><td>{scores.support}</td>" in page
    assert "most confused pairs" in page and "F1 per slot type" in page
