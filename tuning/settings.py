"""The parsed command line as settings: the keyword arguments of ``SweepConfig`` and
``DataConfig`` that ``tunebert sweep`` and ``tune`` read, and the exit status of a user mistake.

A base module (no command, no heavy import): the CLI's argument groups (``tuning.cli.arguments``)
define the options, and the commands that run below the CLI turn them into configs here."""

from __future__ import annotations

import dataclasses
from typing import Any

from trainables.data import DataConfig
from trainables.errors import ConfigError
from trainables.task_data import MULTITASK, is_multitask_data
from tuning.config import Constraint, Objective, SweepConfig

EXIT_USER_ERROR = 2  # a user mistake: one `tunebert <cmd>: error: ...` line, no traceback


def _default(name: str) -> Any:
    """A sweep setting's default, as ``SweepConfig`` declares it (said once, read here)."""
    f = next(f for f in dataclasses.fields(SweepConfig) if f.name == name)
    return f.default


def data_options(args) -> dict[str, Any]:
    """``DataConfig`` keyword arguments for the data options besides --data/--text-column/
    --label-column that were given (``_add_data_args``)."""
    given = {"val_fraction": args.val_fraction, "split_seed": args.split_seed,
             "delimiter": args.delimiter, "split_names": args.split_names,
             "skip_bad_rows": args.skip_bad_rows, "second_source": args.second_data,
             "tokens_column": args.tokens_column, "tags_column": args.tags_column,
             "token_cache": getattr(args, "token_cache", None), "cache_dir": getattr(args, "cache_dir", None)}
    return {k: v for k, v in given.items() if v is not None}


def objective_settings(args) -> dict[str, Any]:
    """``SweepConfig`` keyword arguments from ``add_objective_arguments``' options."""
    objectives = [Objective.parse(text) for text in args.objective]
    settings: dict[str, Any] = {"constraints": tuple(str(Constraint.parse(c)) for c in args.constraint)}
    if objectives:
        first = objectives[0]
        if (args.metric or first.metric, args.mode or first.mode) != (first.metric, first.mode):
            raise ConfigError(f"--metric/--mode ({args.metric}:{args.mode}) disagree with the first "
                              f"--objective ({first}); give one or the other")
        settings.update(metric=first.metric, mode=first.mode,
                        objectives=tuple(str(o) for o in objectives) if len(objectives) > 1 else ())
    else:
        settings.update(metric=args.metric or _default("metric"), mode=args.mode or _default("mode"))
    return settings


def chosen_trainable(args) -> str:
    """--trainable as given; left out, ``multitask`` for joint intent + slot data (its layout has
    word tags, or --second-data is given), else the default family."""
    if args.trainable is not None:
        return args.trainable
    data = DataConfig(args.data, args.text_column, args.label_column, **data_options(args))
    return MULTITASK if is_multitask_data(data) else _default("trainable")


def sweep_settings(args) -> dict[str, Any]:
    """``SweepConfig`` keyword arguments from the options ``add_sweep_arguments`` added."""
    settings: dict[str, Any] = dict(
        trainable=chosen_trainable(args),
        data=DataConfig(args.data, args.text_column, args.label_column, **data_options(args)),
        model=args.model,
        max_length=args.max_length, epochs=args.epochs, eval_every=args.eval_every,
        num_trials=args.trials,
        time_budget_s=args.time_budget, max_concurrent=args.max_concurrent,
        cpus_per_trial=args.cpus_per_trial, gpus_per_trial=args.gpus_per_trial,
        workers_per_trial=args.workers_per_trial,
        storage=args.storage, tracking_uri=args.tracking_uri, address=args.address,
        max_failures=args.max_failures, keep_checkpoints=args.keep_checkpoints, seed=args.seed,
        precision=args.precision, space_file=args.space_file,
        warm_start=tuple(s.strip() for s in args.warm_start.split(",") if s.strip()),
        searcher=args.searcher, scheduler=args.scheduler, grace_period=args.grace_period,
        reduction_factor=args.reduction_factor, perturbation_interval=args.perturbation_interval,
        quantile_fraction=args.quantile_fraction, synchronous=args.synchronous,
        wait_for_nodes=args.wait_for_nodes,
        mutate=tuple(s.strip() for s in args.mutate.split(",") if s.strip()))
    if args.name:
        settings["name"] = args.name
    return settings
