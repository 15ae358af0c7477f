"""The report's HTML page: a summary table, the best trial, the failed trials and one section per
figure (or a note saying why it is missing).

Figures are linked by relative path and also embedded as data URIs, so the page works on its own
when downloaded from MLflow. Everything shown is escaped.
"""

from __future__ import annotations

import base64
import html
import time
from pathlib import Path
from typing import Any, Optional

import tuning.families as families
from tuning.report.checkpoint import Confusion, most_confused
from tuning.report.data import METRIC, TOP_CURVES, TrialRecord, curve_metrics, is_multitask
from tuning.report.tagging import SlotConfusion
from tuning.tracking.best import score_key

# (figure key, section title, caption), in page order; a caption's {metric} is the metric the
# sweep ranks by, {curves} the metrics of the learning curves
SECTIONS = [
    ("history", "Optimization history",
     "Best-epoch {metric} of every finished and failed trial, numbered in the order they started; "
     "the line is the best finished trial so far."),
    ("importance", "Parameter importances",
     "fANOVA importances for {metric} of the varying parameters every finished trial used, "
     "from the finished trials."),
    ("parallel", "Parallel coordinates",
     "Each line is a finished trial; colour (and the first axis) is its best-epoch {metric}; "
     "a trial that did not use a parameter sits at 'None' on its axis."),
    ("curves", "Learning curves",
     "{curves} per epoch of the top " + str(TOP_CURVES) + " finished trials (ranked by best-epoch "
     "{metric})."),
    ("pareto", "Pareto front",
     "Each point is a finished trial that reported both objectives; the joined blue points are "
     "the feasible trials no other trial beats on both (tunebert best --front), the star the one "
     "tunebert best hands back."),
    ("confusion", "Confusion matrix (validation split)",
     "The best trial's checkpoint re-evaluated on the validation split; each row is normalised by "
     "the number of examples of its true class."),
    ("slot_confusion", "Slot confusion matrix (validation split)",
     "The best trial's slot tags on the validation split, one count per word that carries a gold "
     "tag: rows the gold slot type, columns the type predicted at the word's first piece (B- and "
     "I- merged, so a boundary error stays on the diagonal); each row is normalised by its words."),
]
MULTITASK_CURVES_LEAD = "One panel per task: "

STYLE = ("body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;"
         "color:#222}table{border-collapse:collapse;margin:.5em 0 1em}td,th{border:1px solid #ccc;"
         "padding:.25em .6em;text-align:left;font-size:.9em}th{background:#f3f3f3}"
         "img{max-width:100%;height:auto;border:1px solid #eee}figure{margin:0 0 1.5em}"
         "figcaption{font-size:.85em;color:#555}.note{background:#fff6db;padding:.5em .8em;"
         "border-left:4px solid #e0b000}.meta{color:#666;font-size:.85em}")


def _cell(value: Any) -> str:
    text = f"{value:.4g}" if isinstance(value, float) else str(value)
    return html.escape(text)


def _table(header: Optional[list[str]], rows: list[list[Any]]) -> str:
    """An HTML table; cells are escaped, floats shown with 4 significant digits."""
    head = ("<thead><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr></thead>"
            if header else "")
    body = "".join("<tr>" + "".join(f"<td>{_cell(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table>{head}<tbody>{body}</tbody></table>"


def _figure_html(path: Path, caption: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    name = html.escape(path.name)
    return (f'<figure><a href="{name}"><img src="data:image/png;base64,{data}" '
            f'alt="{html.escape(caption)}"></a><figcaption>{html.escape(caption)} '
            f'(<a href="{name}">{name}</a>)</figcaption></figure>')


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def summary_rows(trials: list[TrialRecord], best: Optional[TrialRecord],
                 wall_s: Optional[float]) -> list[list[Any]]:
    """The summary table's rows: trial counts by outcome, wall time, the best score and trial."""
    finished = [t for t in trials if t.status == "FINISHED"]
    early = sum(t.stopped_early for t in finished)
    rows = [["trials", len(trials)],
            ["finished", f"{len(finished)} ({len(finished) - early} ran all epochs, {early} stopped "
                         f"early by ASHA or the time budget)"]]
    for status in ("FAILED", "KILLED", "RUNNING"):
        count = sum(t.status == status for t in trials)
        if count or status != "RUNNING":
            rows.append([status.lower(), count])
    if wall_s is not None:
        rows.append(["wall time", _duration(wall_s)])
    if best is not None:
        rows += [[f"best {best.metric}", f"{best.value:.4f}"], ["best trial", best.label]]
    return rows


def config_rows(trial: TrialRecord, kinds: dict[str, str]) -> list[str]:
    """A trial's config as table rows: the parameters that varied in the sweep in bold, and a
    parameter the trial did not use (its config still holds a default) as "— (not used: ...)",
    never bold: it was not one of this trial's varied values."""
    inactive = trial.inactive
    rows = []
    for key, value in sorted(trial.config.items()):
        name = f"<b>{html.escape(key)}</b>" if key in kinds and key not in inactive else html.escape(key)
        shown = html.escape(f"— ({inactive[key]})") if key in inactive else _cell(value)
        rows.append(f"<tr><td>{name}</td><td>{shown}</td></tr>")
    return rows


def _best_trial(sweep: str, best: TrialRecord, kinds: dict[str, str]) -> list[str]:
    metrics = [[k, f"{v:.4f}"] for k, v in sorted(best.metrics.items())
               if k.startswith(("val_", "train_"))]
    return [f"<h2>Best trial: {html.escape(best.label)}</h2>",
            f"<p>MLflow run {html.escape(best.run_id)}. Metrics at its last epoch:</p>",
            _table(["metric", "value"], metrics),
            f"<p>Its config (<b>bold</b>: parameters that varied in this sweep; exact "
            f"values: <code>tunebert best {html.escape(sweep)}</code>):</p>",
            "<table><thead><tr><th>parameter</th><th>value</th></tr></thead><tbody>"
            + "".join(config_rows(best, kinds)) + "</tbody></table>"]


def _logged(best: Optional[TrialRecord], metric: str) -> str:
    """"; the trial logged 0.9123" (``metric`` at its best epoch), or "" when it has none."""
    value = best.metrics.get(score_key(metric, best.metrics)) if best is not None else None
    return f"; the trial logged {value:.4f}" if value is not None else ""


def _confusion_details(confusion: Confusion, best: Optional[TrialRecord]) -> list[str]:
    logged = _logged(best, "val_accuracy")
    pairs = most_confused(confusion)
    return [f"<p>Re-evaluated accuracy on {confusion.total} validation examples: "
            f"{confusion.accuracy:.4f}{logged}.</p>",
            f"<h3>The {len(pairs)} most confused pairs</h3>",
            _table(["true class", "predicted as", "examples", "share of the true class"],
                   [[t, p, c, f"{s:.1%}"] for t, p, c, s in pairs])
            if pairs else "<p>No validation example was misclassified.</p>"]


def _slot_details(slots: SlotConfusion, best: Optional[TrialRecord]) -> list[str]:
    """The re-evaluated slot F1 and the exact-span scores of every slot type, most spans first."""
    kinds = sorted(slots.per_type, key=lambda kind: (-slots.per_type[kind].support, kind))
    rows = [[kind, s.support, f"{s.precision:.3f}", f"{s.recall:.3f}", f"{s.f1:.3f}"]
            for kind in kinds for s in [slots.per_type[kind]]]
    return [f"<p>Re-evaluated slot F1 (exact spans, as conlleval counts them) on {slots.examples} "
            f"tagged validation examples ({slots.total} words): {slots.f1:.4f}"
            f"{_logged(best, 'val_slot_f1')}.</p>",
            f"<h3>F1 per slot type ({len(rows)} types, validation split)</h3>",
            _table(["slot type", "gold spans", "precision", "recall", "F1"], rows)
            if rows else "<p>No slot span in the validation split or its predictions.</p>"]


def _caption(caption: str, trials: list[TrialRecord], metric: str) -> str:
    keys = curve_metrics(trials)
    curves = ", ".join(keys[:-1]) + " and " + keys[-1] if len(keys) > 1 else "".join(keys)
    lead = MULTITASK_CURVES_LEAD if is_multitask(trials) and "{curves}" in caption else ""
    return lead + caption.format(metric=metric, curves=curves)


def render_html(sweep: str, *, store: str, parent_run_id: Optional[str], trials: list[TrialRecord],
                best: Optional[TrialRecord], kinds: dict[str, str], wall_s: Optional[float],
                figures: dict[str, Path], notes: dict[str, str], confusion: Optional[Confusion],
                slots: Optional[SlotConfusion] = None, mode: str = "max") -> str:
    """The whole page. ``store`` is the MLflow tracking URI as it may be shown (credentials
    redacted); ``figures`` and ``notes`` are keyed like ``SECTIONS``; ``slots`` is a multitask
    sweep's slot confusion."""
    metric = trials[0].metric if trials else METRIC
    details = {"confusion": _confusion_details(confusion, best) if confusion is not None else [],
               "slot_confusion": _slot_details(slots, best) if slots is not None else []}
    parts = [f"<h1>Sweep report: {html.escape(sweep)}</h1>",
             f"<p class=meta>Generated {time.strftime('%Y-%m-%d %H:%M:%S')} from MLflow "
             f"{html.escape(store)}, experiment {html.escape(sweep)}"
             + (f", parent run {html.escape(parent_run_id)}" if parent_run_id else "") + ".</p>",
             "<h2>Summary</h2>", _table(None, summary_rows(trials, best, wall_s))]
    if best is not None:
        parts += _best_trial(sweep, best, kinds)
    else:
        parts.append(f"<p class=note>No trial finished with a finite {metric}; there is no best trial.</p>")
    rows = families.family_rows(trials, metric, mode)
    if rows:
        header, cells = families.table_cells(rows, metric)
        parts += ["<h2>Model families</h2>",
                  "<p class=meta>The best trial of each family the sweep tried, on validation: "
                  "what the encoder buys over the cheap baselines (<code>--trainable any</code> "
                  "searches them all). Trial time is the trial's wall time, evaluations included; "
                  "latency is batch 1 on the CPU the trial ran on.</p>",
                  _table(header, cells)]
    failed = [t for t in trials if t.status == "FAILED"]
    if failed:
        parts += ["<h2>Failed trials</h2>",
                  _table(["trial", "error"], [[t.label, t.error or "unknown error"] for t in failed])]
    for key, title, caption in SECTIONS:
        if key not in notes and key not in figures:  # a figure that does not apply (Pareto, one objective)
            continue
        parts.append(f"<h2>{title}</h2>")
        if key in notes:
            parts.append(f"<p class=note>{html.escape(notes[key])}</p>")
        if key in figures:
            parts.append(_figure_html(figures[key], _caption(caption, trials, metric)))
        parts += details.get(key, [])
    return ("<!DOCTYPE html>\n<html lang=en><head><meta charset=utf-8>"
            f"<title>tunebert report: {html.escape(sweep)}</title><style>{STYLE}</style></head>"
            "<body>\n" + "\n".join(parts) + "\n</body></html>\n")
