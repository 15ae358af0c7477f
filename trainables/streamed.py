"""Data bigger than memory: a folder of split files tokenized once into the memory-mapped token
cache (``trainables.token_cache``) instead of being read whole (issue 24).

Which path a dataset takes is ``DataConfig.token_cache``: ``True`` (``--token-cache on``), ``False``
(``off``: read into memory, as always) or ``None`` (``auto``, the default): the cache for a local
folder whose splits come in shards (``train-00000.jsonl.gz``, ``train-*.parquet``), compressed
(``.gz``, ``.bz2``, ``.xz``, ``.zst``) or weigh ``STREAM_FROM_BYTES`` or more; memory otherwise.

A split's files are those named for its role (``train``, ``validation``/``val``/``dev``/``valid``,
``test``, or the names ``--split-names`` gives), alone or followed by ``-``, ``_`` or ``.`` and
a shard number (``train-00003``, ``train-00000-of-00004``), in one format (JSON Lines, CSV or
Parquet). Without a validation split one is
carved from train by ``cache_carve.carve`` (a key threshold, stratified by label, seeded by
``--split-seed``: the same rows on every load, in O(labels) memory; not row-for-row the
in-memory path's carve, which sorts each label's keys).

The cache lies under ``DataConfig.cache_dir``: a sweep sets it to ``<storage>/token-cache`` (its
shared storage; ``tuning.sweep.prepare``), so that its trials, its selection and a later
``train --from-sweep`` reuse it; otherwise ``$TUNEBERT_CACHE_DIR`` or ``~/.cache/tunebert/token-cache``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Callable, Optional

from trainables.data import (DEFAULT_VAL_FRACTION, NO_SPLIT, SPLIT_ALIASES, DataConfig, TokenizedData,
                             _locate, check_max_length, parse_split_names)
from trainables.errors import ConfigError, DataError
from trainables.labels import SPLITS
from trainables.tagging_files import detect_layout
from trainables.cache_carve import carve
from trainables.token_cache import COMPRESSED, CachedSplit, format_of, cached_split

# a train split this large is tokenized into the cache under --token-cache auto
STREAM_FROM_BYTES = 256 * 2**20
CACHE_ENV = "TUNEBERT_CACHE_DIR"


def default_cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "tunebert" / "token-cache")


def split_files(folder: Path, config: DataConfig) -> dict[str, list[Path]]:
    """The files of each role (sorted; an empty list for a validation split the data lacks or
    ``--split-names validation=none`` sets aside). Train and test must have files."""
    names = dict(parse_split_names(config.split_names))
    files = sorted(p for p in folder.iterdir() if p.is_file() and format_of(p.name))
    found: dict[str, list[Path]] = {}
    for role in SPLITS:
        wanted = [names[role]] if role in names else list(SPLIT_ALIASES[role])
        if wanted == [NO_SPLIT]:
            found[role] = []
            continue
        for name in wanted:
            # the split's name alone or with a shard number: train.jsonl, train-00003.jsonl.gz,
            # train-00000-of-00004.parquet (a train-old.jsonl beside them is no shard of train)
            pattern = re.compile(rf"{re.escape(name)}([-_.]\d+(-of-\d+)?)?\.[a-z]+(\.[a-z0-9]+)?", re.IGNORECASE)
            matched = [p for p in files if pattern.fullmatch(p.name) and _role_free(p, found)]
            if matched:
                found[role] = matched
                break
        else:
            if role != "validation":
                raise DataError(
                    f"data folder {folder} has no {role} files: name them {wanted[0]}.jsonl, or "
                    f"{wanted[0]}-00000.jsonl.gz ... for shards (.jsonl, .csv or .parquet, "
                    f"optionally compressed), or say which files are {role} with --split-names "
                    f"{role}=NAME. Its data files: {[p.name for p in files][:8]}")
            found[role] = []
    return found


def _role_free(path: Path, found: dict[str, list[Path]]) -> bool:
    return all(path not in taken for taken in found.values())


def is_streamed(config: DataConfig) -> bool:
    """Whether ``config``'s data goes through the token cache (see the module's docstring)."""
    if config.token_cache is not None:
        return config.token_cache
    try:
        kind, where = _locate(config)
    except DataError:
        return False  # the in-memory reader says what is wrong
    if kind != "folder" or config.source == "demo" or config.second_source is not None:
        return False
    try:
        if detect_layout(Path(where), config) != "text":
            return False  # joint intent + slot data (word tags) is read into memory
    except ConfigError:
        pass  # no layout the in-memory readers know (shards, compressed files): see below
    try:
        found = split_files(Path(where), config)
    except DataError:
        return False  # the in-memory reader names what is wrong with the folder
    # shards: several files of one split in one format (train.jsonl beside train.csv is no set of
    # shards: the in-memory reader refuses it, naming both)
    if any(len(paths) > 1 and len({format_of(p.name) for p in paths}) == 1 for paths in found.values()):
        return True
    every = [p for paths in found.values() for p in paths]
    return (any(p.name.lower().endswith(COMPRESSED) for p in every)
            or sum(p.stat().st_size for p in found["train"]) >= STREAM_FROM_BYTES)


def _folder(config: DataConfig) -> Path:
    kind, where = _locate(config)
    if kind != "folder" or config.source == "demo":
        raise DataError(f"--token-cache on: --data {config.source!r} is not a local folder; the "
                        f"token cache reads a folder of split files. Save a hub dataset's splits "
                        f"as .parquet or .jsonl shards in a folder, or use --token-cache off.")
    return Path(where)


def fingerprint(config: DataConfig) -> str:
    """What the streamed data is, without reading it: each split file's name, size and
    modification time, the columns and the carve settings (a copied file counts as changed)."""
    found = split_files(_folder(config), config)
    what = {role: [(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in paths]
            for role, paths in found.items()}
    what.update(text=config.text_column, label=config.label_column, fraction=config.val_fraction,
                seed=config.split_seed)
    return "files:" + hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()


def load(config: DataConfig, tokenizer, *, model: str, max_length: int, include_test: bool = True,
         num_proc: Optional[int] = None, say: Callable[[str], None] = lambda message: None,
         builder: Optional[Callable] = None) -> TokenizedData:
    """The splits as memory-mapped ``CachedSplit``s, tokenized once (train's label map for all),
    validation carved from train when the data has none. ``builder`` replaces
    ``token_cache.cached_split`` (the Ray Data build on a cluster, ``tuning.sweep.ray_tokenize``)."""
    check_max_length(model, max_length)
    folder = _folder(config)
    found = split_files(folder, config)
    if found["validation"] and config.val_fraction is not None:
        raise DataError(f"--val-fraction {config.val_fraction:g}: {folder} has a validation split "
                        f"({found['validation'][0].name}...), so none is carved from train. Leave "
                        f"out --val-fraction, or pass --split-names validation={NO_SPLIT}.")
    root = Path(config.cache_dir).expanduser() if config.cache_dir else default_cache_dir()
    build = builder or cached_split
    common = dict(text_column=config.text_column, label_column=config.label_column,
                  tokenizer=tokenizer, max_length=max_length, root=root, say=say)
    carving = not found["validation"]
    train, label_map = build([str(p) for p in found["train"]], carve_seed=config.split_seed if carving else None,
                             num_proc=num_proc, **common)
    if len(label_map) < 2:
        raise DataError(f"train split ({found['train'][0]}...) has a single label, "
                        f"{label_map.raw_values[0]!r}, in column {config.label_column!r}: a "
                        f"classifier needs at least 2 classes. Check --label-column.")
    splits = {}
    if carving:
        fraction = DEFAULT_VAL_FRACTION if config.val_fraction is None else config.val_fraction
        splits["train"], splits["validation"], unvalidated = carve(train, fraction, say=say)
        if unvalidated:
            say(f"note: {len(unvalidated)} label(s) have a single train example and so no "
                f"validation example; they stay in train")
    else:
        splits["train"] = train
        splits["validation"], _ = build([str(p) for p in found["validation"]], label_map=label_map,
                                        num_proc=num_proc, **common)
    if include_test:
        splits["test"], _ = build([str(p) for p in found["test"]], label_map=label_map,
                                  num_proc=num_proc, **common)
    truncated = {name: split.truncated for name, split in splits.items()}
    if carving:
        truncated["train"] = train.truncated  # the carve's parts count with the whole split
    return TokenizedData(splits, label_map, model, max_length, int(tokenizer.pad_token_id or 0),
                         truncated)


def is_cached(data: TokenizedData) -> bool:
    return isinstance(data.splits.get("train"), CachedSplit)
