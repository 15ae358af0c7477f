"""The argument groups several commands share (data, store, sweep, objectives); the settings they
turn into are ``tuning.settings``'s, which the commands' run functions read."""

from __future__ import annotations

import argparse
import re
from typing import Optional

from trainables.data import DEFAULT_VAL_FRACTION
from trainables.hparams import HPARAMS, choices_of
from tuning.config import SCHEDULERS, SEARCHERS, TRAINABLE_CHOICES
# the option defaults are SweepConfig's; the other names are re-exported for tests
from tuning.settings import EXIT_USER_ERROR, _default, data_options  # noqa: F401


def _doc(name: str) -> str:
    """A hyperparameter's doc line and default, from the registry."""
    p = HPARAMS[name]
    return f"{p.doc} (default: {p.default})"


def _duration(text: str) -> float:
    """Seconds from '600', '90s', '45m', '2h' or '1h30m'."""
    match = re.fullmatch(r"\s*(?:(\d+(?:\.\d+)?)h)?\s*(?:(\d+(?:\.\d+)?)m)?\s*(?:(\d+(?:\.\d+)?)s?)?\s*", text)
    if not text.strip() or not match or not any(match.groups()):
        raise argparse.ArgumentTypeError(f"expected a duration such as 600, 45m, 2h or 1h30m, got {text!r}")
    h, m, s = (float(g) if g else 0.0 for g in match.groups())
    return h * 3600 + m * 60 + s


def _token_cache(text: str) -> Optional[bool]:
    choices = {"auto": None, "on": True, "off": False}
    if text not in choices:
        raise argparse.ArgumentTypeError(f"expected auto, on or off, got {text!r}")
    return choices[text]


def _add_data_args(p: argparse.ArgumentParser, *, defaults: bool = True) -> None:
    """``defaults=False`` (train): left unset, so that --from-sweep can tell given from default."""
    g = p.add_argument_group("data")
    default = ("demo", "text", "label") if defaults else (None, None, None)
    where = "" if defaults else "the sweep's own with --from-sweep, else "
    g.add_argument("--data", default=default[0],
                   help="'demo' (built-in), a folder with train/validation/test files (.jsonl, "
                        ".json, .csv, .tsv, .parquet), or hf:<hub dataset id>; joint intent + slot "
                        "data: seq.in/seq.out(/label) split folders, token rows (tokens + tags "
                        "columns) or CoNLL files, trained by multitask configs "
                        f"(default: {where}demo)")
    g.add_argument("--text-column", default=default[1],
                   help=f"column holding the text (default: {where}text)")
    g.add_argument("--label-column", default=default[2],
                   help=f"column holding the label (default: {where}label)")
    # the rest default to None ("not given"); DataConfig declares the defaults
    g.add_argument("--val-fraction", type=float, default=None, metavar="F",
                   help="carve a stratified validation split of this share of train (for data "
                        "without one; refused when the data has one, unless --split-names "
                        f"validation=none) (default: {where}{DEFAULT_VAL_FRACTION}, only when the "
                        "data has no validation split)")
    g.add_argument("--split-seed", type=int, default=None,
                   help=f"seed of that validation split (default: {where}0)")
    g.add_argument("--delimiter", default=None,
                   help="CSV delimiter: , ; tab or | (default: detected; tab for .tsv)")
    g.add_argument("--split-names", default=None, metavar="ROLE=NAME,...",
                   help="the dataset's own split (or file) names, e.g. "
                        "train=train,validation=dev,test=eval; validation=none carves validation "
                        "from train (default: train; validation, val, dev or valid; test)")
    g.add_argument("--second-data", default=None, metavar="SOURCE",
                   help="a second dataset trained beside --data by a multitask config, one task "
                        "each: e.g. --data intents/ (texts + labels) --second-data ner/ (CoNLL "
                        "files); read with the same column and split options")
    g.add_argument("--tokens-column", default=None,
                   help="token rows: the column holding each row's words (default: tokens)")
    g.add_argument("--tags-column", default=None,
                   help="token rows: the column holding each row's BIO tags (default: tags)")
    g.add_argument("--skip-bad-rows", action="store_true", default=None,
                   help="drop rows with an empty text or a missing label and list them "
                        "(default: refuse such data, naming the rows)")
    g.add_argument("--token-cache", default=None, type=_token_cache, metavar="auto|on|off",
                   help="tokenize the data folder once into a memory-mapped cache that trials "
                        "read without holding the data in memory (for data bigger than memory; "
                        "shards such as train-*.jsonl.gz) (default: auto: on for sharded, "
                        "compressed or >= 256 MiB train files)")
    g.add_argument("--cache-dir", default=None, metavar="DIR",
                   help="where the token cache lies (default: <storage>/token-cache for a sweep, "
                        "else $TUNEBERT_CACHE_DIR or ~/.cache/tunebert/token-cache)")


def _add_store_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("where results go")
    g.add_argument("--storage", default="tunebert-runs",
                   help="root folder for Ray Tune state, checkpoints and the default MLflow store "
                        "(default: ./tunebert-runs)")
    g.add_argument("--tracking-uri", default=None,
                   help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else "
                        "sqlite:///<storage>/mlflow.db)")


def add_sweep_arguments(p: argparse.ArgumentParser, *, time_budget_default: Optional[float] = None,
                        time_budget_help: str = "stop starting/running trials after this long "
                                                "(e.g. 2h, 45m)") -> None:
    """The options that define a sweep (read back by ``sweep_settings``); `sweep` and `tune` use them."""
    p.add_argument("--name", help="sweep name (default: sweep-<date>-<time>); resume uses it")
    p.add_argument("--trainable", choices=TRAINABLE_CHOICES, default=None,
                   help="what each trial trains: fine-tuning, contrastive pretraining + classifier "
                        "(SupCon/SimCLR), a cheap baseline from scratch (tfidf: TF-IDF + logistic "
                        "regression; bilstm: a BiLSTM with attention pooling; docs/baselines.md), "
                        "any (one of these, the family is searched too), or multitask "
                        "(joint intent + slot data: one encoder, a sentence and a token head) "
                        f"(default: multitask for joint data, else {_default('trainable')})")
    p.add_argument("--model", default=_default("model"), help=_doc("model"))
    p.add_argument("--max-length", type=int, default=_default("max_length"), help=_doc("max_length"))
    p.add_argument("--trials", type=int, default=_default("num_trials"),
                   help="number of trials (default: %(default)s)")
    p.add_argument("--time-budget", type=_duration, default=time_budget_default, help=time_budget_help)
    p.add_argument("--epochs", type=int, default=_default("epochs"), help=_doc("epochs"))
    p.add_argument("--eval-every", default=None, metavar="N|Nex",
                   help="evaluate, report and checkpoint every N optimizer steps (500, '500 steps') "
                        "or N examples (20000ex, '20000 examples') instead of every epoch, for "
                        "corpora where an epoch takes hours: ASHA's rungs, --grace-period and "
                        "--perturbation-interval count these rounds (fine-tuning only; "
                        "docs/tune.md#budgets-in-steps) (default: per epoch)")
    p.add_argument("--space", dest="space_file", help="YAML file that narrows/widens/fixes/drops "
                                                      "parameters (see `tunebert space`)")
    p.add_argument("--warm-start", default="",
                   help="comma-separated presets or config files to try first, e.g. "
                        "llrd_warmup,warmup or best.yaml (see `tunebert presets`)")
    p.add_argument("--searcher", choices=SEARCHERS, default=_default("searcher"))
    p.add_argument("--scheduler", choices=SCHEDULERS, default=_default("scheduler"),
                   help="asha: stop weak trials early; none: run every trial to the end; pbt/pb2: "
                        "population based training, weak trials clone strong ones and mutate "
                        "--mutate (for clusters with many workers) (default: %(default)s)")
    p.add_argument("--grace-period", type=int, default=_default("grace_period"),
                   help="ASHA: epochs before a trial can be stopped (default: %(default)s)")
    p.add_argument("--reduction-factor", type=int, default=_default("reduction_factor"),
                   help="ASHA: keep the best 1/N of the trials at each rung (default: %(default)s)")
    p.add_argument("--perturbation-interval", type=int, default=_default("perturbation_interval"),
                   help="pbt/pb2: epochs between perturbations (default: %(default)s)")
    p.add_argument("--quantile-fraction", type=float, default=_default("quantile_fraction"),
                   help="pbt/pb2: the worst fraction of the population clones the best fraction "
                        "(default: %(default)s)")
    p.add_argument("--mutate", default=",".join(_default("mutate")),
                   help="pbt/pb2: comma-separated numeric parameters of the space to mutate "
                        "(default: %(default)s)")
    p.add_argument("--asynchronous", dest="synchronous", action="store_false",
                   help="pbt/pb2: rank each trial when it reaches an interval, against the others' "
                        "latest scores, instead of waiting until all members reach the same epoch")
    p.add_argument("--seed", type=int, default=_default("seed"), help="seed of the sampler and of every trial")
    p.add_argument("--precision", choices=choices_of("precision"), default=_default("precision"),
                   help=_doc("precision"))
    g = p.add_argument_group("resources")
    g.add_argument("--address", help="join an existing Ray cluster (e.g. auto or ray://host:10001); "
                                     "default: start Ray locally")
    g.add_argument("--cpus-per-trial", type=float, default=_default("cpus_per_trial"))
    g.add_argument("--gpus-per-trial", type=float, default=_default("gpus_per_trial"),
                   help="fractions allowed, e.g. 0.5; a whole number N above 1 trains each trial "
                        "data-parallel on N workers of one GPU each")
    g.add_argument("--workers-per-trial", type=int, default=_default("workers_per_trial"),
                   help="train each trial data-parallel on this many Ray Train workers, each "
                        "holding --cpus-per-trial CPUs (finetune trials; see docs/cluster.md) "
                        "(default: %(default)s)")
    g.add_argument("--max-concurrent", type=int, default=None, help="cap on trials running at once")
    g.add_argument("--wait-for-nodes", action="store_true",
                   help="with --address: queue trials even when no node has --cpus-per-trial/"
                        "--gpus-per-trial yet, because an autoscaler will add one (otherwise "
                        "refused: the trials would wait forever)")
    g.add_argument("--max-failures", type=int, default=_default("max_failures"),
                   help="retries of a crashed trial from its checkpoint")
    g.add_argument("--keep-checkpoints", type=int, default=_default("keep_checkpoints"),
                   help="checkpoints kept per running trial; a trial that has ended keeps only "
                        "its best epoch's model (default: %(default)s)")
    _add_data_args(p)
    _add_store_args(p)


def add_objective_arguments(p: argparse.ArgumentParser) -> None:
    """What `sweep` and `tune` optimise (read back by ``objective_settings``)."""
    g = p.add_argument_group("objectives and constraints")
    g.add_argument("--metric", default=None,
                   help=f"the metric to optimise (default: {_default('metric')}); see --objective "
                        f"for several")
    g.add_argument("--mode", choices=["max", "min"], default=None,
                   help=f"direction of --metric (default: {_default('mode')})")
    g.add_argument("--objective", action="append", default=[], metavar="METRIC:MODE",
                   help="repeatable: optimise several metrics at once, e.g. --objective "
                        "val_accuracy:max --objective latency_ms_p50:min (Optuna multi-objective "
                        "TPE; ASHA stops on the first, which must be reported every epoch; "
                        "`tunebert best --front` lists the Pareto front)")
    g.add_argument("--constraint", action="append", default=[], metavar="METRIC<=X",
                   help="repeatable: a trial must meet METRIC<=X or METRIC>=X to be feasible, e.g. "
                        "latency_ms_p50<=5, size_mb<=100, peak_memory_mb<=4000; an infeasible "
                        "trial (or one that never reported METRIC) is never best")
