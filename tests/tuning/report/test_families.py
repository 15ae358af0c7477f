"""The model-family table (``tuning.report.families``): each family's best trial with its perturbed
accuracy, time, latency and size; in the HTML report and in `tunebert tune`'s summary."""

import math

from tuning.report.data import TrialRecord
from tuning.families import family_rows, markdown
from tuning.report.page import render_html
from tuning.results.pipeline_summary import _families_lines


def _trial(trial_id, family, value, *, status="FINISHED", **metrics):
    return TrialRecord(run_id=f"run-{trial_id}", trial_id=trial_id, status=status,
                       end_reason="completed", config={"trainable": family},
                       metrics={"best_val_accuracy": value, **metrics}, start_ms=0,
                       end_ms=90_000 if status == "FINISHED" else None)


TRIALS = [
    _trial("a1", "finetune", 0.88, best_val_accuracy_perturbed=0.52, latency_ms_p50=9.5,
           size_mb=90.9),
    _trial("a2", "finetune", 0.89, best_val_accuracy_perturbed=0.55, latency_ms_p50=9.8,
           size_mb=90.9),
    _trial("b1", "tfidf", 0.84, best_val_accuracy_perturbed=0.61, latency_ms_p50=0.4, size_mb=12.0),
    _trial("c1", "bilstm", 0.80, latency_ms_p50=1.2, size_mb=5.5),
    _trial("c2", "bilstm", math.nan, status="FAILED"),
]


def test_one_row_per_family_with_its_best_trial():
    rows = family_rows(TRIALS, "val_accuracy")
    assert [r["family"] for r in rows] == ["finetune", "tfidf", "bilstm"]  # the registry's order
    assert [r["trial_id"] for r in rows] == ["a2", "b1", "c1"]
    assert [r["trials"] for r in rows] == [2, 1, 2]  # the failed BiLSTM trial counts as tried
    assert rows[0]["perturbed"] == 0.55 and rows[1]["latency_ms"] == 0.4
    assert math.isnan(rows[2]["perturbed"]) and rows[2]["train_s"] == 90.0
    # a metric to minimise picks the lowest
    lowest = family_rows(TRIALS, "val_accuracy", mode="min")
    assert lowest[0]["trial_id"] == "a1"


def test_markdown_and_html_show_the_table():
    rows = family_rows(TRIALS, "val_accuracy")
    lines = markdown(rows, "val_accuracy")
    assert lines[0].startswith("| family | trials | best trial | val_accuracy | perturbed accuracy")
    assert "| fine-tuned encoder | 2 | a2 | 0.8900 | 0.5500 | 1m30s | 9.8 | 90.9 |" in lines
    assert "| BiLSTM + attention | 2 | c1 | 0.8000 | — | 1m30s | 1.2 | 5.5 |" in lines
    page = render_html("s", store="sqlite:///x", parent_run_id=None, trials=TRIALS, best=TRIALS[1],
                       kinds={}, wall_s=None, figures={}, notes={}, confusion=None)
    assert "<h2>Model families</h2>" in page and "TF-IDF + linear" in page
    # the tune summary lists them when the sweep tried two families or more
    summary_rows = [{k: (None if isinstance(v, float) and math.isnan(v) else v)
                     for k, v in r.items()} for r in rows]
    shown = _families_lines({"families": summary_rows}, "val_accuracy")
    assert "| TF-IDF + linear | 1 | b1 | 0.8400 | 0.6100 | 1m30s | 0.4 | 12.0 |" in shown
    assert _families_lines({"families": summary_rows[:1]}, "val_accuracy") == []
