"""What a finished ``tunebert tune`` hands over and says: the summary kept in its state, logged to
the sweep's parent MLflow run, and printed as Markdown."""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any, Optional

import tuning.families as families
from tuning.credentials import redact
from tuning.results.budget import clock
from tuning.results.pipeline_state import PIPELINE_FILE, Pipeline
from tuning.results.selection_result import or_dash

log = logging.getLogger(__name__)


MULTITASK_TEST_KEYS = ("test_intent_accuracy", "test_slot_f1", "test_sentence_accuracy")


def result_summary(result, metric: str) -> dict[str, Any]:
    """What the pipeline hands over, from a ``selection.SelectionResult``."""
    kind = result.handed_over
    val = result.ensemble_val if kind == "ensemble" else result.single_val
    handed = [o for o in result.handover_options if o["handed_over"]]
    if handed:
        val = handed[0]["val"]
    return {"handed_over": kind,
            "candidates": [{k: o[k] for k in ("kind", "label", "val", "latency_ms", "size_mb",
                                              "members", "handed_over")}
                           for o in result.handover_options],
            "rule": result.handover_rule, "model_dir": str(result.model_dir), "metric": metric,
            "val": None if val is None else float(val),
            "single_val": None if result.single_val is None else float(result.single_val),
            "ensemble_val": None if result.ensemble_val is None else float(result.ensemble_val),
            "test_accuracy": float(result.handed_over_test["test_accuracy"]),
            "test_macro_f1": float(result.handed_over_test["test_macro_f1"]),
            # the chosen config's seed models one by one (mean ± std): what one training gives
            "config_test_accuracy_mean": float(result.test_accuracy_mean),
            "config_test_accuracy_std": float(result.test_accuracy_std),
            "config": result.chosen.config, "trial_id": result.chosen.trial_id,
            "rank": result.chosen.rank, "seeds": list(result.chosen.seeds),
            "selection_run_id": result.run_id,
            # a multitask model's intent, slot and sentence scores: the handed-over model's, and
            # the chosen config's seed models' mean ± std
            **{key: float(value) for key, value in result.handed_over_test.items()
               if key in MULTITASK_TEST_KEYS},
            **{f"config_{key}_{stat}": float(value) for key, pair in result.test_summary.items()
               if key in MULTITASK_TEST_KEYS for stat, value in zip(("mean", "std"), pair)}}


def log_summary(pipeline: Pipeline, uri: str, parent_run_id: Optional[str]) -> None:
    """The pipeline's summary on the sweep's parent run: metrics, tags and PIPELINE_FILE."""
    import tuning.tracking as tracking  # local: keeps mlflow and ray off --help

    if parent_run_id is None:
        return
    state, result = pipeline.state, pipeline.state.result
    metric = result["metric"]
    metrics = {"pipeline.budget_s": pipeline.config.budget_s, "pipeline.plan_s": state.plan_s,
               "pipeline.sweep_planned_s": state.sweep_planned_s,
               "pipeline.sweep_actual_s": state.sweep_actual_s,
               "pipeline.select_reserved_s": state.select_reserved_s,
               "pipeline.select_planned_s": state.select_planned_s,
               "pipeline.select_actual_s": state.select_actual_s, "pipeline.total_s": state.total_s,
               "pipeline.top_k": state.top_k, "pipeline.seeds": state.seeds,
               "pipeline.test_accuracy": result["test_accuracy"],
               "pipeline.test_macro_f1": result["test_macro_f1"]}
    if result["val"] is not None:
        metrics[f"pipeline.{metric}"] = result["val"]
    tags = {"tunebert.pipeline.phase": "done", "tunebert.pipeline.handed_over": result["handed_over"],
            "tunebert.pipeline.model_dir": result["model_dir"],
            "tunebert.pipeline.best_config": json.dumps(result["config"], sort_keys=True),
            "tunebert.pipeline.selection_run_id": result["selection_run_id"],
            "tunebert.pipeline.predict": predict_command(result["model_dir"]),
            "tunebert.pipeline.notes": "\n".join(state.notes) or "none"}
    tracking.annotate_run(uri, parent_run_id, metrics=metrics, tags=tags)
    with tempfile.TemporaryDirectory() as folder:
        shutil.copy(pipeline.path, Path(folder) / PIPELINE_FILE)
        (Path(folder) / "pipeline.md").write_text(render_summary(pipeline))
        tracking.log_artifacts_to(uri, parent_run_id, folder, "pipeline")


def predict_command(model_dir: str) -> str:
    """How to use the handed-over model (``tuning.serve.predict``)."""
    import shlex

    return f"tunebert predict {shlex.quote(str(model_dir))} \"text to classify\""


def render_summary(pipeline: Pipeline) -> str:
    """The finished pipeline as Markdown: phases (planned vs actual), the handed-over model, its
    scores and config, and how to use it."""
    import yaml

    state, config, result = pipeline.state, pipeline.config, pipeline.state.result
    metric = result["metric"]
    val = "n/a" if result["val"] is None else f"{result['val']:.4f}"
    lines = [f"# `tunebert tune` {pipeline.sweep.name}", "",
             f"Budget {clock(config.budget_s)}, used {clock(state.total_s)}; split planned "
             f"from {state.basis}.", "",
             "| phase | planned | actual |", "|---|---:|---:|",
             f"| plan (checks, speed) | — | {clock(state.plan_s)} |",
             f"| sweep | {clock(state.sweep_planned_s)} | {clock(state.sweep_actual_s)} |",
             f"| selection + test (top {state.top_k} x {state.seeds} seeds) | "
             f"{clock(state.select_planned_s)} (reserved before the sweep: "
             f"{clock(state.select_reserved_s)}) | {clock(state.select_actual_s)} |",
             f"| total | {clock(config.budget_s)} | {clock(state.total_s)} |", ""]
    lines += [f"- note: {note}" for note in state.notes] + ([""] if state.notes else [])
    scores = [f"{name} {result[key]:.4f}" for name, key in (("best seed model", "single_val"),
                                                             ("ensemble", "ensemble_val"))
              if result[key] is not None]
    lines += [f"Handed over: **{result['handed_over']}** of trial {result['trial_id']} (rank "
              f"{result['rank']}, seeds {', '.join(map(str, result['seeds']))})", "",
              f"- model: `{result['model_dir']}`",
              f"- validation {metric}: **{val}**" + (f" ({'; '.join(scores)})" if scores else ""),
              f"- test accuracy: **{result['test_accuracy']:.4f}**, test macro-F1 "
              f"{result['test_macro_f1']:.4f} (read once, after the choice)",
              *([f"- the chosen config's seed models one by one: test accuracy "
                 f"{result['config_test_accuracy_mean']:.4f} ± {result['config_test_accuracy_std']:.4f}"]
                if result.get("config_test_accuracy_mean") is not None else []),
              f"- use it: `{predict_command(result['model_dir'])}`", "",
              *_candidates_lines(result, metric),
              *_families_lines(result, metric),
              "Config:", "", "```yaml", yaml.safe_dump(result["config"], sort_keys=True).rstrip(),
              "```", ""]
    return "\n".join(lines)


def _candidates_lines(result: dict[str, Any], metric: str) -> list[str]:
    """The hand-over candidates (accuracy, latency, size) when there were more than two."""
    options = result.get("candidates") or []
    if len(options) <= 2:
        return []

    lines = [f"Hand-over candidates (validation; rule: {result.get('rule', 'most accurate')}):", "",
             f"| candidate | {metric} | latency ms | size MB | handed over |",
             "|---|---:|---:|---:|---|"]
    lines += [f"| {o['label']} | {or_dash(o['val'], 4)} | {or_dash(o['latency_ms'])} | "
              f"{or_dash(o['size_mb'])} | {'**yes**' if o['handed_over'] else ''} |" for o in options]
    return lines + [""]


def _families_lines(result: dict[str, Any], metric: str) -> list[str]:
    """The sweep's model families side by side, when it tried more than one."""
    rows = result.get("families") or []
    if len(rows) < 2:
        return []
    return ["Model families (each one's best sweep trial, validation):", "",
            *families.markdown(rows, metric), ""]


def print_summary(pipeline: Pipeline) -> None:
    print()
    print(render_summary(pipeline), flush=True)
    sweep = pipeline.sweep
    log.info(f"tune: MLflow: {redact(sweep.resolved_tracking_uri())} (experiment {sweep.name!r}; the sweep's "
        f"parent run holds the summary under pipeline/)")
