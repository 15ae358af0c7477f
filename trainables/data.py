"""Text-classification data: loading, label maps, tokenizing once, and length-bucketed batches.

A dataset source is one of:
- ``demo``: the small built-in intent dataset shipped in ``trainables/demo_data``;
- a local folder with ``train`` / ``validation`` / ``test`` files: ``.jsonl`` (JSON Lines),
  ``.json`` (JSON Lines, or one array of objects), ``.csv`` (delimiter detected among , ; tab |,
  or ``delimiter``), ``.tsv`` or ``.parquet`` (needs pyarrow);
- ``hf:<id>`` or a bare hub id such as ``SetFit/amazon_massive_intent_en-US`` (``datasets``).

``split_names`` maps the three roles to a dataset's own split (or file) names. Without a
validation split, a stratified, seeded ``val_fraction`` of train becomes the validation split
(``carve_validation``); the rows it takes are recorded in ``DataConfig.validation_ids`` when a
sweep starts (``DataConfig.pinned``), and every later load checks that it carves the same rows.

Raw splits are validated before anything expensive starts. ``tokenize_splits`` runs once per sweep;
its result (plain numpy arrays) is what trials receive through Ray's object store.

This module finds the splits and carves validation; the file formats are read in
``trainables.data_files``, rows become labelled splits in ``trainables.labels``, and tokenizing and
batching live in ``trainables.encoding``. Their public names are re-exported here.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional

from trainables.errors import ConfigError, DataError
# re-exported: callers import these from trainables.data
from trainables.data_files import (DELIMITER_ALIASES, DELIMITERS, EXTENSIONS,  # noqa: F401
                                   _check_one_file_per_split, _folder_files, _read_rows)
from trainables.encoding import (EncodedSplit, TokenizedData, bucketed_batches,  # noqa: F401
                                 check_max_length, collate, encode_texts, model_positions,
                                 steps_per_epoch, tokenize_splits)
from trainables.labels import SHOWN_ROWS, SPLITS, LabelMap, RawSplit, _rows_to_split  # noqa: F401

log = logging.getLogger(__name__)

SPLIT_ALIASES = {"train": ("train",), "validation": ("validation", "val", "dev", "valid"),
                 "test": ("test",)}
DEMO_DIR = Path(__file__).resolve().parent / "demo_data"
# the share of train that becomes the validation split when a dataset has none (--val-fraction)
DEFAULT_VAL_FRACTION = 0.1
# --split-names validation=none: use no validation split of the dataset, carve one from train
NO_SPLIT = "none"


@dataclass(frozen=True)
class DataConfig:
    """Where the data comes from, which columns hold text and label, and how it is split.

    ``val_fraction``: the share of train carved out as the validation split; ``None`` means
    ``DEFAULT_VAL_FRACTION``, and only when the dataset has no validation split (a fraction given
    for a dataset that has one is refused, unless ``split_names`` says ``validation=none``).
    ``split_seed``: seed of that carve (kept apart from the trials' seed, so that the data stays
    the same when a sweep's seed changes). ``validation_ids``: the train row numbers (1-based,
    as the file lists them) that the carve took, recorded by ``pinned`` when a sweep starts;
    a load whose carve differs is refused (the train file changed).
    ``delimiter``: of ``.csv``/``.tsv`` files; ``None`` detects it. ``split_names``: (role,
    name) pairs, e.g. ``(("validation", "dev"),)``; roles left out are found by their usual names.
    ``skip_bad_rows``: drop rows with an empty text or a missing label (and say which), instead
    of refusing the data. ``tokens_column`` / ``tags_column``: of token-tagging rows (JSON Lines,
    Parquet; ``trainables.tagging_files``), a list of words and a list of BIO tags per row.
    ``second_source``: a second dataset trained beside ``source`` by a multitask trial, one task
    each (``trainables.task_data``); it is read with the same settings.
    ``token_cache``: tokenize a folder's split files once into the memory-mapped token cache under
    ``cache_dir`` instead of reading them into memory (``trainables.streamed``): ``True``,
    ``False``, or ``None`` to decide by the files (shards, compression or size).
    """

    source: str = "demo"
    text_column: str = "text"
    label_column: str = "label"
    val_fraction: Optional[float] = None
    split_seed: int = 0
    validation_ids: Optional[tuple[int, ...]] = None
    delimiter: Optional[str] = None
    split_names: tuple[tuple[str, str], ...] = ()
    skip_bad_rows: bool = False
    tokens_column: str = "tokens"
    tags_column: str = "tags"
    second_source: Optional[str] = None
    token_cache: Optional[bool] = None
    cache_dir: Optional[str] = None

    def __post_init__(self) -> None:
        if isinstance(self.source, os.PathLike):
            object.__setattr__(self, "source", str(self.source))
        for name in ("source", "text_column", "label_column", "tokens_column", "tags_column"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value.strip():
                raise ConfigError(f"data `{name}` must be a non-empty string, but got {value!r}")
        if self.text_column == self.label_column:
            raise ConfigError(
                f"--text-column and --label-column are both {self.text_column!r}: the model would "
                f"be trained to read its own label. Name the column that holds the texts with "
                f"--text-column and the one that holds the classes with --label-column.")
        if isinstance(self.second_source, os.PathLike):
            object.__setattr__(self, "second_source", str(self.second_source))
        if self.second_source is not None and (not isinstance(self.second_source, str)
                                               or not self.second_source.strip()
                                               or self.second_source == self.source):
            raise ConfigError(f"the second dataset (--second-data) must be another dataset than "
                              f"--data {self.source!r}, but got {self.second_source!r}")
        if self.tokens_column == self.tags_column:
            raise ConfigError(f"`tokens_column` and `tags_column` are both {self.tags_column!r}: "
                              f"name the column of each row's words and the one of its BIO tags")
        fraction = self.val_fraction
        if fraction is not None and (isinstance(fraction, bool) or not isinstance(fraction, (int, float))
                                     or not 0 < fraction < 1):
            raise ConfigError(f"`val_fraction` (--val-fraction) must lie strictly between 0 and 1, "
                              f"e.g. 0.1 for 10% of train, but got {fraction!r}")
        if isinstance(self.split_seed, bool) or not isinstance(self.split_seed, int) or self.split_seed < 0:
            raise ConfigError(f"`split_seed` (--split-seed) must be an integer >= 0, but got "
                              f"{self.split_seed!r}")
        if not isinstance(self.skip_bad_rows, bool):
            raise ConfigError(f"`skip_bad_rows` must be true or false, but got {self.skip_bad_rows!r}")
        object.__setattr__(self, "cache_dir", None if self.cache_dir is None else os.fspath(self.cache_dir))
        if self.token_cache not in (None, True, False) or self.cache_dir == "" or (
                self.token_cache and self.second_source is not None):
            raise ConfigError(f"`token_cache` (--token-cache) must be on, off or auto (on: for one "
                              f"text-classification folder, not with --second-data) and `cache_dir` "
                              f"a folder, but got {self.token_cache!r} and {self.cache_dir!r}")
        object.__setattr__(self, "delimiter", _normal_delimiter(self.delimiter))
        object.__setattr__(self, "split_names", parse_split_names(self.split_names))
        object.__setattr__(self, "validation_ids", _normal_ids(self.validation_ids))

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "text_column": self.text_column,
                "label_column": self.label_column, "val_fraction": self.val_fraction,
                "split_seed": self.split_seed,
                "validation_ids": None if self.validation_ids is None else list(self.validation_ids),
                "delimiter": self.delimiter, "split_names": dict(self.split_names),
                "skip_bad_rows": self.skip_bad_rows, "tokens_column": self.tokens_column,
                "tags_column": self.tags_column, "second_source": self.second_source,
                "token_cache": self.token_cache, "cache_dir": self.cache_dir}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "DataConfig":
        """The inverse of ``to_dict``; a dict saved before a field existed gets its default."""
        unknown = sorted(set(d) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ConfigError(f"unknown data setting(s) {unknown}; known: "
                              f"{[f.name for f in dataclasses.fields(cls)]}")
        return cls(**d)

    def anchored(self) -> "DataConfig":
        """The same data with a local folder given as an absolute path, so that a saved sweep
        finds it again from any working directory ('demo' and hub ids stay as they are); the
        second dataset's folder too."""
        second = _anchored_source(self.second_source) if self.second_source else None
        cache_dir = str(Path(self.cache_dir).expanduser().resolve()) if self.cache_dir else None
        return dataclasses.replace(self, source=_anchored_source(self.source), second_source=second,
                                   cache_dir=cache_dir)

    def second(self) -> Optional["DataConfig"]:
        """The second dataset (``second_source``) as a data config of its own, read with the same
        columns, seed and row rules; ``None`` without one."""
        if self.second_source is None:
            return None
        return dataclasses.replace(self, source=self.second_source, second_source=None,
                                   validation_ids=None)

    def pinned(self) -> "DataConfig":
        """This config with the train rows its validation split is carved from recorded
        (``validation_ids``), as a sweep saves it: every later step (resume, select, train
        --from-sweep) then checks that it carves the same rows. Unchanged when the rows are
        recorded already, when the dataset has its own validation split, or when the data cannot
        be read now (the load that follows says why)."""
        if self.validation_ids is not None or not _may_carve(self):
            return self
        try:
            _, _, carved = _assemble(self)
        except DataError:
            return self
        return self if carved is None else dataclasses.replace(self, validation_ids=tuple(carved))


def _anchored_source(source: str) -> str:
    """A local folder or file as an absolute path; 'demo', hub ids and missing paths unchanged."""
    if source == "demo" or source.startswith("hf:"):
        return source
    path = Path(source).expanduser()
    return str(path.resolve()) if path.exists() else source


def _normal_delimiter(value: Optional[str]) -> Optional[str]:
    if value is None:
        return None
    value = DELIMITER_ALIASES.get(value, value) if isinstance(value, str) else value
    if value not in DELIMITERS:
        raise ConfigError(f"`delimiter` (--delimiter) must be one of , ; tab | (or comma, "
                          f"semicolon, pipe), but got {value!r}")
    return value


def _normal_ids(value) -> Optional[tuple[int, ...]]:
    if value is None:
        return None
    ids = tuple(value) if isinstance(value, (list, tuple)) else None
    if ids is None or not all(isinstance(i, int) and not isinstance(i, bool) and i >= 1 for i in ids) \
            or list(ids) != sorted(set(ids)):
        raise ConfigError(f"`validation_ids` must be increasing train row numbers (>= 1), as "
                          f"DataConfig.pinned records them, but got {str(value)[:80]}")
    return ids


def parse_split_names(value: Any) -> tuple[tuple[str, str], ...]:
    """(role, name) pairs in role order from ``"train=a,validation=b,test=c"``, a mapping or
    pairs (--split-names). Roles are train, validation and test; each name used once;
    ``validation=none`` uses no validation split of the dataset (one is carved from train)."""
    flag = "`split_names` (--split-names)"
    example = "e.g. train=train,validation=dev,test=eval"
    if isinstance(value, str):
        pairs = []
        for item in (part.strip() for part in value.split(",")):
            if not item:
                continue
            role, sep, name = item.partition("=")
            if not sep:
                raise ConfigError(f"{flag}: expected ROLE=NAME pairs ({example}), but got "
                                  f"{item!r} in {value!r}")
            pairs.append((role.strip(), name.strip()))
    elif isinstance(value, Mapping):
        pairs = list(value.items())
    elif isinstance(value, (list, tuple)) and all(isinstance(p, (list, tuple)) and len(p) == 2
                                                  for p in value):
        pairs = [tuple(p) for p in value]
    else:
        raise ConfigError(f"{flag}: expected ROLE=NAME pairs ({example}), but got {value!r}")
    roles = [role for role, _ in pairs]
    for role, name in pairs:
        if role not in SPLITS:
            raise ConfigError(f"{flag}: unknown role {role!r}; the roles are {list(SPLITS)} ({example})")
        if not isinstance(name, str) or not name:
            raise ConfigError(f"{flag}: {role}= needs the name of a split or file, but got "
                              f"{name!r} ({example})")
        if name == NO_SPLIT and role != "validation":
            raise ConfigError(f"{flag}: {role}={NO_SPLIT} is not allowed: only the validation "
                              f"split can be left out (and is then carved from train)")
    if len(set(roles)) != len(roles):
        raise ConfigError(f"{flag}: each role may be named once, but got {roles}")
    names = [name for _, name in pairs if name != NO_SPLIT]
    if len(set(names)) != len(names):
        raise ConfigError(f"{flag}: two roles name the same split ({dict(pairs)}): the test split "
                          f"would overlap the data trained or validated on")
    return tuple(sorted(((r, n) for r, n in pairs), key=lambda p: SPLITS.index(p[0])))


def map_split_names(available: Iterable[str], split_names: Any, where: str,
                    kind: str = "split") -> dict[str, Optional[str]]:
    """Which of the dataset's own splits (``available``: hub split names or file stems) plays
    each role. A role named in ``split_names`` takes that split; the others take the first of
    their usual names (``SPLIT_ALIASES``) that is not taken. Train and test must be found;
    validation is ``None`` when the dataset has none (it is then carved from train).
    ``where`` and ``kind`` ("split", or "file" for a folder's file stems): for messages."""
    available = list(available)
    given = dict(parse_split_names(split_names))
    chosen: dict[str, Optional[str]] = {}
    for role, name in given.items():
        if name != NO_SPLIT and name not in available:
            raise DataError(f"--split-names {role}={name}: {where} has no {kind} {name!r}; its "
                            f"{kind}s are {sorted(available)}. Name one of those.")
    taken = {name for name in given.values()}
    for role in SPLITS:
        if role in given:
            chosen[role] = None if given[role] == NO_SPLIT else given[role]
            continue
        chosen[role] = next((n for n in SPLIT_ALIASES[role] if n in available and n not in taken), None)
        if chosen[role] is None and role != "validation":
            raise DataError(
                f"{where} has no {role} {kind}; its {kind}s are {sorted(available)}. Name the one "
                f"to use as {role} with --split-names {role}=NAME (usual names: "
                f"{list(SPLIT_ALIASES[role])}).")
        taken.add(chosen[role])
    return chosen


# --------------------------------------------------------------------------- finding the splits


def _locate(config: DataConfig) -> tuple[str, Any]:
    """('folder', path) or ('hub', dataset id)."""
    source = config.source
    if source == "demo":
        return "folder", DEMO_DIR
    if source.startswith("hf:"):
        return "hub", source[3:]
    path = Path(source).expanduser()
    if path.is_dir():
        return "folder", path
    if path.exists():
        raise DataError(f"--data {source!r} is a file; pass the folder that holds "
                        f"train/validation/test files.")
    looks_like_hub_id = source.count("/") == 1 and not source.startswith((".", "/", "~"))
    if looks_like_hub_id:
        return "hub", source
    raise DataError(
        f"data folder {source!r} does not exist. Pass a folder with train/validation/test "
        f"files ({', '.join(EXTENSIONS)}), 'demo' for the built-in demo data, or hf:<dataset id>."
    )


def _load_folder(folder: Path, config: DataConfig) -> tuple[dict[str, RawSplit], list[str]]:
    files = _folder_files(folder)
    chosen = map_split_names(files, config.split_names, f"data folder {folder}", kind="file")
    _check_one_file_per_split(folder, chosen)
    splits, notes = {}, []
    for split, stem in chosen.items():
        if stem is not None:
            rows, how = _read_rows(files[stem], config)
            splits[split], note = _rows_to_split(rows, config, str(files[stem]), split, how)
            notes += [note] if note else []
    return splits, notes


def _load_hub(dataset_id: str, config: DataConfig) -> tuple[dict[str, RawSplit], list[str]]:
    try:
        import datasets
    except ImportError as exc:  # pragma: no cover
        raise DataError("loading a hub dataset needs the `datasets` package") from exc
    try:
        loaded = datasets.load_dataset(dataset_id)
    except Exception as exc:  # the hub raises many types (ConnectionError, OSError, HfHubHTTPError)
        raise DataError(
            f"could not load dataset {dataset_id!r} from the Hugging Face hub "
            f"({type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}). "
            f"Without network access, pass a local folder holding train/validation/test "
            f".jsonl or .csv files instead (--data path/to/folder)."
        ) from exc
    chosen = map_split_names(loaded.keys(), config.split_names, f"hub dataset {dataset_id!r}")
    splits, notes = {}, []
    for split, name in chosen.items():
        if name is not None:
            splits[split], note = _rows_to_split(list(loaded[name]), config,
                                                 f"{dataset_id}[{name}]", split)
            notes += [note] if note else []
    return splits, notes


# --------------------------------------------------------------------------- a validation split from train


def _carve_key(seed: int, text: str) -> bytes:
    return hashlib.sha256(f"{seed}\x00{text}".encode("utf-8")).digest()


def carve_validation(train: RawSplit, fraction: float, seed: int
                     ) -> tuple[RawSplit, RawSplit, list[int], list[Any]]:
    """Split ``train`` into (train, validation), stratified by label.

    A label with n >= 2 examples gives max(1, floor(n * fraction + 0.5)) of them to validation,
    but keeps at least one; a label with a single example keeps it. Which examples go is fixed by
    the seed and the rows alone (not numpy's generator, not the order labels come in): within
    each label, those with the smallest sha256(seed, text), ties by position. Both parts keep the
    rows' order. Returns (train, validation, the validation rows' numbers (``train.rows``, else
    1-based positions), the labels that got no validation example).
    """
    by_label: dict[Any, list[int]] = defaultdict(list)
    for position, label in enumerate(train.labels):
        by_label[label].append(position)
    chosen, unvalidated = set(), []
    for label, positions in by_label.items():
        if len(positions) < 2:
            unvalidated.append(label)
            continue
        take = min(len(positions) - 1, max(1, math.floor(len(positions) * fraction + 0.5)))
        ranked = sorted(positions, key=lambda p: (_carve_key(seed, train.texts[p]), p))
        chosen.update(ranked[:take])
    rows = train.rows or list(range(1, len(train.labels) + 1))

    def part(positions: list[int], origin: str) -> RawSplit:
        return RawSplit([train.texts[p] for p in positions], [train.labels[p] for p in positions],
                        origin, [rows[p] for p in positions])

    held = sorted(chosen)
    kept = [p for p in range(len(train.labels)) if p not in chosen]
    return (part(kept, train.origin), part(held, f"{train.origin}, rows carved as validation"),
            [rows[p] for p in held], unvalidated)


def _assemble(config: DataConfig) -> tuple[dict[str, RawSplit], list[str], Optional[list[int]]]:
    """The three splits, the notes to show about them, and the train rows carved as validation
    (None when the dataset has its own validation split)."""
    kind, where = _locate(config)
    splits, notes = (_load_folder if kind == "folder" else _load_hub)(where, config)
    train = splits["train"]
    if "validation" in splits:
        if config.val_fraction is not None:
            raise DataError(
                f"--val-fraction {config.val_fraction:g}: the data already has a validation split "
                f"({splits['validation'].origin}, {len(splits['validation'].texts)} rows), so none "
                f"is carved from train. Leave out --val-fraction to use it, or pass --split-names "
                f"validation={NO_SPLIT} to set it aside and carve one from train on purpose.")
        if config.validation_ids is not None:
            raise DataError(
                f"these data settings carve the validation split from train, but the data now has "
                f"a validation split of its own ({splits['validation'].origin}): the data changed "
                f"since the split was chosen. Remove that split again, or start a new sweep on the "
                f"data as it is now.")
        return splits, notes, None
    fraction = DEFAULT_VAL_FRACTION if config.val_fraction is None else config.val_fraction
    kept, validation, carved, unvalidated = carve_validation(train, fraction, config.split_seed)
    if not validation.texts:
        raise DataError(
            f"{train.origin} has no validation split, and none can be carved from its "
            f"{len(train.texts)} rows: no label has 2 or more examples, and a label's only example "
            f"stays in train. Add a validation file (validation.jsonl or .csv) to the data, or more "
            f"train examples per label.")
    if config.validation_ids is not None and tuple(carved) != config.validation_ids:
        now, saved = set(carved), set(config.validation_ids)
        raise DataError(
            f"the validation rows carved from train ({train.origin}) are not the ones recorded "
            f"when the split was chosen: {len(saved - now)} recorded row(s) are not chosen now and "
            f"{len(now - saved)} other(s) are (first: row {min(saved ^ now)}); --val-fraction "
            f"{fraction:g}, --split-seed {config.split_seed}. The train file changed (or is not the "
            f"data the split was chosen on), so scores would be measured on other examples than "
            f"before. Put the original train file back, or start a new sweep on the data as it "
            f"is now.")
    splits.update(train=kept, validation=validation)
    why = "has no validation split"
    if dict(config.split_names).get("validation") == NO_SPLIT:
        why = f"uses no validation split of its own (--split-names validation={NO_SPLIT})"
    notes.append(
        f"{train.origin} {why}: {len(validation.texts)} of its {len(train.texts)} rows "
        f"({fraction:g} of each label, --split-seed {config.split_seed}) are the validation "
        f"split" + (" (change the share with --val-fraction)" if config.val_fraction is None else ""))
    if unvalidated:
        shown = sorted(map(str, unvalidated))
        names = ", ".join(shown[:SHOWN_ROWS]) + (f" and {len(shown) - SHOWN_ROWS} more"
                                                 if len(shown) > SHOWN_ROWS else "")
        notes.append(
            f"{len(unvalidated)} label(s) have a single train example and so no validation "
            f"example ({names}); they stay in train. Add examples of them for a validation score "
            f"that covers every label.")
    return splits, notes, carved


def _may_carve(config: DataConfig) -> bool:
    """Whether the validation split may be carved from train; for a local folder, without
    reading its files (a hub dataset's split names are known only once it is loaded)."""
    if config.val_fraction is not None or dict(config.split_names).get("validation") == NO_SPLIT:
        return True
    try:
        kind, where = _locate(config)
        if kind == "hub":
            return True
        files = _folder_files(where)
        return map_split_names(files, config.split_names, str(where), "file")["validation"] is None
    except DataError:
        return False


_SAID: set[str] = set()  # notes already logged in this process


def load_raw_splits(config: DataConfig) -> dict[str, RawSplit]:
    """Read and validate the three splits (carving validation from train where the data has
    none). Raises ``DataError`` with a fix for every problem; notes (rows skipped, a carved
    validation split, labels without a validation example) go to this module's log, each once per
    process (a command reads the same data more than once)."""
    splits, notes, _ = _assemble(config)
    for note in notes:
        if note not in _SAID:
            _SAID.add(note)
            log.warning(note)
    _check_train_labels(splits["train"], config)
    return splits


def _check_train_labels(train: RawSplit, config: DataConfig) -> None:
    """A classifier needs two classes to tell apart; with one, every loss is zero (Ray used to
    start and die inside a trial instead)."""
    values = set(train.labels)
    if len(values) < 2:
        raise DataError(
            f"train split ({train.origin}) has a single label, {next(iter(values))!r}, in column "
            f"{config.label_column!r} ({len(train.labels)} rows): a classifier needs at least 2 "
            f"classes. Check --label-column (is {config.label_column!r} the label?), or add "
            f"examples of the other classes to the train split.")


def data_fingerprint(splits: dict[str, RawSplit]) -> str:
    """sha256 of the texts and labels of every split, in order: what a sweep trained and was
    validated on, whatever the files' format or place. Resume compares it (``tuning.sweep.runner``)."""
    digest = hashlib.sha256()
    for split in SPLITS:
        part = splits[split]
        digest.update(json.dumps([split, part.texts, part.labels], ensure_ascii=False,
                                 default=str).encode("utf-8"))
    return f"sha256:{digest.hexdigest()}"

