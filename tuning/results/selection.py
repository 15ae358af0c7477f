"""Final selection: re-train the sweep's top-k configs over several seeds, choose one by its mean
validation score, and only then evaluate the chosen config's models on test.

A sweep's best trial is the best of many noisy draws, so its validation score is biased upward
(the winner's curse), and one seed says little about a config. ``final_selection``:

1. takes the ``top_k`` finished trials of the sweep, best first (``tuning.tracking.best.top_k``);
2. re-trains each config with ``seeds`` fresh seeds, namely the config's own ``seed`` + 1, 2,
   ..., ``seeds``, on train, measuring validation only. The trial's own seed is left out on
   purpose: re-training it reproduces the sweep's run (same seed, same data order), whose score
   is the maximum the sweep already picked, so it would bias the mean upward (on MASSIVE the
   repeated seed scored 0.6-0.8 points over the fresh ones). The test split is not even
   tokenized for these runs (``train_config(evaluate_test=False)``);
3. chooses the config with the best mean validation score over its seeds; ties go to the lower
   standard deviation, then to the better sweep rank. A config with a diverged seed (NaN loss)
   cannot be chosen;
4. hands over one model, chosen on validation too: the chosen config's best seed model (the best
   validation score, as its training run reported it). With ``ensemble=True`` the chosen
   config's seed models are also combined into one ensemble that averages their softmax
   probabilities (``trainables.ensemble``); every seed model and the ensemble are then scored on
   validation with the same evaluation, and the ensemble is handed over unless it is worse than
   the seed models' mean. It is not compared with the best seed model: that score is the
   maximum of ``seeds`` noisy draws and overstates the model (on MASSIVE the best-by-validation
   seed model was the worst of three on test, and lost to the ensemble there);
5. only then evaluates the chosen config's seed models on test (mean ± std), and the handed-over
   model once (for a single model, that is its seed's row). They are not re-trained: every
   seed's model is written to a temporary model folder and the chosen ones are reloaded.

With ``workers > 1`` the (candidate, seed) trainings run that many at a time in spawned processes,
each on its share of the cores (``tuning.results.jobs``); the choice and the numbers do not depend on it
beyond floating-point summation order across thread counts.

Standard deviations are sample standard deviations (n - 1 in the denominator), 0 for one seed.

The handed-over model is one folder that ``tuning.serve.predict.load_model`` (``tunebert predict``)
reads: a self-contained model folder (``trainables.export``), or an ensemble folder
(``ensemble.json`` + ``member-<i>/`` model folders).

MLflow: a ``tunebert.kind=selection`` run in the sweep's experiment, nested under the sweep's
parent run, holds the table (``rank{r}_{metric}_seed{s}``, ``_mean``, ``_std``, ``rank{r}_chosen``),
``selection.json``, ``selection.md``, ``chosen_config.yaml`` and the chosen config's
``test_accuracy_mean``/``_std`` and ``test_macro_f1_mean``/``_std``; and for the handed-over
model ``single_{metric}`` (and ``ensemble_{metric}``), the tag ``tunebert.handed_over``
(``single``/``ensemble``), ``handed_over_test_accuracy``/``_macro_f1`` and the MLflow pyfunc model
``handed_over_model`` (``runs:/<selection run id>/handed_over_model``; registered with lineage tags
when ``register_model`` is given). Each re-training is a ``tunebert.kind=train`` run nested under
the selection run; only the chosen config's runs get test metrics and an MLflow model ``model``.

This module checks the inputs and opens the run; beside it in ``tuning.results``: ``candidates``
(the ranking), ``seed_training`` (step 2), ``handover`` (step 4), ``evaluation`` (scoring model
folders; step 5), ``selection_result`` (the result and its Markdown) and ``selection_run`` (the
steps in order, loaded only when a selection runs).
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any, Iterable, Optional

import tuning.results.outputs as outputs
import tuning.tracking as tracking
from trainables import task_data
from trainables.data import DataConfig
from trainables.errors import ConfigError
from tuning.config import DEFAULT_ROOT, check_sweep_name, load_saved_sweep, resolve_tracking_uri
from tuning.credentials import redact
# the selection's parts live in their own modules; their names stay importable from here
from tuning.results.candidates import (FIRST_SEED_OFFSET, Candidate, SelectionError,  # noqa: F401
                                       best_seed, better, choose, mean_std, seed_offsets,
                                       selection_seeds)
from tuning.results.evaluation import evaluate_folders, evaluate_on_test, load_model_folder  # noqa: F401
from tuning.results.handover import IN_OUTPUT_DIR, HandoverRule, ensemble_wins  # noqa: F401
from tuning.results.selection_result import SelectionResult, render_markdown  # noqa: F401

log = logging.getLogger(__name__)


# what ``trainables.loops.evaluate`` measures, and for multitask models
# ``trainables.joint.evaluate_multitask``: the metrics a single model and an ensemble can be
# compared on
ENSEMBLE_METRICS = ("val_accuracy", "val_macro_f1", "val_loss", "val_intent_accuracy",
                    "val_slot_f1", "val_slot_precision", "val_slot_recall",
                    "val_sentence_accuracy", "val_task_mean")
# the metric selection ranks by unless told: a multitask sweep's own (sentence accuracy on joint
# data, ``trainables.joint.selection_metric``), else this
DEFAULT_METRIC = "val_accuracy"

def _say(message: str) -> None:
    log.info(f"select: {message}")


# --------------------------------------------------------------------------- inputs


def _check_count(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"`{name}` must be an integer >= 1, but got {value!r}")


def check_arguments(sweep: str, top_k: int, seeds: int, metric: str, mode: str,
                    epochs: Optional[int], *, ensemble: bool = False, workers: int = 1) -> None:
    check_sweep_name(sweep)
    _check_count("top_k", top_k)
    _check_count("seeds", seeds)
    _check_count("workers", workers)
    if epochs is not None:
        _check_count("epochs", epochs)
    if mode not in ("max", "min"):
        raise ConfigError(f"`mode` must be 'max' or 'min', but got {mode!r}")
    if not isinstance(metric, str) or not metric.startswith("val_"):
        raise ConfigError(f"`metric` must be a validation metric (val_...): selection never looks "
                          f"at the test split, but got {metric!r}")
    if ensemble and seeds < 2:
        raise ConfigError(f"`ensemble` needs `seeds` >= 2 (an ensemble of one model is that "
                          f"model), but got seeds={seeds}")
    if ensemble and metric not in ENSEMBLE_METRICS:
        raise ConfigError(f"`ensemble` compares models on a metric the evaluation measures, one of "
                          f"{list(ENSEMBLE_METRICS)}, but got metric={metric!r}")


def check_rule_arguments(rule: HandoverRule, metric: str, ensemble: bool) -> None:
    """The cross-config ensemble and the student are scored by the evaluation, as the ensemble is."""
    if (rule.cross or rule.distill) and metric not in ENSEMBLE_METRICS:
        raise ConfigError(f"the cross-config ensemble and the distilled student are compared on a "
                          f"metric the evaluation measures, one of {list(ENSEMBLE_METRICS)}, but "
                          f"got metric={metric!r}")
    if rule.distill and not (ensemble or rule.cross):
        raise ConfigError("a distilled student learns from an ensemble: add --ensemble (the seed "
                          "ensemble) or --cross-config (the top configs' ensemble)")


def _rule_params(rule: HandoverRule) -> dict[str, Any]:
    """The selection run's params for the hand-over candidates and rule."""
    return {"cross_config": rule.cross, "distill": rule.distill,
            **({"distill_temperature": rule.temperature, "distill_alpha": rule.alpha}
               if rule.distill else {}),
            **({"student_layers": rule.student_layers} if rule.distill and rule.student_layers else {}),
            "prefer": rule.prefer, **({"within": rule.within} if rule.prefer == "latency" else {})}


def check_output_dir(output_dir: Path, sweep: str, storage: str, seeds: Iterable[int]) -> None:
    """Refuse an ``output_dir`` that another pipeline owns, or whose ``model/`` or any
    ``seed-<seed>/`` of ``seeds`` tunebert may not replace (``tuning.results.outputs``); what else the
    folder holds is never touched. An earlier swap there that was killed is finished first."""
    output_dir = output_dir.expanduser()
    if output_dir.exists() and not output_dir.is_dir():
        raise ConfigError(f"--output-dir {str(output_dir)!r} exists and is not a folder; pass a "
                          f"folder for the chosen models")
    outputs.check_owner(output_dir, Path(storage).expanduser().resolve() / "ray" / sweep)
    for name in ["model", *(f"seed-{seed}" for seed in sorted(seeds))]:
        outputs.check_output_target(output_dir / name, IN_OUTPUT_DIR)


def resolve_data(sweep: str, storage: str = DEFAULT_ROOT, source: Optional[str] = None,
                 text_column: Optional[str] = None, label_column: Optional[str] = None) -> DataConfig:
    """The sweep's own data settings (saved beside the sweep), with any given field overriding."""
    try:
        saved: Optional[DataConfig] = load_saved_sweep(sweep, storage).data
    except ConfigError:
        if source is None:
            root = Path(storage).expanduser().resolve()
            raise ConfigError(
                f"cannot tell which data sweep {sweep!r} used: its saved settings are not under "
                f"{root}. Pass the --storage the sweep used, or pass --data (and "
                f"--text-column/--label-column unless they are text/label).") from None
        saved = None
    base = saved or DataConfig()
    changes = {k: v for k, v in (("source", source), ("text_column", text_column),
                                 ("label_column", label_column)) if v is not None}
    if changes.get("source", base.source) != base.source:
        changes["validation_ids"] = None  # rows carved from the sweep's train file, not this one
    return replace(base, **changes)


# --------------------------------------------------------------------------- the selection


def default_metric(sweep: str, storage: str = DEFAULT_ROOT) -> str:
    """What selection ranks by when no metric is given: a multitask sweep's own ranking metric
    (saved with the sweep), else ``DEFAULT_METRIC``."""
    try:
        saved = load_saved_sweep(sweep, storage)
    except ConfigError:  # no saved settings (or a bad name): the checks that follow say so
        return DEFAULT_METRIC
    return saved.metric if saved.trainable == task_data.MULTITASK else DEFAULT_METRIC


def final_selection(sweep: str, top_k: int = 3, seeds: int = 3, metric: Optional[str] = None,
                    tracking_uri: Optional[str] = None, storage: str = DEFAULT_ROOT,
                    data: Optional[DataConfig] = None, *, mode: str = "max",
                    epochs: Optional[int] = None, max_train_examples: Optional[int] = None,
                    output_dir: Optional[str] = None, ensemble: bool = False,
                    workers: int = 1, register_model: Optional[str] = None,
                    rule: Optional[HandoverRule] = None, fill_until: Optional[float] = None,
                    fill_reserve_s: float = 0.0) -> SelectionResult:
    """Re-train the sweep's ``top_k`` configs with ``seeds`` fresh seeds each (config seed + 1..seeds),
    choose by mean validation ``metric``, hand over one model chosen on validation, then test.

    ``metric`` defaults to ``default_metric(sweep)``: ``val_accuracy``, or a multitask sweep's own
    (e.g. ``val_sentence_accuracy``); multitask models are scored with their intent, slot and
    sentence metrics throughout (``tuning.results.evaluation``).

    ``data`` defaults to the sweep's own data settings; ``epochs`` overrides every config's epochs;
    ``output_dir`` keeps the chosen models there (``seed-<seed>/`` each) and, with ``ensemble``,
    the handed-over model in ``model/``. ``ensemble`` also tries the chosen config's seed models
    as one probability-averaging ensemble (handed over unless below the seed models' mean on
    validation). ``workers`` trainings run at a time, each in its own process on its cores.
    ``register_model`` registers the handed-over model under that name in the MLflow Model
    Registry, tagged with its lineage (sweep, trial, selection run, data fingerprint).
    ``rule`` (``tuning.results.handover.HandoverRule``) adds the cross-config ensemble and the
    distilled student to the hand-over candidates and says how one is picked (default: the more
    accurate of the best seed model and the seed ensemble). ``fill_until`` (seconds since the
    epoch): more seeds of the chosen config while the time before it, less ``fill_reserve_s``,
    allows (``tuning.results.fill``; ``tunebert tune`` fills the time it reserved)."""
    # local: keeps torch, mlflow and ray off --help
    import tuning.tracking.best as best
    import tuning.tracking as tracking
    from tuning.results.selection_run import select

    metric = metric or default_metric(sweep, storage)
    rule = rule or HandoverRule()
    check_arguments(sweep, top_k, seeds, metric, mode, epochs, ensemble=ensemble, workers=workers)
    check_rule_arguments(rule, metric, ensemble)
    uri = resolve_tracking_uri(tracking_uri, Path(storage).expanduser().resolve())
    leaders = best.top_k(sweep, top_k, metric, mode, tracking_uri=tracking_uri, storage=storage)
    if not leaders:
        raise SelectionError(f"sweep {sweep!r} has no finished trial with a finite {metric!r} yet; "
                             f"nothing to select from")
    if len(leaders) < top_k:
        _say(f"sweep {sweep!r} has only {len(leaders)} finished trial(s) with a finite {metric!r}; "
             f"selecting among those")
    data = data if data is not None else resolve_data(sweep, storage)
    # bad data, or data the sweep's family cannot train on, fails before anything runs
    fingerprint = task_data.fingerprint_of(data, leaders[0].config["trainable"])
    if output_dir:  # before anything trains
        most = seeds * (2 if fill_until is not None else 1)  # filling: twice the seeds at most
        check_output_dir(Path(output_dir), sweep, storage,
                         {s for trial in leaders for s in selection_seeds(trial.config, most)})
    parent = tracking.sweep_run(uri, sweep)
    params = {"sweep": sweep, "top_k": top_k, "seeds": seeds, "seed_offsets": seed_offsets(seeds),
              "metric": metric, "mode": mode, "epochs": epochs if epochs else "config's",
              "max_train_examples": max_train_examples or "all", "ensemble": ensemble,
              "workers": workers, **_rule_params(rule),
              **{f"data.{k}": v for k, v in data.to_dict().items()}}
    for rank, trial in enumerate(leaders, start=1):
        params[f"rank{rank}_trial_id"] = trial.trial_id
        params[f"rank{rank}_trial_run_id"] = trial.run_id
        params[f"rank{rank}_seeds"] = ",".join(map(str, selection_seeds(trial.config, seeds)))
    run = tracking.SelectionRun(uri, sweep, params, run_name=f"select-top{len(leaders)}x{seeds}",
                                parent_run_id=parent.info.run_id if parent else None)
    _say(f"sweep {sweep!r}: top {len(leaders)} trial(s) by {metric}, {seeds} fresh seed(s) each "
         f"(the config's seed + {seed_offsets(seeds)}), validation only; MLflow run {run.run_id}")
    workdir = Path(tempfile.mkdtemp(prefix="tunebert-select-"))
    try:
        result = select(leaders, data, run, uri=uri, sweep=sweep, seeds=seeds, metric=metric,
                        mode=mode, epochs=epochs, max_train_examples=max_train_examples,
                        workdir=workdir, output_dir=output_dir, ensemble=ensemble,
                        workers=workers, register_model=register_model, fingerprint=fingerprint,
                        rule=rule, fill_until=fill_until, fill_reserve_s=fill_reserve_s)
    except BaseException as exc:
        run.end("KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED",
                error=f"{type(exc).__name__}: {exc}")
        raise
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    run.end("FINISHED")
    return result


# --------------------------------------------------------------------------- the CLI subcommand


def run(args) -> int:
    """``tunebert select``."""
    tracking.reachable_store(args.tracking_uri, args.storage)
    top_k, seeds, epochs, limit = args.top_k, args.seeds, args.epochs, None
    if args.smoke_test:
        top_k, seeds, epochs, limit = min(top_k, 2), 2 if args.ensemble else 1, 1, 64
    metric = args.metric or default_metric(args.name, args.storage)
    check_arguments(args.name, top_k, seeds, metric, args.mode, epochs,
                    ensemble=args.ensemble, workers=args.workers)
    rule = HandoverRule(cross=args.cross_config, distill=args.distill,
                        temperature=args.distill_temperature, alpha=args.distill_alpha,
                        prefer=args.prefer, within=args.within, keep=args.keep_candidates,
                        student_layers=args.student_layers)
    check_rule_arguments(rule, metric, args.ensemble)
    data = resolve_data(args.name, args.storage, args.data, args.text_column, args.label_column)
    result = final_selection(args.name, top_k, seeds, metric, args.tracking_uri, args.storage,
                             data, mode=args.mode, epochs=epochs, max_train_examples=limit,
                             output_dir=args.output_dir, ensemble=args.ensemble,
                             workers=args.workers,
                             register_model=getattr(args, "register_model", None), rule=rule)
    _say(f"MLflow: {redact(result.tracking_uri)} (experiment {result.sweep!r}, run {result.run_id}; "
         f"selection.md, selection.json, chosen_config.yaml; model "
         f"runs:/{result.run_id}/handed_over_model)")
    if result.output_dir:
        _say(f"chosen models: {result.output_dir}")
    if result.model_dir:
        _say(f"handed-over model ({result.handed_over}): {result.model_dir}; "
             f"predict with: tunebert predict {result.model_dir} TEXT")
    return 0
