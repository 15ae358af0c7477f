"""Joint (multi-task) data: sentence labels and word-level BIO tags, read from one dataset that may
hold both (``trainables.tagging_files``) or from two datasets trained together (one with labels
only, one with tags only), validation carved where a dataset has none, then encoded once for the
``joint`` trials.

Alignment of word tags to word pieces (the choice of BERT's paper, Devlin et al. 2019, section 5.3,
and of JointBERT): a word's tag sits on its FIRST piece; its other pieces, the special tokens and
the examples without tags carry ``TAG_IGNORE``, so loss and metrics skip them. A prediction reads
each word's tag at its first piece (``predicted_word_tags``); a word left without a piece (cut off
by ``max_length``, or given none by the tokenizer) is predicted ``O``, and still counts in the
metrics through ``EncodedJointSplit.gold_tags``.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np

from trainables.data import DEFAULT_VAL_FRACTION, DataConfig, _locate, carve_validation, load_raw_splits
from trainables.encoding import check_max_length
from trainables.errors import ConfigError, DataError
from trainables.labels import SPLITS, LabelMap, RawSplit
from trainables.tagging_files import READERS, JointRawSplit, detect_layout  # noqa: F401 (re-exported)

log = logging.getLogger(__name__)

TAG_IGNORE = -100  # label/tag index ignored by loss and metrics (torch's CrossEntropyLoss default)


@dataclass
class TagMap:
    """Tag string <-> index, built from the train split: "O" first, then "B-t", "I-t" for each
    entity type t (sorted), so the map is complete BIO even where train has only one of the two."""

    names: list[str]

    @classmethod
    def from_tags(cls, tag_lists: list[Optional[list[str]]]) -> "TagMap":
        types = sorted({tag[2:] for tags in tag_lists if tags for tag in tags if tag != "O"})
        return cls(["O"] + [f"{prefix}-{kind}" for kind in types for prefix in ("B", "I")])

    def index(self) -> dict[str, int]:
        return {name: i for i, name in enumerate(self.names)}

    @property
    def types(self) -> list[str]:
        return sorted({name[2:] for name in self.names if name != "O"})

    def encode(self, tag_lists: list[Optional[list[str]]], *, split: str, origin: str
               ) -> list[Optional[np.ndarray]]:
        """Each example's tags as int64 indices (None stays None); a split whose tags name an
        entity type that train never has is refused, naming the types."""
        lookup = self.index()
        unseen = sorted({tag[2:] for tags in tag_lists if tags for tag in tags if tag not in lookup})
        if unseen:
            shown = unseen[:20] + (["..."] if len(unseen) > 20 else [])
            raise DataError(
                f"{split} split ({origin}) tags {len(unseen)} entity type(s) that the train split "
                f"never has: {shown}. A tagger cannot predict types it never saw: add train "
                f"examples of them, or tag those words O (or remove those rows).")
        return [None if tags is None else np.asarray([lookup[t] for t in tags], dtype=np.int64)
                for tags in tag_lists]

    def to_dict(self) -> dict[str, Any]:
        return {"names": list(self.names)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TagMap":
        return cls(names=list(d["names"]))

    def __len__(self) -> int:
        return len(self.names)


@dataclass
class EncodedJointSplit:
    """One split tokenized once. Per example: piece ids (special tokens included, cut to
    max_length), the sentence-label index (``TAG_IGNORE`` where none), the tag index per piece
    (at each word's first piece, ``TAG_IGNORE`` elsewhere), each word's first piece (-1: none),
    the words, the gold tags of all words (None: no tags) and the dataset it came from."""

    input_ids: list[np.ndarray]
    labels: np.ndarray
    tag_ids: list[np.ndarray]
    word_starts: list[np.ndarray]
    words: list[list[str]]
    gold_tags: list[Optional[list[str]]]
    sources: np.ndarray

    def lengths(self) -> np.ndarray:
        return np.fromiter((len(ids) for ids in self.input_ids), dtype=np.int64,
                           count=len(self.input_ids))

    def __len__(self) -> int:
        return len(self.input_ids)


@dataclass
class JointData:
    """What every joint trial receives (through Ray's object store)."""

    splits: dict[str, EncodedJointSplit]
    label_map: Optional[LabelMap]
    tag_map: Optional[TagMap]
    model: str
    max_length: int
    pad_token_id: int
    source_names: tuple[str, ...]
    truncated: dict[str, int] = field(default_factory=dict)  # examples cut to max_length, per split

    @property
    def num_labels(self) -> int:
        return len(self.label_map) if self.label_map is not None else 0

    @property
    def num_tags(self) -> int:
        return len(self.tag_map) if self.tag_map is not None else 0

    @property
    def has_intent(self) -> bool:
        return self.label_map is not None

    @property
    def has_slots(self) -> bool:
        return self.tag_map is not None

    def without_test(self) -> "JointData":
        """The same data minus the test split: what tuning trials get, so they cannot peek."""
        splits = {k: v for k, v in self.splits.items() if k != "test"}
        return dataclasses.replace(self, splits=splits, truncated=dict(self.truncated))


# --------------------------------------------------------------------------- loading


_SAID: set[str] = set()  # notes already logged in this process


def _say(notes: list[str]) -> None:
    for note in notes:
        if note not in _SAID:
            _SAID.add(note)
            log.warning(note)


def _dataset_name(config: DataConfig) -> str:
    return Path(config.source.rstrip("/")).name or config.source


def _from_text(splits: dict[str, RawSplit]) -> dict[str, JointRawSplit]:
    """Text-classification splits as joint ones: whitespace-split words, no tags."""
    return {name: JointRawSplit([text.split() for text in part.texts], [None] * len(part.texts),
                                list(part.labels), [0] * len(part.texts), part.origin,
                                list(part.rows) or list(range(1, len(part.texts) + 1)))
            for name, part in splits.items()}


def _with_validation(splits: dict[str, JointRawSplit], config: DataConfig
                     ) -> tuple[dict[str, JointRawSplit], list[str]]:
    """The splits with a validation split carved from train where the data has none, as
    ``trainables.data.carve_validation`` carves it: stratified by the label when the examples have
    one, else one group (seeded by ``split_seed`` and the words alone, so every call takes the
    same rows)."""
    train = splits["train"]
    if "validation" in splits:
        if config.val_fraction is not None:
            raise DataError(
                f"--val-fraction {config.val_fraction:g}: the data already has a validation split "
                f"({splits['validation'].origin}, {len(splits['validation'])} examples), so none is "
                f"carved from train. Leave out --val-fraction to use it, or pass --split-names "
                f"validation=none to carve one from train on purpose.")
        return splits, []
    fraction = DEFAULT_VAL_FRACTION if config.val_fraction is None else config.val_fraction
    proxy = RawSplit([" ".join(words) for words in train.words], list(train.labels), train.origin,
                     list(range(1, len(train) + 1)))  # rows = positions + 1, mapped back below
    kept, held, _, _ = carve_validation(proxy, fraction, config.split_seed)
    if not held.texts:
        raise DataError(
            f"{train.origin} has no validation split, and none can be carved from its "
            f"{len(train)} examples (no label has 2 or more). Add a validation split to the data "
            f"(a dev/ or validation file or folder), or more train examples.")
    note = (f"{train.origin} has no validation split: {len(held.texts)} of its {len(train)} "
            f"examples ({fraction:g}" + (" of each label" if train.labels[0] is not None else "")
            + f", --split-seed {config.split_seed}) are the validation split")
    carved = {"train": train.subset([r - 1 for r in kept.rows]),
              "validation": train.subset([r - 1 for r in held.rows],
                                         f"{train.origin}, rows carved as validation")}
    return {**splits, **carved}, [note]


def _read_dataset(config: DataConfig) -> dict[str, JointRawSplit]:
    """One dataset's splits, validation included, in whichever layout its folder has."""
    kind, where = _locate(config)
    layout = "text" if kind == "hub" else detect_layout(where, config)
    if layout == "text":
        splits = _from_text(load_raw_splits(config))
    else:
        splits, notes = READERS[layout](where, config)
        splits, carved = _with_validation(splits, config)
        _say(notes + carved)
    name = _dataset_name(config)
    return {k: dataclasses.replace(v, source_names=(name,)) for k, v in splits.items()}


def _task_of(splits: dict[str, JointRawSplit]) -> str:
    """'labels', 'tags' or 'both': what the dataset's train split brings."""
    train = splits["train"]
    has_labels = any(label is not None for label in train.labels)
    has_tags = any(tags is not None for tags in train.tags)
    return "both" if has_labels and has_tags else ("labels" if has_labels else "tags")


def _check_pair(tasks: tuple[str, str], names: tuple[str, str]) -> None:
    rule = ("Two datasets trained together bring one task each: one with sentence labels only "
            "(text/label files), the other with tags only (CoNLL files, or token rows without a "
            "label column).")
    joint = [name for name, task in zip(names, tasks) if task == "both"]
    if joint:
        raise ConfigError(f"{rule} But {joint[0]} holds labels and tags already (joint data): "
                          f"train it alone, without a second dataset.")
    if tasks[0] == tasks[1]:
        what = "sentence labels" if tasks[0] == "labels" else "tags"
        raise ConfigError(f"{rule} But both {names[0]} and {names[1]} bring {what} only: "
                          f"replace one of them with a dataset of the other task.")


def _concatenated(first: JointRawSplit, second: JointRawSplit, names: tuple[str, str]
                  ) -> JointRawSplit:
    return JointRawSplit(first.words + second.words, first.tags + second.tags,
                         first.labels + second.labels, [0] * len(first) + [1] * len(second),
                         f"{first.origin} + {second.origin}", first.rows + second.rows, names)


def load_joint_splits(config: DataConfig, second: Optional[DataConfig] = None
                      ) -> dict[str, JointRawSplit]:
    """The train/validation/test splits of one dataset (a seq.in/seq.out folder, token rows or
    CoNLL files; text/label files give labels only), or of two datasets trained together, one
    with labels only and one with tags only: each split is the first dataset's examples (source
    0) followed by the second's (source 1). ``second`` defaults to ``config.second()`` (its
    ``second_source``). Raises DataError/ConfigError before anything starts."""
    first = _read_dataset(config)
    second = second if second is not None else config.second()
    if second is None:
        return first
    other = _read_dataset(second)
    names = (_dataset_name(config), _dataset_name(second))
    if names[0] == names[1]:
        names = (names[0], f"{names[1]}_2")
    _check_pair((_task_of(first), _task_of(other)), names)
    return {split: _concatenated(first[split], other[split], names)
            for split in SPLITS if split in first and split in other}


# --------------------------------------------------------------------------- encoding


def _encoded_labels(part: JointRawSplit, split: str, label_map: Optional[LabelMap]) -> np.ndarray:
    labels = np.full(len(part), TAG_IGNORE, dtype=np.int64)
    present = [i for i, label in enumerate(part.labels) if label is not None]
    if present:  # without a train label map, every label is one train never has: refused
        known = label_map if label_map is not None else LabelMap([], [])
        labels[present] = known.encode([part.labels[i] for i in present], split=split,
                                       origin=part.origin)
    return labels


def _aligned(ids: list[int], word_ids: list[Optional[int]], word_tags: Optional[np.ndarray],
             num_words: int, max_length: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, bool]:
    """(piece ids cut to max_length keeping the closing special token, tag index per piece at
    each word's first piece, each word's first piece or -1, whether it was cut)."""
    cut = len(ids) > max_length
    if cut:
        ids, word_ids = ids[: max_length - 1] + ids[-1:], word_ids[: max_length - 1] + word_ids[-1:]
    starts = np.full(num_words, -1, dtype=np.int64)
    tag_ids = np.full(len(ids), TAG_IGNORE, dtype=np.int64)
    for position, word in enumerate(word_ids):
        if word is not None and starts[word] < 0:
            starts[word] = position
            if word_tags is not None:
                tag_ids[position] = word_tags[word]
    return np.asarray(ids, dtype=np.int32), tag_ids, starts, cut


def _encode_split(part: JointRawSplit, split: str, tokenizer, label_map: Optional[LabelMap],
                  tag_map: Optional[TagMap], max_length: int) -> tuple[EncodedJointSplit, int]:
    labels = _encoded_labels(part, split, label_map)
    if tag_map is None and any(tags is not None for tags in part.tags):
        tag_map = TagMap(["O"])  # train has no tags: any entity type here is refused as unseen
    word_tags = tag_map.encode(part.tags, split=split, origin=part.origin) if tag_map \
        else [None] * len(part)
    encoded = tokenizer(part.words, is_split_into_words=True, add_special_tokens=True,
                        truncation=False)
    ids, tag_ids, starts, cut = [], [], [], 0
    for i, words in enumerate(part.words):
        row = _aligned(encoded["input_ids"][i], encoded.word_ids(i), word_tags[i], len(words),
                       max_length)
        ids.append(row[0])
        tag_ids.append(row[1])
        starts.append(row[2])
        cut += row[3]
    return EncodedJointSplit(ids, labels, tag_ids, starts, [list(w) for w in part.words],
                             [None if t is None else list(t) for t in part.tags],
                             np.asarray(part.sources, dtype=np.int64)), cut


def _check_fast(tokenizer, model: str) -> None:
    if not getattr(tokenizer, "is_fast", False):
        raise ConfigError(
            f"model {model!r} has a slow (Python) tokenizer ({type(tokenizer).__name__}), but "
            f"tagging aligns each word with its pieces through word_ids(), which only fast "
            f"tokenizers give. Use a model folder with a tokenizer.json (load the tokenizer with "
            f"AutoTokenizer.from_pretrained(..., use_fast=True) and save_pretrained it there).")


def encode_joint_splits(raw: dict[str, JointRawSplit], tokenizer, *, model: str,
                        max_length: int) -> JointData:
    """Label and tag maps built from train; every split's labels, tags and words encoded once
    (``max_length`` checked against the model first; examples cut to it are counted)."""
    _check_fast(tokenizer, model)
    check_max_length(model, max_length)
    train = raw["train"]
    labels = [label for label in train.labels if label is not None]
    label_map = LabelMap.from_labels(labels) if labels else None
    tagged = [tags for tags in train.tags if tags is not None]
    tag_map = TagMap.from_tags(tagged) if tagged else None
    splits, truncated = {}, {}
    for split in SPLITS:
        if split in raw:
            splits[split], truncated[split] = _encode_split(raw[split], split, tokenizer,
                                                            label_map, tag_map, max_length)
    if any(truncated.values()):
        log.debug("examples cut to max_length %d, per split: %s", max_length, truncated)
    names = train.source_names or (Path(train.origin).name,)
    return JointData(splits, label_map, tag_map, model, max_length,
                     int(tokenizer.pad_token_id or 0), tuple(names), truncated)


def collate_joint(split: EncodedJointSplit, indices: np.ndarray, pad_token_id: int) -> dict:
    """One batch padded to its longest example: input_ids, attention_mask, labels and tag_ids
    (padded with ``TAG_IGNORE``), each a (batch, width) or (batch,) long tensor."""
    import torch  # local: keeps torch off the light paths that only read data

    seqs = [split.input_ids[i] for i in indices]
    width = max(len(s) for s in seqs)
    ids = np.full((len(seqs), width), pad_token_id, dtype=np.int64)
    mask = np.zeros((len(seqs), width), dtype=np.int64)
    tags = np.full((len(seqs), width), TAG_IGNORE, dtype=np.int64)
    for row, i in enumerate(indices):
        n = len(seqs[row])
        ids[row, :n], mask[row, :n], tags[row, :n] = seqs[row], 1, split.tag_ids[i]
    return {"input_ids": torch.from_numpy(ids), "attention_mask": torch.from_numpy(mask),
            "labels": torch.from_numpy(np.asarray(split.labels[indices], dtype=np.int64)),
            "tag_ids": torch.from_numpy(tags)}


def predicted_word_tags(split_word_starts: np.ndarray, piece_tag_ids: np.ndarray,
                        tag_map: TagMap, num_words: int) -> list[str]:
    """Word i takes the tag predicted at its first piece; a word without a piece gets "O"."""
    names = tag_map.names
    tags = []
    for word in range(num_words):
        start = int(split_word_starts[word]) if word < len(split_word_starts) else -1
        tags.append(names[int(piece_tag_ids[start])] if 0 <= start < len(piece_tag_ids) else "O")
    return tags
