"""``tunebert train``: train one config (a file, a preset or a sweep's best) and test it."""

from __future__ import annotations

import dataclasses
from typing import Any

import yaml

from search_spaces.presets import get_preset
from trainables import task_data
from trainables.data import DataConfig
from trainables.errors import ConfigError, UserError
from tuning.config import load_config_file, load_saved_sweep
from tuning.results.selection import resolve_data
from tuning.results.train import check_output_dir, train_config
from tuning.settings import data_options
from tuning.tracking import reachable_store
from tuning.tracking.best import best_run


def _parse_set(items: list[str]) -> dict[str, Any]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UserError(f"--set expects KEY=VALUE, got {item!r}")
        out[key.strip()] = yaml.safe_load(value)
    return out


def run(args) -> int:
    """``tunebert train``."""
    uri = reachable_store(args.tracking_uri, args.storage)
    experiment = args.experiment or "tunebert-train"
    tags = {}
    if args.config:
        config = load_config_file(args.config)
    elif args.preset:
        config = get_preset(args.preset)
    else:
        best = best_run(args.from_sweep, tracking_uri=args.tracking_uri, storage=args.storage)
        config = dict(best.config)
        experiment = args.experiment or args.from_sweep
        tags.update({"tunebert.from_sweep": args.from_sweep, "tunebert.from_trial_id": best.trial_id,
                     "tunebert.from_trial_run_id": best.run_id})
    config.update(_parse_set(args.set))
    if args.model:
        config["model"] = args.model
    if args.smoke_test:
        config.update(epochs=1, stop_epoch=None)
    check_output_dir(args.output_dir)
    outcome = train_config(config, _train_data(args), tracking_uri=uri, experiment=experiment,
                           output_dir=args.output_dir, tags=tags,
                           max_train_examples=64 if args.smoke_test else None,
                           register_model=args.register_model)
    if outcome.checkpoint_dir:
        print(f"[tunebert] model folder: {outcome.checkpoint_dir} "
              f"(tunebert predict {outcome.checkpoint_dir} TEXT)")
    print(f"[tunebert] MLflow model: {outcome.model_uri}"
          + (f", registered as {outcome.registered_uri}" if outcome.registered_uri else ""),
          flush=True)
    return 0


def _train_data(args):
    """The data `tunebert train` uses: with --from-sweep the sweep's own (as `select`), where other
    data, or the same folder with changed contents, is refused unless --other-data says it is
    meant; else --data or the demo."""
    given = {k: v for k, v in (("source", args.data), ("text_column", args.text_column),
                               ("label_column", args.label_column)) if v is not None}
    given.update(data_options(args))
    if not args.from_sweep:
        return DataConfig(**given)
    try:
        swept = resolve_data(args.from_sweep, args.storage)
    except ConfigError:
        if "source" not in given:
            raise
        return DataConfig(**given)  # the sweep's settings are not here: the data given is all we know
    asked = DataConfig(**{**swept.to_dict(), **given})
    if args.other_data:  # other data: the rows the sweep carved as validation are not its own
        return dataclasses.replace(asked, validation_ids=None)
    if asked.anchored() != swept.anchored():
        split_changes = {k: v for k, v in asked.to_dict().items()
                         if k in data_options(args) and swept.to_dict()[k] != v}
        raise ConfigError(
            f"sweep {args.from_sweep!r} was tuned on --data {swept.source!r} (text column "
            f"{swept.text_column!r}, label column {swept.label_column!r}), but this command asks "
            f"for {asked.source!r} ({asked.text_column!r}/{asked.label_column!r}"
            f"{''.join(f', {k}={v!r}' for k, v in split_changes.items())}): the test score "
            f"would not be the tuned config's on its own data, yet it would be logged in the "
            f"sweep's experiment. Leave out --data/--text-column/--label-column (and the other "
            f"data options) to train on the "
            f"sweep's data, or add --other-data to train on other data on purpose.")
    saved = load_saved_sweep(args.from_sweep, args.storage)
    family = "contrastive" if saved.trainable == "any" else saved.trainable
    if saved.data_fingerprint and task_data.fingerprint_of(asked, family) != saved.data_fingerprint:
        raise ConfigError(
            f"the data of sweep {args.from_sweep!r} ({swept.source!r}) changed since the sweep ran "
            f"(its fingerprint differs): the test score would not be the tuned config's on the data "
            f"it was tuned on. Put the original files back, or add --other-data to train on the "
            f"data as it is now.")
    return asked
