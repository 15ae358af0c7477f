"""What each model family of a sweep achieved (fine-tuned encoder, contrastive, TF-IDF + linear,
BiLSTM, ...): its best trial's validation score, perturbed validation accuracy, training time,
latency and size, so users see what the encoder buys. Pure functions of the trials' MLflow
records; the report and ``tunebert tune``'s summary render them."""

from __future__ import annotations

import math
from typing import Any, Optional, Sequence

from trainables.hparams import ALL_FAMILIES

# the families in the order the table lists them (the registry's; others after, by name)
ORDER = ALL_FAMILIES
NAMES = {"finetune": "fine-tuned encoder", "contrastive": "contrastive encoder",
         "multitask": "multi-task encoder", "tfidf": "TF-IDF + linear", "bilstm": "BiLSTM + attention"}


def _best_of(metrics: dict[str, float], name: str) -> float:
    value = metrics.get(f"best_{name}", metrics.get(name, math.nan))
    return float(value) if value is not None else math.nan


def family_rows(trials: Sequence[Any], metric: str, mode: str = "max") -> list[dict[str, Any]]:
    """One row per family among the scored ``trials`` (``tuning.report.data.TrialRecord``s):
    its best trial by ``metric`` and that trial's perturbed accuracy, wall time (seconds from its
    start to its end: training with its evaluations), batch-1 latency and size."""
    best: dict[str, Any] = {}
    counts: dict[str, int] = {}
    for trial in trials:
        family = str(trial.config.get("trainable", "?"))
        counts[family] = counts.get(family, 0) + 1
        if not trial.scored:
            continue
        held = best.get(family)
        if held is None or (trial.value > held.value if mode == "max" else trial.value < held.value):
            best[family] = trial
    rank = {f: i for i, f in enumerate(ORDER)}
    rows = []
    for family in sorted(best, key=lambda f: (rank.get(f, len(ORDER)), f)):
        trial = best[family]
        seconds: Optional[float] = (trial.end_ms - trial.start_ms) / 1000.0 if trial.end_ms else None
        rows.append({"family": family, "name": NAMES.get(family, family), "trials": counts[family],
                     "trial_id": trial.trial_id, "value": trial.value,
                     "perturbed": _best_of(trial.metrics, "val_accuracy_perturbed"),
                     "train_s": seconds,
                     "latency_ms": float(trial.metrics.get("latency_ms_p50", math.nan)),
                     "size_mb": float(trial.metrics.get("size_mb", math.nan))})
    return rows


def _num(value: Optional[float], fmt: str) -> str:
    return format(value, fmt) if value is not None and math.isfinite(value) else "—"


def _duration(seconds: Optional[float]) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "—"
    minutes, rest = divmod(int(round(seconds)), 60)
    return f"{minutes}m{rest:02d}s" if minutes else f"{rest}s"


HEADER = ["family", "trials", "best trial", "{metric}", "perturbed accuracy", "trial time",
          "latency ms (batch 1)", "size MB"]


def table_cells(rows: list[dict[str, Any]], metric: str) -> tuple[list[str], list[list[str]]]:
    """(header, rows of cells) for Markdown and HTML alike."""
    header = [h.format(metric=metric) for h in HEADER]
    cells = [[r["name"], str(r["trials"]), r["trial_id"], _num(r["value"], ".4f"),
              _num(r["perturbed"], ".4f"), _duration(r["train_s"]), _num(r["latency_ms"], ".1f"),
              _num(r["size_mb"], ".1f")] for r in rows]
    return header, cells


def markdown(rows: list[dict[str, Any]], metric: str) -> list[str]:
    header, cells = table_cells(rows, metric)
    return (["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
            + ["| " + " | ".join(c) + " |" for c in cells])
