"""One way in to a trial's data, whatever the task: text classification (``TokenizedData``, read by
``trainables.data``) or multi-task intent + slot data (``JointData``, read by
``trainables.tagging``). Training, sweeps, selection and evaluation call these, never the two
readers directly, so a family always gets the data it trains on.

Which kind a dataset is follows from its layout (``trainables.tagging_files.detect_layout``): a
folder with word tags (``seq.in``/``seq.out`` split folders, token rows, CoNLL files) or a second
dataset (``DataConfig.second_source``) is multi-task data; anything else is text classification.
A family that does not fit the data is refused before anything loads, with the fix.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Union

import numpy as np

from trainables.data import (DataConfig, EncodedSplit, TokenizedData, data_fingerprint, load_raw_splits,
                            tokenize_splits)
from trainables import streamed
from trainables.errors import ConfigError
from trainables.tagging import EncodedJointSplit, JointData, encode_joint_splits, load_joint_splits
from trainables.tagging_files import detect_layout

MULTITASK = "multitask"
TaskData = Union[TokenizedData, JointData]


def is_multitask_data(config: DataConfig) -> bool:
    """Whether ``config`` names multi-task data: word tags in its layout, or a second dataset."""
    if config.second_source is not None:
        return True
    if config.source == "demo" or config.source.startswith("hf:"):
        return False
    folder = Path(config.source).expanduser()
    if not folder.is_dir() or config.token_cache:
        return False  # a hub id, or a missing folder: the reader says what is wrong
    try:
        return detect_layout(folder, config) != "text"
    except ConfigError:
        if streamed.is_streamed(config):
            return False  # split files only the token cache reads (shards, compressed files)
        raise


def check_family_fits(trainable: str, config: DataConfig) -> None:
    """Refuse a trial family that cannot train on ``config``'s data, saying which one can."""
    multitask = is_multitask_data(config)
    if trainable == MULTITASK and not multitask:
        raise ConfigError(
            f"the config trains a multitask model, but --data {config.source!r} holds texts with "
            f"labels only (no word tags, no --second-data): train it with a finetune or "
            f"contrastive config, or point --data at joint data (seq.in/seq.out split folders, "
            f"token rows with {config.tokens_column!r}/{config.tags_column!r}, or CoNLL files)")
    if multitask and trainable != MULTITASK:
        what = ("two datasets (--data and --second-data)" if config.second_source else
                f"word tags ({detect_layout(Path(config.source).expanduser(), config)} layout)")
        raise ConfigError(
            f"--data {config.source!r} holds {what}, which only multitask trials train on, but the "
            f"config is a {trainable} one: sweep it with --trainable multitask, or train it with "
            f"--preset joint-hand (or a config with `trainable: multitask`). Contrastive "
            f"pretraining is not available for joint data.")


def load_raw(config: DataConfig, trainable: str) -> dict:
    """The raw splits the family trains on (``RawSplit`` or ``JointRawSplit`` per split)."""
    check_family_fits(trainable, config)
    if trainable == MULTITASK:
        return load_joint_splits(config)
    return load_raw_splits(config)


def fingerprint(raw: dict) -> str:
    """A digest of the raw splits: ``trainables.data.data_fingerprint`` for texts; for joint data
    the words, tags, labels and sources of every example, split by split."""
    first = next(iter(raw.values()))
    if not hasattr(first, "words"):
        return data_fingerprint(raw)
    digest = hashlib.sha256()
    for split in sorted(raw):
        part = raw[split]
        digest.update(split.encode())
        for row in zip(part.words, part.tags, part.labels, part.sources):
            digest.update(json.dumps(row, default=str, ensure_ascii=False).encode())
    return "sha256:" + digest.hexdigest()


def encode(raw: dict, tokenizer, *, trainable: str, model: str, max_length: int,
           include_test: bool = True) -> TaskData:
    """Tokenize the splits once for ``trainable``'s trials (the test split only when asked)."""
    if trainable == MULTITASK:
        kept = raw if include_test else {k: v for k, v in raw.items() if k != "test"}
        return encode_joint_splits(kept, tokenizer, model=model, max_length=max_length)
    return tokenize_splits(raw, tokenizer, model=model, max_length=max_length,
                           include_test=include_test)


def fingerprint_of(config: DataConfig, trainable: str) -> str:
    """The data's fingerprint (``fingerprint``), read from the files' names, sizes and times alone
    for data that goes through the token cache (``trainables.streamed.fingerprint``)."""
    if _streamed(config, trainable):
        return streamed.fingerprint(config)
    return fingerprint(load_raw(config, trainable))


def load_encoded(config: DataConfig, trainable: str, tokenizer, *, model: str, max_length: int,
                 include_test: bool = True, say=lambda message: None, builder=None,
                 check=lambda fingerprint: None) -> tuple[TaskData, str]:
    """(the tokenized splits, the data's fingerprint): through the memory-mapped token cache for
    data that is too big or sharded (``trainables.streamed``), else read and tokenized in memory.
    ``check(fingerprint)`` runs before anything is tokenized (a resumed sweep refuses changed
    data before hours of tokenizing)."""
    if _streamed(config, trainable):
        digest = streamed.fingerprint(config)
        check(digest)
        return streamed.load(config, tokenizer, model=model, max_length=max_length,
                             include_test=include_test, say=say, builder=builder), digest
    raw = load_raw(config, trainable)
    digest = fingerprint(raw)
    check(digest)
    return (encode(raw, tokenizer, trainable=trainable, model=model, max_length=max_length,
                   include_test=include_test), digest)


def train_size(config: DataConfig, trainable: str, *, model: str, max_length: int, load_tokenizer) -> int:
    """How many examples the train split holds (after a carve): from the token cache for data
    that goes through it (built first if missing), else from the rows read into memory.
    ``load_tokenizer(model)`` gives the tokenizer that keys the cache."""
    if _streamed(config, trainable):
        data, _ = load_encoded(config, trainable, load_tokenizer(model), model=model,
                               max_length=max_length, include_test=False)
        return len(data.splits["train"])
    return len(load_raw(config, trainable)["train"])


def _streamed(config: DataConfig, trainable: str) -> bool:
    check_family_fits(trainable, config)
    if not streamed.is_streamed(config):
        return False
    if trainable == MULTITASK:
        raise ConfigError("--token-cache on: joint intent + slot data is read into memory (the "
                          "token cache holds text-classification splits); use --token-cache off")
    return True


def take(split, keep: np.ndarray):
    """The examples ``keep`` (indices) of an encoded split, of either kind, in that order."""
    if isinstance(split, EncodedJointSplit):
        return EncodedJointSplit(
            [split.input_ids[i] for i in keep], split.labels[keep], [split.tag_ids[i] for i in keep],
            [split.word_starts[i] for i in keep], [split.words[i] for i in keep],
            [split.gold_tags[i] for i in keep], split.sources[keep])
    return EncodedSplit([split.input_ids[i] for i in keep], split.labels[keep])


def describe(data: TaskData) -> str:
    """Sizes and classes for a log line."""
    sizes = {k: len(v) for k, v in data.splits.items()}
    if isinstance(data, JointData):
        return (f"{sizes} examples, {data.num_labels} intents, {data.num_tags} tags"
                + (f", datasets {list(data.source_names)}" if len(data.source_names) > 1 else ""))
    return f"{sizes} examples, {data.num_labels} labels"
