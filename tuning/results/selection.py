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
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import shutil
import statistics
import tempfile
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence

import trainables.data as trainables_data
import tuning.results.jobs as training_jobs
import tuning.results.outputs as outputs
from trainables import registry
from trainables.data import DataConfig, data_fingerprint, load_raw_splits
from trainables.errors import ConfigError, DataError, NonFiniteLossError, UserError
from tuning.config import DEFAULT_ROOT, check_sweep_name, load_saved_sweep, resolve_tracking_uri
from tuning.credentials import redact

log = logging.getLogger(__name__)

HELP = "re-train a sweep's top configs over seeds, choose by mean validation score, then test"
DESCRIPTION = (
    "Final selection: re-train the sweep's top-k configs with several fresh seeds each (the "
    "config's seed + 1..seeds; the trial's own seed would only repeat the sweep's run), on train, "
    "measuring validation only; choose the config with the best mean validation score (ties: "
    "lower std, then sweep rank); only then evaluate the chosen config's models on test "
    "(mean ± std). The handed-over model is the chosen config's best seed model or, with "
    "--ensemble, the ensemble of its seed models unless that scores below the seed models' mean "
    "on validation. Everything is logged to the sweep's MLflow experiment.")

# what ``trainables.loops.evaluate`` measures: the metrics a single model and an ensemble can be
# compared on
ENSEMBLE_METRICS = ("val_accuracy", "val_macro_f1", "val_loss")

# how a refusal names a model folder inside --output-dir (``tuning.results.outputs``)
_IN_OUTPUT_DIR = "in --output-dir, the folder"

# the first seed offset a selection trains: offset 0 would repeat the sweep trial's own run
FIRST_SEED_OFFSET = 1


def selection_seeds(config: dict[str, Any], seeds: int) -> tuple[int, ...]:
    """The seeds a selection trains ``config`` with: its own seed + 1..``seeds``."""
    base = int(config.get("seed", 0))
    return tuple(base + FIRST_SEED_OFFSET + j for j in range(seeds))


def _offsets(seeds: int) -> str:
    return f"{FIRST_SEED_OFFSET}..{FIRST_SEED_OFFSET + seeds - 1}"


def _say(message: str) -> None:
    log.info(f"select: {message}")


# --------------------------------------------------------------------------- results


@dataclass(frozen=True)
class Candidate:
    """One of the sweep's top-k configs and its re-training over seeds."""

    rank: int                 # 1-based rank in the sweep's top-k
    trial_id: str
    trial_run_id: str
    sweep_score: float        # the trial's metric in the sweep
    config: dict[str, Any]    # the trial's config (each seed run replaces ``seed``)
    seeds: tuple[int, ...]
    scores: tuple[float, ...]  # the metric of each seed's run at its last epoch; NaN if diverged
    run_ids: tuple[str, ...]   # "" for a seed whose run could not be identified
    mean: float
    std: float
    chosen: bool = False

    @property
    def diverged(self) -> bool:
        return not all(math.isfinite(s) for s in self.scores)


@dataclass(frozen=True)
class SelectionResult:
    sweep: str
    metric: str
    mode: str
    run_id: str               # the selection run
    tracking_uri: str
    candidates: tuple[Candidate, ...]
    chosen: Candidate
    test: tuple[dict[str, Any], ...]  # per chosen seed: seed, run_id, test_loss/accuracy/macro_f1
    test_accuracy_mean: float
    test_accuracy_std: float
    test_macro_f1_mean: float
    test_macro_f1_std: float
    output_dir: Optional[str] = None
    handed_over: str = "single"        # "single" (the best seed model) or "ensemble"
    single_val: float = math.nan       # the best seed model's validation metric
    ensemble_val: Optional[float] = None  # the ensemble's, when one was built (ensemble=True)
    handed_over_test: dict[str, float] = field(default_factory=dict)  # test_accuracy, test_macro_f1
    model_dir: Optional[str] = None    # the handed-over model's folder, when output_dir was given
    single_seed: Optional[int] = None  # the seed of the best seed model

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["candidates"] = [asdict(c) for c in self.candidates]
        d["chosen"] = {"rank": self.chosen.rank, "trial_id": self.chosen.trial_id,
                       "config": self.chosen.config}
        return d

    def markdown(self) -> str:
        return render_markdown(self)


def mean_std(values: Iterable[float]) -> tuple[float, float]:
    """(mean, sample standard deviation); std is 0 for one value, both NaN if any value is."""
    values = [float(v) for v in values]
    if not values:
        raise ValueError("mean_std needs at least one value")
    if not all(math.isfinite(v) for v in values):
        return math.nan, math.nan
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def _choice_key(candidate: Candidate, mode: str) -> tuple[float, float, int]:
    # means of the same numbers in another order can differ in the last bits: compare rounded
    mean = round(candidate.mean, 12)
    return (-mean if mode == "max" else mean, round(candidate.std, 12), candidate.rank)


def choose(candidates: Sequence[Candidate], mode: str = "max") -> Candidate:
    """The best mean (highest for ``mode='max'``); ties: lower std, then better rank. Candidates
    whose mean is not finite (a seed diverged) cannot be chosen."""
    eligible = [c for c in candidates if math.isfinite(c.mean)]
    if not eligible:
        raise SelectionError(
            f"none of the {len(candidates)} candidate(s) trained to a finite validation score on "
            f"every seed, so there is nothing to choose; check the configs (their runs ended FAILED)")
    return min(eligible, key=lambda c: _choice_key(c, mode))


class SelectionError(UserError):
    """Final selection cannot go ahead as asked."""


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
        outputs.check_output_target(output_dir / name, _IN_OUTPUT_DIR)


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


# --------------------------------------------------------------------------- reloading a model


def load_model_folder(folder: str | Path):
    """(model on CPU, config, label map) of a model folder (``trainables.export.load_model``): a
    self-contained model folder, an ensemble folder whose members share the label map and the
    tokenizer (``model``, ``max_length``; the config returned is then the first member's), or an
    older checkpoint folder. Raises ``ModelLoadError`` for anything else."""
    from trainables.export import load_model  # local: keeps torch off --help

    loaded = load_model(folder)
    return loaded.model, loaded.config, loaded.label_map


def evaluate_folders(folders: Sequence[str | Path], data_config: DataConfig, config: dict,
                     split: str) -> list[dict]:
    """Metrics (``val_*`` or ``test_*``: loss, accuracy, macro_f1) of each model folder (plain or
    ensemble) on ``split``. For ``'validation'`` the test split is not even tokenized; ``'test'``
    is the only place selection reads the test split."""
    import torch

    # local: keeps torch off --help
    from trainables.loops import evaluate
    from trainables.models import load_tokenizer

    if split not in ("validation", "test"):
        raise ValueError(f"split must be 'validation' or 'test', but got {split!r}")
    cfg = registry.config_class(config["trainable"]).from_dict(config)
    data = trainables_data.tokenize_splits(load_raw_splits(data_config), load_tokenizer(cfg.model), model=cfg.model,
                           max_length=cfg.max_length, include_test=split == "test")
    label_map = json.loads(json.dumps(data.label_map.to_dict()))
    device = torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
    results = []
    for directory in folders:
        model, _, folder_labels = load_model_folder(directory)
        if folder_labels != label_map:
            raise DataError(f"the data's label map changed since the model in {directory} was "
                            f"trained; selection needs the same data for training and testing")
        result = evaluate(model.to(device), data.splits[split], batch_size=64,
                          pad_token_id=data.pad_token_id, num_labels=data.num_labels,
                          device=device, precision=cfg.precision)
        results.append(result.as_metrics("test" if split == "test" else "val"))
        del model
    return results


def evaluate_on_test(checkpoints: Sequence[str], data_config: DataConfig, config: dict) -> list[dict]:
    """Test metrics of each model folder: the only place selection reads the test split."""
    return evaluate_folders(checkpoints, data_config, config, "test")


def better(a: float, b: float, mode: str) -> bool:
    """``a`` strictly better than ``b`` (higher for ``mode='max'``), ignoring the last bits (as
    ``choose`` does); a NaN is never better."""
    if not math.isfinite(a):
        return False
    if not math.isfinite(b):
        return True
    a, b = round(a, 12), round(b, 12)
    return a > b if mode == "max" else a < b


def ensemble_wins(ensemble_score: float, member_scores: Sequence[float], mode: str) -> bool:
    """Whether an ensemble is handed over rather than its best member: unless it scores below
    the members' mean (``mode`` max) or above it (min). A non-finite ensemble score never wins."""
    if not math.isfinite(ensemble_score):
        return False
    finite = [s for s in member_scores if math.isfinite(s)]
    if not finite:
        return True
    return not better(statistics.fmean(finite), ensemble_score, mode)


def best_seed(seeds: Sequence[int], scores: Sequence[float], mode: str) -> tuple[int, float]:
    """(seed, score) of the best score; ties go to the earlier seed."""
    index = 0
    for i in range(1, len(scores)):
        if better(scores[i], scores[index], mode):
            index = i
    return seeds[index], scores[index]


# --------------------------------------------------------------------------- the selection


def _train_seed(config: dict, data: DataConfig, *, uri: str, sweep: str, parent_run_id: str,
                rank: int, trial_id: str, seed: int, offset: int, checkpoint: Path, metric: str,
                max_train_examples: Optional[int], announce: str = "") -> tuple[float, str]:
    """Train one seed of one candidate, validation only; (its metric, its run id). Runs in a
    worker process when selection trains several at a time (``tuning.results.jobs.run_jobs``)."""
    from tuning.results.train import train_config  # local: keeps torch, mlflow and ray off --help

    if announce:
        _say(announce)

    try:
        outcome = train_config(
            {**config, "seed": seed}, data, tracking_uri=uri, experiment=sweep,
            run_name=f"select-rank{rank}-seed{seed}", output_dir=str(checkpoint),
            tags={"tunebert.sweep": sweep, "tunebert.from_sweep": sweep,
                  "tunebert.selection.rank": str(rank), "tunebert.selection.trial_id": trial_id,
                  "tunebert.selection.seed": str(seed), "tunebert.selection.seed_offset": str(offset)},
            max_train_examples=max_train_examples, evaluate_test=False,
            parent_run_id=parent_run_id, log_model=False)
    except NonFiniteLossError as exc:  # its run ended FAILED; the candidate cannot be chosen
        _say(f"rank {rank} seed {seed} diverged ({exc}); this config cannot be chosen")
        return math.nan, ""
    if metric not in outcome.val:
        raise ConfigError(f"`metric` {metric!r} was not reported when training trial {trial_id}'s "
                          f"config; validation metrics there: {sorted(outcome.val)}")
    return float(outcome.val[metric]), outcome.run_id


def _candidate_metrics(c: Candidate, metric: str) -> dict[str, float]:
    out = {f"rank{c.rank}_{metric}_seed{s}": v for s, v in zip(c.seeds, c.scores)}
    out.update({f"rank{c.rank}_{metric}_mean": c.mean, f"rank{c.rank}_{metric}_std": c.std,
                f"rank{c.rank}_sweep_{metric}": c.sweep_score})
    return out


def final_selection(sweep: str, top_k: int = 3, seeds: int = 3, metric: str = "val_accuracy",
                    tracking_uri: Optional[str] = None, storage: str = DEFAULT_ROOT,
                    data: Optional[DataConfig] = None, *, mode: str = "max",
                    epochs: Optional[int] = None, max_train_examples: Optional[int] = None,
                    output_dir: Optional[str] = None, ensemble: bool = False,
                    workers: int = 1, register_model: Optional[str] = None) -> SelectionResult:
    """Re-train the sweep's ``top_k`` configs with ``seeds`` fresh seeds each (config seed + 1..seeds),
    choose by mean validation ``metric``, hand over one model chosen on validation, then test.

    ``data`` defaults to the sweep's own data settings; ``epochs`` overrides every config's epochs;
    ``output_dir`` keeps the chosen models there (``seed-<seed>/`` each) and, with ``ensemble``,
    the handed-over model in ``model/``. ``ensemble`` also tries the chosen config's seed models
    as one probability-averaging ensemble (handed over unless below the seed models' mean on
    validation).
    ``workers`` trainings run at a time, each in its own process on its share of the cores.
    ``register_model`` registers the handed-over model under that name in the MLflow Model
    Registry, tagged with its lineage (sweep, trial, selection run, data fingerprint).
    """
    # local: keeps mlflow and ray off --help
    import tuning.tracking.best as best
    import tuning.tracking as tracking

    check_arguments(sweep, top_k, seeds, metric, mode, epochs, ensemble=ensemble, workers=workers)
    uri = resolve_tracking_uri(tracking_uri, Path(storage).expanduser().resolve())
    leaders = best.top_k(sweep, top_k, metric, mode, tracking_uri=tracking_uri, storage=storage)
    if not leaders:
        raise SelectionError(f"sweep {sweep!r} has no finished trial with a finite {metric!r} yet; "
                             f"nothing to select from")
    if len(leaders) < top_k:
        _say(f"sweep {sweep!r} has only {len(leaders)} finished trial(s) with a finite {metric!r}; "
             f"selecting among those")
    data = data if data is not None else resolve_data(sweep, storage)
    fingerprint = data_fingerprint(load_raw_splits(data))  # bad data fails before anything runs
    if output_dir:  # before anything trains
        check_output_dir(Path(output_dir), sweep, storage,
                         {s for trial in leaders for s in selection_seeds(trial.config, seeds)})
    parent = tracking.sweep_run(uri, sweep)
    params = {"sweep": sweep, "top_k": top_k, "seeds": seeds, "seed_offsets": _offsets(seeds),
              "metric": metric, "mode": mode, "epochs": epochs if epochs else "config's",
              "max_train_examples": max_train_examples or "all", "ensemble": ensemble,
              "workers": workers, **{f"data.{k}": v for k, v in data.to_dict().items()}}
    for rank, trial in enumerate(leaders, start=1):
        params[f"rank{rank}_trial_id"] = trial.trial_id
        params[f"rank{rank}_trial_run_id"] = trial.run_id
        params[f"rank{rank}_seeds"] = ",".join(map(str, selection_seeds(trial.config, seeds)))
    run = tracking.SelectionRun(uri, sweep, params, run_name=f"select-top{len(leaders)}x{seeds}",
                                parent_run_id=parent.info.run_id if parent else None)
    _say(f"sweep {sweep!r}: top {len(leaders)} trial(s) by {metric}, {seeds} fresh seed(s) each "
         f"(the config's seed + {_offsets(seeds)}), validation only; MLflow run {run.run_id}")
    workdir = Path(tempfile.mkdtemp(prefix="tunebert-select-"))
    try:
        result = _select(leaders, data, run, uri=uri, sweep=sweep, seeds=seeds, metric=metric,
                         mode=mode, epochs=epochs, max_train_examples=max_train_examples,
                         workdir=workdir, output_dir=output_dir, ensemble=ensemble,
                         workers=workers, register_model=register_model, fingerprint=fingerprint)
    except BaseException as exc:
        run.end("KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED",
                error=f"{type(exc).__name__}: {exc}")
        raise
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    run.end("FINISHED")
    return result


def _select(leaders, data: DataConfig, run, *, uri: str, sweep: str, seeds: int, metric: str,
            mode: str, epochs: Optional[int], max_train_examples: Optional[int], workdir: Path,
            output_dir: Optional[str], ensemble: bool = False, workers: int = 1,
            register_model: Optional[str] = None, fingerprint: Optional[str] = None) -> SelectionResult:
    import yaml

    import tuning.tracking as tracking  # local: keeps mlflow and ray off --help

    # an epochs override trains the whole new schedule: the sweep's stop_epoch no longer applies
    configs = [{**trial.config, **({"epochs": epochs, "stop_epoch": None} if epochs else {})}
               for trial in leaders]
    jobs = []  # (candidate, seed) trainings, rank-major
    for rank, (trial, config) in enumerate(zip(leaders, configs), start=1):
        for offset, seed in enumerate(selection_seeds(config, seeds), start=FIRST_SEED_OFFSET):
            jobs.append(dict(
                config=config, data=data, uri=uri, sweep=sweep, parent_run_id=run.run_id,
                rank=rank, trial_id=trial.trial_id, seed=seed, offset=offset,
                checkpoint=workdir / f"rank{rank}" / f"seed-{seed}", metric=metric,
                max_train_examples=max_train_examples,
                announce=f"rank {rank}/{len(leaders)} trial {trial.trial_id} (sweep {metric} "
                         f"{trial.score(metric):.4f}): seed {offset}/{seeds} = {seed}"))
    # the store and the sweep's experiment exist already (the selection run is in it), so
    # workers never race to create them
    if workers > 1:
        _say(f"training {len(jobs)} models, {workers} at a time")
    results = training_jobs.run_jobs(_train_seed, jobs, workers)
    candidates: list[Candidate] = []
    leader: Optional[Candidate] = None
    try:
        for rank, (trial, config) in enumerate(zip(leaders, configs), start=1):
            scores, run_ids = zip(*(next(results) for _ in range(seeds)))
            mean, std = mean_std(scores)
            candidate = Candidate(rank, trial.trial_id, trial.run_id, float(trial.score(metric)),
                                  config, selection_seeds(config, seeds), tuple(scores),
                                  tuple(run_ids), mean, std)
            candidates.append(candidate)
            run.log_metrics(_candidate_metrics(candidate, metric))
            _say(f"rank {rank} trial {trial.trial_id}: {metric} "
                 f"{', '.join(f'{s:.4f}' for s in scores)} -> mean {mean:.4f} ± {std:.4f}")
            # keep only the checkpoints of the best candidate so far (disk: two candidates at
            # most, plus those the workers are writing ahead)
            previous = leader
            if math.isfinite(candidate.mean):
                leader = choose([c for c in (leader, candidate) if c is not None], mode)
            for loser in (previous, candidate):
                if loser is not None and loser is not leader:
                    shutil.rmtree(workdir / f"rank{loser.rank}", ignore_errors=True)
    finally:
        results.close()  # on an error: cancel the trainings not started yet

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

    # ---- the handed-over model, chosen on validation too
    checkpoints = [str(workdir / f"rank{chosen.rank}" / f"seed-{s}") for s in chosen.seeds]
    handover = _hand_over(chosen, checkpoints, data, metric=metric, mode=mode, ensemble=ensemble,
                          ensemble_dir=workdir / "ensemble")
    run.log_metrics({f"single_{metric}": handover.single_val,
                     **({f"ensemble_{metric}": handover.ensemble_val}
                        if handover.ensemble_val is not None else {})})
    run.set_tags({"tunebert.handed_over": handover.kind,
                  "tunebert.handed_over_seed": handover.seed if handover.kind == "single" else ""})
    _say(f"handed over: {handover.describe(metric)}; now, and only for the chosen config, the test "
         f"split")

    # ---- the test split: the chosen config's seed models, and the handed-over model once
    per_model = evaluate_on_test(checkpoints + ([handover.folder] if handover.kind == "ensemble"
                                                else []), data, chosen.config)
    per_seed = per_model[:len(checkpoints)]
    test_rows = []
    chosen_cfg = registry.config_class(chosen.config["trainable"]).from_dict(chosen.config)
    step = getattr(chosen_cfg, "total_epochs", chosen_cfg.epochs)  # as train_config logs test
    for seed, run_id, metrics, directory in zip(chosen.seeds, chosen.run_ids, per_seed, checkpoints):
        tracking.annotate_run(uri, run_id, metrics=metrics, step=step)
        tracking.log_model(uri, run_id, directory, "model", lineage=tracking.lineage_tags(
            sweep=sweep, trial_id=chosen.trial_id, run_id=run_id, data_fingerprint=fingerprint,
            kind="single", data=data.source))
        test_rows.append({"seed": seed, "run_id": run_id, **metrics})
        if output_dir:  # swapped in for an earlier selection's model (check_output_dir)
            with outputs.replacing(Path(output_dir) / f"seed-{seed}", _IN_OUTPUT_DIR) as new:
                shutil.copytree(directory, new)
    handed_metrics = per_model[-1] if handover.kind == "ensemble" else \
        next(r for r in test_rows if r["seed"] == handover.seed)
    handed_over_test = {k: handed_metrics[k] for k in ("test_accuracy", "test_macro_f1")}
    model_dir = None
    if output_dir and ensemble:
        model_dir = Path(output_dir) / "model"
        with outputs.replacing(model_dir, _IN_OUTPUT_DIR) as new:
            shutil.copytree(handover.folder, new)
    elif output_dir:  # the best seed's folder, kept above, is the handed-over model
        model_dir = Path(output_dir) / f"seed-{handover.seed}"
    logged = tracking.log_model(
        uri, run.run_id, str(handover.folder), "handed_over_model", register_as=register_model,
        lineage=tracking.lineage_tags(sweep=sweep, trial_id=chosen.trial_id, run_id=run.run_id,
                                      data_fingerprint=fingerprint, kind=handover.kind,
                                      data=data.source))
    _say(f"MLflow model: {logged.uri}"
         + (f", registered as {logged.registered_uri}" if logged.registered_uri else ""))
    acc_mean, acc_std = mean_std(r["test_accuracy"] for r in test_rows)
    f1_mean, f1_std = mean_std(r["test_macro_f1"] for r in test_rows)
    run.log_metrics({f"chosen_{metric}_mean": chosen.mean, f"chosen_{metric}_std": chosen.std,
                     "test_accuracy_mean": acc_mean, "test_accuracy_std": acc_std,
                     "test_macro_f1_mean": f1_mean, "test_macro_f1_std": f1_std,
                     **{f"test_accuracy_seed{r['seed']}": r["test_accuracy"] for r in test_rows},
                     **{f"test_macro_f1_seed{r['seed']}": r["test_macro_f1"] for r in test_rows},
                     **{f"handed_over_{k}": v for k, v in handed_over_test.items()}})
    result = SelectionResult(sweep, metric, mode, run.run_id, uri, tuple(candidates), chosen,
                             tuple(test_rows), acc_mean, acc_std, f1_mean, f1_std,
                             str(Path(output_dir).resolve()) if output_dir else None,
                             handed_over=handover.kind, single_val=handover.single_val,
                             ensemble_val=handover.ensemble_val, handed_over_test=handed_over_test,
                             model_dir=str(model_dir.resolve()) if model_dir else None,
                             single_seed=handover.seed)
    reports = workdir / "report"
    reports.mkdir()
    (reports / "selection.json").write_text(json.dumps(result.to_dict(), indent=2))
    (reports / "selection.md").write_text(result.markdown())
    (reports / "chosen_config.yaml").write_text(yaml.safe_dump(chosen.config, sort_keys=True))
    for name in ("selection.json", "selection.md", "chosen_config.yaml"):
        run.log_artifact(str(reports / name))
    print()
    print(result.markdown(), flush=True)
    return result


@dataclass(frozen=True)
class _Handover:
    kind: str                       # "single" or "ensemble"
    folder: str                     # the handed-over model's folder (in the work folder)
    seed: int                       # the best seed model's seed
    single_val: float
    ensemble_val: Optional[float]
    members: int

    def describe(self, metric: str) -> str:
        single = f"best seed model (seed {self.seed}) {metric} {_fmt(self.single_val)}"
        if self.ensemble_val is None:
            return f"the {single}"
        ensemble = f"ensemble of {self.members} seed models {_fmt(self.ensemble_val)}"
        return f"the {self.kind} ({single}; {ensemble})"


def _hand_over(chosen: Candidate, checkpoints: list[str], data: DataConfig, *, metric: str,
               mode: str, ensemble: bool, ensemble_dir: Path) -> _Handover:
    """The model to hand over, chosen on validation only: the best seed model, or the ensemble
    of all seed models unless it scores below their mean (the best seed's score is the maximum of
    several noisy draws, so it is no fair bar). Without ``ensemble`` the seed models' scores are
    those their training runs reported; with it, every seed model and the ensemble are scored
    again, on the saved models and by the same evaluation, so they compare like for like."""
    if not ensemble:
        seed, score = best_seed(chosen.seeds, chosen.scores, mode)
        return _Handover("single", checkpoints[chosen.seeds.index(seed)], seed, score, None, 1)
    from trainables.export import save_ensemble_model  # local: keeps torch off --help

    save_ensemble_model(ensemble_dir, checkpoints)
    scores = [m[metric] for m in evaluate_folders(checkpoints + [str(ensemble_dir)], data,
                                                  chosen.config, "validation")]
    seed, single_val = best_seed(chosen.seeds, scores[:-1], mode)
    wins = ensemble_wins(scores[-1], scores[:-1], mode)
    folder = str(ensemble_dir) if wins else checkpoints[chosen.seeds.index(seed)]
    return _Handover("ensemble" if wins else "single", folder, seed, single_val, scores[-1],
                     len(checkpoints))


# --------------------------------------------------------------------------- rendering


def _fmt(value: float) -> str:
    return f"{value:.4f}" if math.isfinite(value) else "nan"


def render_markdown(result: SelectionResult) -> str:
    """The selection table and the chosen config's test result, as Markdown."""
    m = result.metric
    n = max(len(c.seeds) for c in result.candidates)
    head = (["rank", "trial", f"sweep {m}"] + [f"seed+{FIRST_SEED_OFFSET + j}" for j in range(n)]
            + [f"mean {m}", "std", "chosen"])
    lines = [f"# Final selection for sweep `{result.sweep}`", "",
             f"Top {len(result.candidates)} trial(s) by `{m}` ({result.mode}), re-trained with "
             f"{n} fresh seed(s) each (the config's seed + {_offsets(n)}) on train, scored on validation "
             f"only. Chosen: best mean; ties go to the lower std (sample, n-1), then the better "
             f"rank.", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for c in result.candidates:
        cells = ([str(c.rank), c.trial_id, _fmt(c.sweep_score)] + [_fmt(s) for s in c.scores]
                 + [""] * (n - len(c.scores))
                 + [_fmt(c.mean), _fmt(c.std), "**yes**" if c.chosen else ""])
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", f"Test split, chosen config (rank {result.chosen.rank}, trial "
                  f"{result.chosen.trial_id}), {len(result.test)} seed model(s), evaluated once "
                  f"after the choice:", "",
              f"- test accuracy: **{_fmt(result.test_accuracy_mean)} ± "
              f"{_fmt(result.test_accuracy_std)}**",
              f"- test macro-F1: {_fmt(result.test_macro_f1_mean)} ± "
              f"{_fmt(result.test_macro_f1_std)}",
              "", "| seed | test accuracy | test macro-F1 |", "|---|---|---|"]
    lines += [f"| {r['seed']} | {_fmt(r['test_accuracy'])} | {_fmt(r['test_macro_f1'])} |"
              for r in result.test]
    lines += ["", "## Handed-over model", "",
              f"Chosen on validation, before the test split was read: the best seed model, or the "
              f"ensemble of the chosen config's {len(result.test)} seed models (mean of their "
              f"probabilities) unless it scores below the seed models' mean (the best seed's score is the "
              f"maximum of {len(result.test)} noisy draws, no fair bar).", "",
              f"| model | {m} | handed over |", "|---|---|---|",
              f"| best seed model (seed {result.single_seed}) | {_fmt(result.single_val)} | "
              f"{'**yes**' if result.handed_over == 'single' else ''} |"]
    if result.ensemble_val is None:
        lines.append("| ensemble of the seed models | not tried (`--ensemble`) | |")
    else:
        lines.append(f"| ensemble of the {len(result.test)} seed models | "
                     f"{_fmt(result.ensemble_val)} | "
                     f"{'**yes**' if result.handed_over == 'ensemble' else ''} |")
    test = result.handed_over_test
    lines += ["", f"Handed-over model ({result.handed_over}) on test: accuracy "
                  f"**{_fmt(test.get('test_accuracy', math.nan))}**, macro-F1 "
                  f"{_fmt(test.get('test_macro_f1', math.nan))}."]
    if result.model_dir:
        lines += ["", f"Folder: `{result.model_dir}` (`tunebert predict {result.model_dir} TEXT`)."]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- the CLI subcommand


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", help="the sweep")
    p.add_argument("--top-k", type=int, default=3,
                   help="how many of the sweep's best configs (default: 3)")
    p.add_argument("--seeds", type=int, default=3,
                   help="fresh seeds per config: the config's seed + 1..SEEDS (default: 3)")
    p.add_argument("--metric", default="val_accuracy",
                   help="validation metric to rank and choose by (default: val_accuracy)")
    p.add_argument("--mode", choices=["max", "min"], default="max")
    p.add_argument("--epochs", type=int, default=None, help="override every config's epochs")
    p.add_argument("--output-dir", help="also keep the chosen config's seed models here "
                                        "(seed-<seed>/), and with --ensemble the handed-over "
                                        "model (model/); an earlier tunebert model there is "
                                        "replaced, nothing else in the folder is touched")
    p.add_argument("--ensemble", action="store_true",
                   help="also try the chosen config's seed models as one ensemble (mean of their "
                        "probabilities); it is handed over unless it scores below the seed "
                        "models' mean on validation (needs --seeds >= 2)")
    p.add_argument("--workers", type=int, default=1,
                   help="trainings at a time, each in its own process on its share of the CPU "
                        "cores (default: 1)")
    p.add_argument("--register-model", metavar="NAME", default=None,
                   help="also register the handed-over model in the MLflow Model Registry as a "
                        "new version of NAME, tagged with its sweep, trial, run and data "
                        "fingerprint")
    g = p.add_argument_group("data (default: the sweep's own)")
    g.add_argument("--data", default=None, help="'demo', a folder with train/validation/test files, "
                                                "or hf:<hub dataset id>")
    g.add_argument("--text-column", default=None, help="column holding the text")
    g.add_argument("--label-column", default=None, help="column holding the label")
    g = p.add_argument_group("where results go")
    g.add_argument("--storage", default=DEFAULT_ROOT,
                   help="the sweep's storage root (default: ./tunebert-runs)")
    g.add_argument("--tracking-uri", default=None,
                   help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else "
                        "sqlite:///<storage>/mlflow.db)")
    p.add_argument("--smoke-test", action="store_true",
                   help="top 2 x 1 seed (2 with --ensemble), 1 epoch on at most 64 training "
                        "examples (checks the wiring)")


def run(args) -> int:
    top_k, seeds, epochs, limit = args.top_k, args.seeds, args.epochs, None
    if args.smoke_test:
        top_k, seeds, epochs, limit = min(top_k, 2), 2 if args.ensemble else 1, 1, 64
    check_arguments(args.name, top_k, seeds, args.metric, args.mode, epochs,
                    ensemble=args.ensemble, workers=args.workers)
    data = resolve_data(args.name, args.storage, args.data, args.text_column, args.label_column)
    result = final_selection(args.name, top_k, seeds, args.metric, args.tracking_uri, args.storage,
                             data, mode=args.mode, epochs=epochs, max_train_examples=limit,
                             output_dir=args.output_dir, ensemble=args.ensemble,
                             workers=args.workers,
                             register_model=getattr(args, "register_model", None))
    _say(f"MLflow: {redact(result.tracking_uri)} (experiment {result.sweep!r}, run {result.run_id}; "
         f"selection.md, selection.json, chosen_config.yaml; model "
         f"runs:/{result.run_id}/handed_over_model)")
    if result.output_dir:
        _say(f"chosen models: {result.output_dir}")
    if result.model_dir:
        _say(f"handed-over model ({result.handed_over}): {result.model_dir}; "
             f"predict with: tunebert predict {result.model_dir} TEXT")
    return 0
