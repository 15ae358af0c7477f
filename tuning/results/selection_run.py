"""A final selection once its MLflow run is open: train the candidates, choose one, hand over a
model, then, and only then, read the test split; log it all and write the report.

Loaded only when a selection runs (``tuning.results.selection.final_selection``): it brings torch
and MLflow, which ``tunebert --help`` must not load."""

from __future__ import annotations

import json
import logging
import math
import shutil
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Optional

import yaml

import tuning.results.outputs as outputs
import tuning.tracking as tracking
from trainables import registry
from trainables.data import DataConfig
from tuning.results.candidates import Candidate, best_seed, choose, mean_std
from tuning.results.evaluation import evaluate_on_test
import tuning.results.fill as fill
import tuning.results.handover_build as handovers
import tuning.results.student as student
from tuning.results.handover import IN_OUTPUT_DIR, Handover, HandoverRule
from tuning.results.seed_training import best_seed_models, train_candidates
from tuning.results.selection_result import SelectionResult

log = logging.getLogger(__name__)

# the test scores summarised over the chosen config's seed models (mean, std, each seed's) and
# kept for the handed-over model, where the models have them: a text classifier's accuracy and
# macro-F1; a multitask model's also its intent accuracy, slot F1 and sentence accuracy
TEST_SUMMARY_KEYS = ("test_accuracy", "test_macro_f1", "test_intent_accuracy", "test_slot_f1",
                     "test_sentence_accuracy")


def _say(message: str) -> None:
    log.info(f"select: {message}")


def select(leaders, data: DataConfig, run, *, uri: str, sweep: str, seeds: int, metric: str,
           mode: str, epochs: Optional[int], max_train_examples: Optional[int], workdir: Path,
           output_dir: Optional[str], ensemble: bool = False, workers: int = 1,
           register_model: Optional[str] = None, fingerprint: Optional[str] = None,
           rule: HandoverRule = HandoverRule(), fill_until: Optional[float] = None,
           fill_reserve_s: float = 0.0) -> SelectionResult:
    """The selection's steps in order, on ``leaders`` (the sweep's top trials, best first), in the
    open selection ``run``; the models are trained in ``workdir``. ``rule``: which hand-over
    candidates besides the best seed model and the seed ensemble are built, and how one is
    chosen (``tuning.results.handover``). With ``fill_until`` (seconds since the epoch) the time
    left before it, less ``fill_reserve_s`` for the rest, trains more seeds of the chosen config
    (``tuning.results.fill``)."""
    # an epochs override trains the whole new schedule: the sweep's stop_epoch no longer applies
    configs = [{**trial.config, **({"epochs": epochs, "stop_epoch": None} if epochs else {})}
               for trial in leaders]
    started = time.time()
    candidates, leader = train_candidates(
        leaders, configs, data, run, uri=uri, sweep=sweep, seeds=seeds, metric=metric, mode=mode,
        max_train_examples=max_train_examples, workdir=workdir, workers=workers,
        keep_best=rule.cross)
    candidates, chosen = _mark_chosen(candidates, leader, run, uri=uri, metric=metric, mode=mode)
    if fill_until is not None:
        waves = math.ceil(len(leaders) * seeds / workers)
        chosen = fill.more_seeds(chosen, data, run, until=fill_until, reserve_s=fill_reserve_s,
                                 wave_s=(time.time() - started) / waves, workers=workers, uri=uri,
                                 sweep=sweep, metric=metric, workdir=workdir,
                                 max_train_examples=max_train_examples)
        candidates = [chosen if c.rank == chosen.rank else c for c in candidates]

    # the handed-over model, chosen on validation too
    checkpoints = [str(workdir / f"rank{chosen.rank}" / f"seed-{s}") for s in chosen.seeds]
    handover = _hand_over(candidates, chosen, checkpoints, data, run, uri=uri, sweep=sweep,
                          metric=metric, mode=mode, ensemble=ensemble, rule=rule, workdir=workdir,
                          max_train_examples=max_train_examples)
    _log_handover(run, handover, metric)

    # the test split: the chosen config's seed models, and the handed-over model once
    lineage = dict(sweep=sweep, trial_id=chosen.trial_id, data_fingerprint=fingerprint,
                   data=data.source)
    test_rows, handed_over_test = _test_chosen(chosen, checkpoints, handover, data, uri=uri,
                                               lineage=lineage, output_dir=output_dir)
    model_dir = _keep_handed_over(handover, run, uri=uri, output_dir=output_dir, ensemble=ensemble,
                                  register_model=register_model, lineage=lineage)
    if output_dir and rule.keep:
        _keep_candidates(handover, Path(output_dir) / "candidates")
    summary = test_summary(test_rows)
    acc_mean, acc_std = summary.get("test_accuracy", (math.nan, math.nan))
    f1_mean, f1_std = summary.get("test_macro_f1", (math.nan, math.nan))
    run.log_metrics({f"chosen_{metric}_mean": chosen.mean, f"chosen_{metric}_std": chosen.std,
                     **{f"{k}_mean": mean for k, (mean, _) in summary.items()},
                     **{f"{k}_std": std for k, (_, std) in summary.items()},
                     **{f"{k}_seed{r['seed']}": r[k] for k in summary for r in test_rows},
                     **{f"handed_over_{k}": v for k, v in handed_over_test.items()}})
    result = SelectionResult(sweep, metric, mode, run.run_id, uri, tuple(candidates), chosen,
                             tuple(test_rows), acc_mean, acc_std, f1_mean, f1_std,
                             str(Path(output_dir).resolve()) if output_dir else None,
                             handed_over=handover.kind, single_val=handover.single_val,
                             ensemble_val=handover.ensemble_val, handed_over_test=handed_over_test,
                             model_dir=str(model_dir.resolve()) if model_dir else None,
                             single_seed=handover.seed,
                             test_summary={k: list(v) for k, v in summary.items()},
                             handover_options=tuple(_option_summary(o) for o in handover.options),
                             handover_rule=handover.rule_text())
    _report(result, run, workdir / "report")
    return result


def test_summary(rows: list[dict]) -> dict[str, tuple[float, float]]:
    """(mean, std) over ``rows`` (one per seed model) of each ``TEST_SUMMARY_KEYS`` score that
    every row has."""
    keys = [k for k in TEST_SUMMARY_KEYS if rows and all(k in r for r in rows)]
    return {k: mean_std(r[k] for r in rows) for k in keys}


def _mark_chosen(candidates: list[Candidate], leader: Optional[Candidate], run, *, uri: str,
                 metric: str, mode: str) -> tuple[list[Candidate], Candidate]:
    """Choose among ``candidates`` and record the choice on the selection run and on every
    candidate's training runs; (the candidates with ``chosen`` set, the chosen one)."""
    chosen = choose(candidates, mode)
    if leader is not chosen:  # cannot happen: the running choice uses the same total order
        raise RuntimeError(f"internal error: kept rank {leader.rank if leader else None}'s models "
                           f"but chose rank {chosen.rank}")
    candidates = [replace(c, chosen=c is chosen) for c in candidates]
    chosen = next(c for c in candidates if c.chosen)
    for c in candidates:
        run.log_metrics({f"rank{c.rank}_chosen": float(c.chosen)})
        for run_id in c.run_ids:
            if run_id:
                tracking.annotate_run(uri, run_id,
                                      tags={"tunebert.selection.chosen": str(c.chosen).lower()})
    run.set_tags({"tunebert.chosen_rank": chosen.rank, "tunebert.chosen_trial_id": chosen.trial_id,
                  "tunebert.chosen_trial_run_id": chosen.trial_run_id,
                  "tunebert.config": json.dumps(chosen.config, sort_keys=True)})
    _say(f"chosen: rank {chosen.rank} trial {chosen.trial_id}, mean {metric} {chosen.mean:.4f} "
         f"± {chosen.std:.4f}")
    return candidates, chosen


def _hand_over(candidates: list[Candidate], chosen: Candidate, checkpoints: list[str],
               data: DataConfig, run, *, uri: str, sweep: str, metric: str, mode: str,
               ensemble: bool, rule: HandoverRule, workdir: Path,
               max_train_examples: Optional[int]) -> Handover:
    """Build the hand-over candidates the rule asks for, score them on validation, pick one."""
    options, seed_scores = handovers.seed_options(
        chosen, checkpoints, data, metric=metric, mode=mode, ensemble=ensemble,
        ensemble_dir=workdir / "ensemble", rescore=rule.cross or rule.distill)
    if rule.cross:
        cross = handovers.cross_option(chosen, best_seed_models(candidates, workdir, mode), data,
                                       metric=metric, folder=workdir / "cross")
        if cross is not None:  # else the log says why not
            options.append(cross)
    if rule.distill:
        why, teacher = student.can_distil(chosen.config), student.teacher_of(options, mode)
        if why is None and teacher is None:
            why = "no distilled student: there is no ensemble to learn from (needs --ensemble " \
                  "or a cross-config ensemble)"
        if why:
            _say(why)
        else:
            learned = student.train_student(
                chosen, teacher, data, run, uri=uri, sweep=sweep, metric=metric,
                folder=workdir / "student", temperature=rule.temperature, alpha=rule.alpha,
                layers=rule.student_layers,
                max_train_examples=max_train_examples)
            if learned is not None:
                options.append(learned)
    seed, _ = best_seed(chosen.seeds, seed_scores, mode)
    return handovers.decide(options, seed_scores, mode=mode, prefer=rule.prefer,
                            within=rule.within, seed=seed, timed=len(options) > 2)


def _log_handover(run, handover: Handover, metric: str) -> None:
    run.log_metrics({f"single_{metric}": handover.single_val,
                     **({f"ensemble_{metric}": handover.ensemble_val}
                        if handover.ensemble_val is not None else {})})
    for option in handover.options:
        values = {f"handover_{option.kind}_{metric}": option.val,
                  f"handover_{option.kind}_latency_ms": option.latency_ms,
                  f"handover_{option.kind}_size_mb": option.size_mb}
        run.log_metrics({k: v for k, v in values.items() if math.isfinite(v)})
    if len(handover.options) > 1:
        run.set_tags({"tunebert.handover_rule": handover.rule_text()})
    run.set_tags({"tunebert.handed_over": handover.kind,
                  "tunebert.handed_over_seed": handover.seed if handover.kind == "single" else ""})
    _say(f"handed over: {handover.describe(metric)}; now, and only for the chosen config, the test "
         f"split")


def _test_chosen(chosen: Candidate, checkpoints: list[str], handover: Handover, data: DataConfig,
                 *, uri: str, lineage: dict[str, Any],
                 output_dir: Optional[str]) -> tuple[list[dict], dict[str, float]]:
    """Evaluate the chosen config's seed models (and an ensemble handed over) on test, log each
    seed model with its test metrics to its run and keep it in ``output_dir``; (one row per seed,
    the handed-over model's ``TEST_SUMMARY_KEYS`` scores: test accuracy and macro-F1, and a
    multitask model's intent, slot and sentence scores)."""
    per_model = evaluate_on_test(checkpoints + ([handover.folder] if handover.kind != "single"
                                                else []), data, chosen.config)
    per_seed = per_model[:len(checkpoints)]
    test_rows = []
    chosen_cfg = registry.config_class(chosen.config["trainable"]).from_dict(chosen.config)
    step = getattr(chosen_cfg, "total_epochs", chosen_cfg.epochs)  # as train_config logs test
    for seed, run_id, metrics, directory in zip(chosen.seeds, chosen.run_ids, per_seed, checkpoints):
        tracking.annotate_run(uri, run_id, metrics=metrics, step=step)
        tracking.log_model(uri, run_id, directory, "model", lineage=tracking.lineage_tags(
            run_id=run_id, kind="single", **lineage))
        test_rows.append({"seed": seed, "run_id": run_id, **metrics})
        if output_dir:  # swapped in for an earlier selection's model (check_output_dir)
            with outputs.replacing(Path(output_dir) / f"seed-{seed}", IN_OUTPUT_DIR) as new:
                shutil.copytree(directory, new)
    handed_metrics = per_model[-1] if handover.kind != "single" else \
        next(r for r in test_rows if r["seed"] == handover.seed)
    return test_rows, {k: handed_metrics[k] for k in TEST_SUMMARY_KEYS if k in handed_metrics}


def _keep_handed_over(handover: Handover, run, *, uri: str, output_dir: Optional[str],
                      ensemble: bool, register_model: Optional[str],
                      lineage: dict[str, Any]) -> Optional[Path]:
    """Put the handed-over model in ``output_dir`` (``model/``; a single model is already there as
    its ``seed-<seed>/``) and log it to the selection run; its folder there, if any."""
    model_dir = None
    if output_dir and (ensemble or handover.kind != "single"):
        model_dir = Path(output_dir) / "model"
        with outputs.replacing(model_dir, IN_OUTPUT_DIR) as new:
            shutil.copytree(handover.folder, new)
    elif output_dir:  # the best seed's folder, kept above, is the handed-over model
        model_dir = Path(output_dir) / f"seed-{handover.seed}"
    logged = tracking.log_model(
        uri, run.run_id, str(handover.folder), "handed_over_model", register_as=register_model,
        lineage=tracking.lineage_tags(run_id=run.run_id, kind=handover.kind, **lineage))
    _say(f"MLflow model: {logged.uri}"
         + (f", registered as {logged.registered_uri}" if logged.registered_uri else ""))
    return model_dir


def _option_summary(option) -> dict[str, Any]:
    """A candidate as the result keeps it: no work-folder path (gone once the selection ends),
    and None for what was not measured (an untimed candidate's latency)."""
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v)
            for k, v in option.to_dict().items() if k != "folder"}


def _keep_candidates(handover: Handover, folder: Path) -> None:
    """Every hand-over candidate's model folder in ``folder/<kind>`` (replacing an earlier
    selection's), for a comparison after the choice, e.g. on test (``tunebert bench``)."""
    for option in handover.options:
        with outputs.replacing(folder / option.kind, IN_OUTPUT_DIR) as new:
            shutil.copytree(option.folder, new)
    _say(f"kept the {len(handover.options)} candidates in {folder}")


def _report(result: SelectionResult, run, reports: Path) -> None:
    """selection.json, selection.md and chosen_config.yaml, logged to the selection run; the
    Markdown is printed too."""
    reports.mkdir()
    (reports / "selection.json").write_text(json.dumps(result.to_dict(), indent=2))
    (reports / "selection.md").write_text(result.markdown())
    (reports / "chosen_config.yaml").write_text(yaml.safe_dump(result.chosen.config, sort_keys=True))
    for name in ("selection.json", "selection.md", "chosen_config.yaml"):
        run.log_artifact(str(reports / name))
    print()
    print(result.markdown(), flush=True)
