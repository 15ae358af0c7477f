"""``tunebert tune``: sweep → final selection → one test evaluation, under one time budget.

Phases, in order, each recorded in ``<storage>/ray/<name>/tunebert_pipeline.json`` (PIPELINE_FILE)
beside the sweep's own ``tunebert_sweep.json``:

1. **plan** (no Ray yet): everything the sweep would refuse is refused here (``runner.prepare``),
   then one tiny training (``measure_epoch_seconds``) measures how long a trial-epoch takes, and
   ``split_budget`` divides the budget between the phases. A budget that cannot hold one sweep
   trial plus one selection training is refused here, with exit status 2.
2. **sweep**: ``runner.run_sweep`` with ``time_budget_s`` = the sweep's share, and a
   ``runner.DeadlineStopper`` so that a resumed sweep gets only what is left of that share.
3. **select**: ``selection.final_selection`` (top-k × seeds, optional ensemble, test read once
   after the choice). Before it starts, the selection is planned again from the speed the sweep
   actually had (``time_this_iter_s`` of the top trials' Ray results) and the time really left:
   ``fit_selection`` shrinks top_k/seeds when they do not fit, and says so.
4. **done**: the sweep's parent MLflow run gets the summary (phase budgets and actual times, the
   handed-over model's folder, its validation and test scores, the config) and PIPELINE_FILE.

``tunebert resume NAME`` continues where a pipeline stopped: a killed sweep phase resumes through
``runner.resume_sweep``; a finished sweep is not re-run; the selection phase restarts (it keeps no
state of its own); a finished pipeline just prints its result. Time spent by a killed process
counts against the budget, up to its last heartbeat (ALIVE_FILE, touched every HEARTBEAT_S).

**The budget split** (``split_budget`` before the sweep, ``fit_selection`` after it). The
selection re-trains ``top_k × seeds`` configs for their full length, ``workers`` at a time, then
evaluates the chosen models; that cost can be computed from the time of one training::

    selection_s(k, s) = ceil(k·s / workers) · max(training_s of ranks 1..k) + eval_s

with ``training_s`` = epochs × seconds per trial-epoch and ``eval_s`` one trial-epoch (loading
the models and evaluating them on validation and test, which are smaller than train, costs less
than one training epoch), both divided by ``selection_speedup``: on CPU a sweep trial trains on
``cpus_per_trial`` threads beside other trials, a selection training on ``cpu_count // workers``. Whole waves of ``workers`` trainings are counted (``ceil``), and the
slowest candidate sets the wave's length, so the estimate errs long. Before the sweep, the
selection is reserved ``selection_s(top_k, seeds)``, but at most ``max_select_share`` (half) of
the budget: the selection can only choose among what the sweep found, so starving the search to
re-train more seeds is the worse trade. The sweep gets the rest. When the speed cannot be measured
on this machine (trials run on a remote cluster or on a GPU this machine lacks), the reserve is
``fallback_select_share`` (35 %) of the budget: on the reference run (MASSIVE, 2-core CPU,
4-epoch trials) 3 configs × 3 seeds are 36 trial-epochs of ~51 s, about 26 % of 2 hours, and
the 35 % leave room for evaluation and slower configs.

When top_k × seeds do not fit (before the sweep: in the share; after it: in the time left), they
shrink one step at a time, the larger of the two first and top_k on a tie — (3, 3) → (2, 3) →
(2, 2) → (1, 2) → (1, 1) — keeping breadth (configs) and depth (seeds) balanced, and seeds on a
tie because averaging over seeds is what makes the choice trustworthy and what an ensemble is
made of. One training of one config always runs, even when it does not fit, since a pipeline must
hand over a model: the total can then exceed the budget by at most that one training (and its
evaluation), never more — as far as the measured speed holds.

This module runs the phases; beside it in ``tuning.results``: ``budget`` (the split, pure
functions), ``speed`` (measuring it), ``pipeline_state`` (the settings, the state on disk, the
sessions and their heartbeat) and ``pipeline_summary`` (what is handed over, logged and printed).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import re
import time
from pathlib import Path
from typing import Any, Optional

import tuning.families as families
import tuning.results.outputs as outputs
import tuning.results.selection as selection
from trainables import task_data
from trainables.errors import ConfigError, UserError
from trainables.models import load_tokenizer
from tuning.config import (DEFAULT_POPULATION, DEFAULT_ROOT, DEFAULT_WARM_START, MULTITASK_WARM_START,
                           POPULATION_SCHEDULERS, SweepConfig, load_saved_sweep, resume_store)
# the budget's math, the saved state, the speed and the summary live in their own modules; their
# names stay importable from here
from tuning.results.budget import (STUDENT_TRAININGS, BudgetSplit, SelectionPlan, clock,  # noqa: F401
                                   fit_selection,
                                   selection_seconds, selection_speedup, shrink_steps, split_budget)
from tuning.results.pipeline_state import (ALIVE_FILE, DEADLINE_FILE, HEARTBEAT_S,  # noqa: F401
                                           PHASES, PIPELINE_FILE, Pipeline, PipelineConfig,
                                           PipelineState, Session, count_killed_session, exists,
                                           load_pipeline, pipeline_path)
from tuning.results.pipeline_summary import (log_summary, predict_command, print_summary,  # noqa: F401
                                             render_summary, result_summary)
from tuning.results.speed import (PROBE_TRAIN_EXAMPLES, PROBE_VAL_EXAMPLES,  # noqa: F401
                                  measure_epoch_seconds, trial_epoch_seconds, training_epochs)
from tuning.settings import chosen_trainable, objective_settings, sweep_settings
from tuning.sweep.lock import sweep_lock

log = logging.getLogger(__name__)

BUDGET_TRIALS = 1000
# what a selection writes into the output folder (tuning.results.selection)
_SELECTION_FOLDER = re.compile(r"model|seed-\d+")



def say(message: str) -> None:
    log.info(f"tune: {message}")


# --------------------------------------------------------------------------- the phases


def start_pipeline(sweep: SweepConfig, config: PipelineConfig) -> Pipeline:
    """Validate, measure speed, split the budget and write the pipeline's state. No Ray yet:
    every refusal happens here, before anything is written."""
    import tuning.sweep.runner as runner  # local: keeps torch, mlflow and ray off --help

    started = time.time()
    sweep = sweep.anchored()  # absolute paths and the MLflow store, as the sweep will save them
    for path in (sweep.sweep_dir / "tuner.pkl", sweep.sweep_dir / PIPELINE_FILE):
        if path.exists():
            raise ConfigError(f"a sweep named {sweep.name!r} already exists in {sweep.sweep_dir}; "
                              f"continue it with `tunebert resume {sweep.name}` or choose another "
                              f"--name")
    pipeline = Pipeline(sweep, config, PipelineState())
    out = pipeline.output_dir
    outputs.check_owner(out, sweep.sweep_dir)  # another pipeline's: named in the refusal
    if out.exists() and (not out.is_dir() or any(e.name != outputs.OWNER_FILE
                                                 for e in out.iterdir())):
        raise ConfigError(f"--output-dir {out} is not an empty folder; the handed-over model goes "
                          f"there. Choose a new or empty folder.")
    prep = runner.prepare(sweep)
    runner.claim_name(prep, resume=False)  # before the speed is measured: a reused name is refused
    trial_epochs = runner.max_epochs(prep.space, sweep.epochs)
    epoch_s = measure_epoch_seconds(prep)
    if epoch_s is None:
        split = split_budget(config.budget_s, None, 0.0, config.top_k, config.seeds,
                             config.select_workers, fallback_select_share=config.fallback_select_share)
    else:
        share = 1.0
        if config.max_train_examples:
            share = min(1.0, config.max_train_examples / len(prep.data.splits["train"]))
        speedup = selection_speedup(sweep.cpus_per_trial, sweep.gpus_per_trial,
                                    config.select_workers, sweep.address)
        training_s = (config.select_epochs or trial_epochs) * epoch_s * share / speedup
        split = split_budget(config.budget_s, training_s, epoch_s / speedup, config.top_k,
                             config.seeds,
                             config.select_workers, trial_s=trial_epochs * epoch_s,
                             max_select_share=config.max_select_share,
                             student=config.rule().distill)
    plan_s = time.time() - started
    sweep_s = split.sweep_s - plan_s
    if sweep_s <= 0:
        raise ConfigError(f"--time-budget {clock(config.budget_s)} is too small: checking the inputs "
                          f"and measuring speed used {clock(plan_s)} of it, and the sweep needs time "
                          f"after that. Raise --time-budget.")
    pipeline.sweep = dataclasses.replace(sweep, time_budget_s=sweep_s)
    state = pipeline.state
    state.basis, state.epoch_s_estimate, state.plan_s = split.basis, epoch_s, plan_s
    state.sweep_planned_s = sweep_s
    state.select_reserved_s = state.select_planned_s = split.select_s
    state.top_k, state.seeds = split.selection.top_k, split.selection.seeds
    speed = f"{clock(epoch_s)} per trial-epoch measured here" if epoch_s else \
        "speed not measurable on this machine"
    say(f"budget {clock(config.budget_s)} ({speed}): sweep {clock(sweep_s)}, selection "
        f"{clock(split.select_s)} for top {split.selection.top_k} x {split.selection.seeds} "
        f"seed(s), planning took {clock(plan_s)}")
    if (split.selection.top_k, split.selection.seeds) != (config.top_k, config.seeds):
        note = (f"planned top {config.top_k} x {config.seeds} seeds do not fit "
                f"{config.max_select_share:.0%} of the budget at the measured speed; planning "
                f"top {split.selection.top_k} x {split.selection.seeds}")
        state.notes.append(note)
        say(f"note: {note}")
    # the output folder is this pipeline's from now on; of two pipelines claiming it at once, one
    # is refused here (claim is atomic), before Ray starts
    outputs.claim(out, pipeline.owner)
    pipeline.save()
    return pipeline


def advance(pipeline: Pipeline, until: str = "done") -> Pipeline:
    """Run the pipeline's remaining phases, stopping once it reaches phase ``until``."""
    if until not in PHASES:
        raise ValueError(f"`until` must be one of {PHASES}, but got {until!r}")
    count_killed_session(pipeline)
    for phase, step in (("sweep", _sweep_phase), ("select", _select_phase)):
        if pipeline.state.phase == until:
            break
        if pipeline.state.phase == phase:
            step(pipeline)
    return pipeline


def run_pipeline(sweep: SweepConfig, config: PipelineConfig) -> Pipeline:
    """The whole job: plan, sweep, select, test. Returns the finished pipeline. One driver at a
    time (``sweep_lock``)."""
    with sweep_lock(sweep.sweep_dir, sweep.name):
        return advance(start_pipeline(sweep, config))


def resume_pipeline(name: str, storage: str = DEFAULT_ROOT, **changes: Any) -> Pipeline:
    """Continue a stopped pipeline; ``changes`` (tracking_uri, address) apply to its sweep. The
    MLflow store must be the one it started with (``config.resume_store``). One driver at a time
    (``sweep_lock``)."""
    import tuning.tracking as tracking  # local: keeps mlflow and ray off --help

    with sweep_lock(pipeline_path(name, storage).parent, name):
        pipeline = load_pipeline(name, storage)
        changes["tracking_uri"] = resume_store(name, pipeline.sweep.tracking_uri,
                                               changes.get("tracking_uri"))
        pipeline.sweep = SweepConfig.from_dict({**pipeline.sweep.to_dict(), **changes})
        # refused within seconds when it cannot be reached, whatever the phase (the selection
        # reads MLflow before anything else and would wait MLflow's own minutes of retries)
        tracking.bound_http_waits()
        tracking.check_store(pipeline.sweep.resolved_tracking_uri())
        if pipeline.state.phase != "done":
            say(f"continuing {name!r} in its {pipeline.state.phase} phase "
                f"({clock(pipeline.state.total_s)} of {clock(pipeline.config.budget_s)} used)")
        return advance(pipeline)


def _sweep_phase(pipeline: Pipeline) -> None:
    import tuning.sweep.runner as runner  # local: keeps torch, mlflow and ray off --help

    sweep, state = pipeline.sweep, pipeline.state
    left = state.sweep_planned_s - state.sweep_actual_s
    with Session(pipeline, "sweep"):
        pipeline.write_deadline(left)
        if (sweep.sweep_dir / "tuner.pkl").exists():
            say(f"resuming the sweep with {clock(max(0.0, left))} of its share left")
            changes = {k: getattr(sweep, k) for k in ("tracking_uri", "address")}
            outcome = runner.resume_sweep(sweep.name, sweep.storage, **changes)
        else:
            outcome = runner.run_sweep(
                sweep, stop=runner.DeadlineStopper(str(pipeline.folder / DEADLINE_FILE)))
    counts = outcome.counts
    say(f"sweep done in {clock(state.sweep_actual_s)} (planned {clock(state.sweep_planned_s)}): "
        f"{counts['FINISHED']} finished, {counts['FAILED']} failed, {counts['KILLED']} killed")
    if outcome.best is None:
        raise UserError(f"the sweep phase of {sweep.name!r} finished no trial with a finite "
                        f"{sweep.metric!r}, so there is nothing to select. Check the failed "
                        f"trials in MLflow, or raise --time-budget.")
    state.phase = "select"
    pipeline.save()


def _measured_training_s(pipeline: Pipeline, leaders) -> tuple[list[float], float, str]:
    """Seconds to train each leader once (best first) and one trial-epoch (for evaluation),
    from the sweep's Ray results; the pre-sweep estimate where a trial left none."""
    config = pipeline.config
    per_trial = {t.trial_id: trial_epoch_seconds(pipeline.folder, t.trial_id) for t in leaders}
    everything = [s for values in per_trial.values() for s in values]
    fallback = (sum(everything) / len(everything)) if everything else pipeline.state.epoch_s_estimate
    if fallback is None:
        return [], 0.0, "no speed known"
    share = 1.0
    if config.max_train_examples:
        train_size = _train_size(pipeline)
        share = min(1.0, config.max_train_examples / train_size) if train_size else 1.0
    epoch_s, training_s = [], []
    for trial in leaders:
        values = per_trial[trial.trial_id]
        seconds = sum(values) / len(values) if values else fallback
        epoch_s.append(seconds)
        training_s.append(training_epochs(trial.config, config.select_epochs) * seconds * share)
    basis = "the sweep's Ray results" if everything else "the speed measured before the sweep"
    speedup = selection_speedup(pipeline.sweep.cpus_per_trial, pipeline.sweep.gpus_per_trial,
                                config.select_workers, pipeline.sweep.address)
    if speedup > 1:
        basis += f", x{speedup:g} for the selection's threads"
    return [s / speedup for s in training_s], max(epoch_s) / speedup, basis


def _train_size(pipeline: Pipeline) -> int:
    sweep = pipeline.sweep
    family = "contrastive" if sweep.trainable == "any" else sweep.trainable
    return task_data.train_size(sweep.data, family, model=sweep.model, max_length=sweep.max_length,
                                load_tokenizer=load_tokenizer)


def _ranked_as_swept(sweep: SweepConfig) -> SweepConfig:
    """``sweep`` ranking by the metric its saved state says: a multitask sweep ranks by its
    data's own metric (sentence accuracy on joint data), chosen once the data was read, and
    selection chooses by the same one."""
    try:
        saved = load_saved_sweep(sweep.name, sweep.storage)
    except ConfigError:
        return sweep  # no saved state to read: the top-k lookup says what is missing
    if (saved.metric, saved.mode) == (sweep.metric, sweep.mode):
        return sweep
    return dataclasses.replace(sweep, metric=saved.metric, mode=saved.mode)


def _select_phase(pipeline: Pipeline) -> None:
    # local: keeps mlflow and ray off --help
    import tuning.tracking.best as best
    import tuning.tracking as tracking

    sweep, config, state = pipeline.sweep, pipeline.config, pipeline.state
    # refuses a folder another pipeline claimed meanwhile (one started before claims existed, or
    # whose claim was removed) before anything runs; claims it again if it was removed
    outputs.claim(pipeline.output_dir, pipeline.owner)
    pipeline.sweep = sweep = _ranked_as_swept(sweep)
    uri = sweep.resolved_tracking_uri()
    leaders = best.top_k(sweep.name, config.top_k, sweep.metric, sweep.mode,
                         tracking_uri=sweep.tracking_uri, storage=sweep.storage)
    left = config.budget_s - state.total_s
    training_s, eval_s, basis = _measured_training_s(pipeline, leaders) if leaders else ([], 0.0, "")
    if training_s:
        plan = fit_selection(left, training_s, eval_s, config.top_k, config.seeds, config.select_workers,
                             config.rule().distill)
        state.top_k, state.seeds, state.select_planned_s = plan.top_k, plan.seeds, plan.seconds
        asked = min(config.top_k, len(leaders))  # a sweep may have finished fewer trials
        if (plan.top_k, plan.seeds) != (asked, config.seeds):
            need = selection_seconds(asked, config.seeds, config.select_workers, training_s, eval_s,
                                     config.rule().distill)
            _note(pipeline, f"top {asked} x {config.seeds} seeds need {clock(need)} at the speed "
                            f"in {basis}, but {clock(max(0.0, left))} of the budget are left: "
                            f"selecting top {plan.top_k} x {plan.seeds} instead")
        if not plan.fits:
            _note(pipeline, f"even one training ({clock(plan.seconds)} with its evaluation) does "
                            f"not fit the {clock(max(0.0, left))} left; running it anyway, so the "
                            f"pipeline ends up to that much over its budget")
    parent = tracking.sweep_run(uri, sweep.name)
    if parent is not None:
        tracking.annotate_run(uri, parent.info.run_id, metrics={
            "pipeline.budget_s": config.budget_s, "pipeline.sweep_planned_s": state.sweep_planned_s,
            "pipeline.sweep_actual_s": state.sweep_actual_s,
            "pipeline.select_reserved_s": state.select_reserved_s,
            "pipeline.select_planned_s": state.select_planned_s,
            "pipeline.top_k": state.top_k, "pipeline.seeds": state.seeds},
            tags={"tunebert.pipeline.phase": "select",
                  "tunebert.pipeline.notes": "\n".join(state.notes) or "none"})
    say(f"selection: top {state.top_k} x {state.seeds} seed(s), planned "
        f"{clock(state.select_planned_s)}, {clock(max(0.0, left))} of the budget left")
    out = pipeline.output_dir
    _clear_stopped_selection(pipeline)
    ensemble = config.ensemble and state.seeds >= 2
    if config.ensemble and not ensemble:
        _note(pipeline, "no ensemble: it needs at least 2 seeds (an ensemble of one model is "
                        "that model)")
    rule = config.rule(ensemble=ensemble, top_k=state.top_k)
    # what the selection does after its trainings: evaluating the candidates (an upper bound: a
    # trial-epoch each for the seed models' and the ensembles' validation and the test split),
    # and the student
    reserve_s = 2 * eval_s + (STUDENT_TRAININGS * training_s[0] if rule.distill and training_s else 0.0)
    with Session(pipeline, "select"):
        result = selection.final_selection(
            sweep.name, state.top_k, state.seeds, sweep.metric, sweep.tracking_uri, sweep.storage,
            mode=sweep.mode, epochs=config.select_epochs,
            max_train_examples=config.max_train_examples, output_dir=str(out),
            ensemble=ensemble, workers=config.select_workers, rule=rule,
            fill_until=time.time() + max(0.0, config.budget_s - state.total_s) if training_s else None,
            fill_reserve_s=reserve_s)
    state.result = result_summary(result, sweep.metric)
    state.result["families"] = _families(uri, sweep)
    state.phase = "done"
    pipeline.save()
    log_summary(pipeline, uri, parent.info.run_id if parent is not None else None)


def _families(uri: str, sweep: SweepConfig) -> list[dict[str, Any]]:
    """Each model family's best sweep trial (``tuning.families``), for the summary."""
    from tuning.report.data import load_trials  # local: keeps mlflow off --help

    rows = families.family_rows(load_trials(uri, sweep.name, sweep.metric), sweep.metric, sweep.mode)
    return [{k: (None if isinstance(v, float) and not math.isfinite(v) else v)
             for k, v in row.items()} for row in rows]


def _clear_stopped_selection(pipeline: Pipeline) -> None:
    """Remove what a stopped selection of this pipeline wrote to its output folder: swaps left
    half-done and the ``seed-<seed>/`` and ``model/`` model folders that hold only what tunebert
    wrote. Anything else there stays (``tuning.results.outputs``)."""
    out = pipeline.output_dir
    outputs.recover_all(out)
    for entry in sorted(out.iterdir()) if out.is_dir() else []:
        if _SELECTION_FOLDER.fullmatch(entry.name) and outputs.remove_own_model(entry):
            log.info(f"removed {entry}, written by a selection of this pipeline that was stopped")


def _note(pipeline: Pipeline, note: str) -> None:
    pipeline.state.notes.append(note)
    say(f"note: {note}")


# --------------------------------------------------------------------------- the CLI subcommand


# what `tunebert tune` tries first unless --warm-start says otherwise (search_spaces.presets)
def default_select_workers(cpus_per_trial: float, gpus_per_trial: float, cores: Optional[int] = None) -> int:
    """Selection trainings at a time: the sweep's own parallelism on a CPU-only machine (two
    one-thread trainings get through ~1.8x the work of one two-thread training on 2 cores,
    `tunebert bench` part d); one at a time when trials use GPUs."""
    import os

    if gpus_per_trial > 0:
        return 1
    return max(1, int((cores or os.cpu_count() or 1) // max(cpus_per_trial, 1e-9)))


def run(args) -> int:
    if args.trials is None and args.scheduler in POPULATION_SCHEDULERS:  # a population, not a queue
        args.trials = DEFAULT_POPULATION
        say(f"--scheduler {args.scheduler} without --trials: a population of {args.trials} trials "
            f"(the budget decides how far they train; pass --trials N for another size)")
    if args.trials is None:  # the budget decides how many trials the sweep gets
        args.trials = BUDGET_TRIALS
    args.trainable = chosen_trainable(args)  # multitask for joint data unless said otherwise
    if args.warm_start is None:  # the hand config first, so the search starts from it
        args.warm_start = (DEFAULT_WARM_START if args.trainable in ("finetune", "any") else
                           MULTITASK_WARM_START if args.trainable == "multitask" else "")
    if args.select_workers is None:
        args.select_workers = default_select_workers(args.cpus_per_trial, args.gpus_per_trial)
    settings = {**sweep_settings(args), **objective_settings(args)}
    if settings["constraints"] and args.ensemble:
        # an ensemble of N models is N times slower and larger than the trials whose latency
        # and size the constraints were checked on
        say("note: with --constraint the chosen single model is handed over, not an ensemble "
            "(nor a student of one)")
        args.ensemble = args.cross_config = args.distill = False
    pipeline_settings: dict[str, Any] = dict(
        budget_s=args.time_budget, top_k=args.top_k, seeds=args.seeds, ensemble=args.ensemble,
        cross_config=args.cross_config, distill=args.distill,
        distill_temperature=args.distill_temperature, distill_alpha=args.distill_alpha,
        prefer=args.prefer, within=args.within, keep_candidates=args.keep_candidates,
        student_layers=args.student_layers,
        select_workers=args.select_workers,
        output_dir=str(Path(args.output_dir).expanduser().resolve()) if args.output_dir else None)
    if args.smoke_test:  # as `tunebert sweep --smoke-test`: PBT needs a second epoch to perturb before
        population = settings["scheduler"] in POPULATION_SCHEDULERS
        settings.update(num_trials=2, epochs=2 if population else 1, grace_period=1,
                        perturbation_interval=1)
        pipeline_settings.update(top_k=min(args.top_k, 2), seeds=min(args.seeds, 2),
                                 select_epochs=1, max_train_examples=64)
    config = PipelineConfig(**pipeline_settings)  # refuses bad counts before the sweep's checks
    pipeline = run_pipeline(SweepConfig(**settings), config)
    print_summary(pipeline)
    return 0


def resume(args) -> int:
    """``tunebert resume NAME`` for a pipeline started by ``tunebert tune``."""
    changes = {k: v for k, v in (("tracking_uri", args.tracking_uri), ("address", args.address)) if v}
    pipeline = resume_pipeline(args.name, args.storage, **changes)
    print_summary(pipeline)
    return 0
