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
"""

from __future__ import annotations

import collections.abc
import csv
import dataclasses
import hashlib
import io
import json
import logging
import math
import os
import re
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional

import numpy as np

from trainables.aliases import resolve_model
from trainables.errors import ConfigError, DataError

log = logging.getLogger(__name__)

SPLITS = ("train", "validation", "test")
SPLIT_ALIASES = {"train": ("train",), "validation": ("validation", "val", "dev", "valid"),
                 "test": ("test",)}
EXTENSIONS = (".jsonl", ".json", ".csv", ".tsv", ".parquet")
DEMO_DIR = Path(__file__).resolve().parent / "demo_data"
# the share of train that becomes the validation split when a dataset has none (--val-fraction)
DEFAULT_VAL_FRACTION = 0.1
# --split-names validation=none: use no validation split of the dataset, carve one from train
NO_SPLIT = "none"
# CSV delimiters that are detected (csv.Sniffer, restricted to these) or may be given
DELIMITERS = {",": "comma", ";": "semicolon", "\t": "tab", "|": "pipe"}
DELIMITER_ALIASES = {"tab": "\t", "\\t": "\t", "comma": ",", "semicolon": ";", "pipe": "|"}
SHOWN_ROWS = 10  # row numbers listed in a --skip-bad-rows report


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
    of refusing the data.
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

    def __post_init__(self) -> None:
        if isinstance(self.source, os.PathLike):
            object.__setattr__(self, "source", str(self.source))
        for name in ("source", "text_column", "label_column"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value.strip():
                raise ConfigError(f"data `{name}` must be a non-empty string, but got {value!r}")
        if self.text_column == self.label_column:
            raise ConfigError(
                f"--text-column and --label-column are both {self.text_column!r}: the model would "
                f"be trained to read its own label. Name the column that holds the texts with "
                f"--text-column and the one that holds the classes with --label-column.")
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
        object.__setattr__(self, "delimiter", _normal_delimiter(self.delimiter))
        object.__setattr__(self, "split_names", parse_split_names(self.split_names))
        object.__setattr__(self, "validation_ids", _normal_ids(self.validation_ids))

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "text_column": self.text_column,
                "label_column": self.label_column, "val_fraction": self.val_fraction,
                "split_seed": self.split_seed,
                "validation_ids": None if self.validation_ids is None else list(self.validation_ids),
                "delimiter": self.delimiter, "split_names": dict(self.split_names),
                "skip_bad_rows": self.skip_bad_rows}

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
        finds it again from any working directory ('demo' and hub ids stay as they are)."""
        if self.source == "demo" or self.source.startswith("hf:"):
            return self
        path = Path(self.source).expanduser()
        if not path.exists():
            return self
        return dataclasses.replace(self, source=str(path.resolve()))

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


@dataclass
class RawSplit:
    texts: list[str]
    labels: list[Any]
    origin: str  # file or dataset the split came from, for error messages
    rows: list[int] = field(default_factory=list)  # each example's 1-based row in its origin


@dataclass
class LabelMap:
    """Label value ↔ class index, built from the training split (sorted, so it is stable)."""

    names: list[str]
    raw_values: list[Any]

    @classmethod
    def from_labels(cls, labels: list[Any]) -> "LabelMap":
        values = sorted(set(labels), key=lambda v: (not isinstance(v, (int, float)), v if isinstance(v, (int, float)) else str(v)))
        return cls(names=[str(v) for v in values], raw_values=list(values))

    def index(self) -> dict[Any, int]:
        return {v: i for i, v in enumerate(self.raw_values)}

    def encode(self, labels: list[Any], *, split: str, origin: str) -> np.ndarray:
        lookup = self.index()
        unseen = sorted({str(v) for v in labels if v not in lookup})
        if unseen:
            shown = unseen[:20] + (["..."] if len(unseen) > 20 else [])
            raise DataError(
                f"{split} split ({origin}) has {len(unseen)} label(s) that the train split does not "
                f"have: {shown}. A classifier cannot predict classes it never saw: add examples of "
                f"them to train, or remove those rows."
            )
        return np.asarray([lookup[v] for v in labels], dtype=np.int64)

    def to_dict(self) -> dict[str, Any]:
        return {"names": self.names, "raw_values": self.raw_values}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "LabelMap":
        return cls(names=list(d["names"]), raw_values=list(d["raw_values"]))

    def __len__(self) -> int:
        return len(self.names)


# --------------------------------------------------------------------------- reading files


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8-sig")  # -sig: drops the byte-order mark Excel writes
    except UnicodeDecodeError as exc:
        line = path.read_bytes()[: exc.start].count(b"\n") + 1
        raise DataError(
            f"{path}: not valid UTF-8 (byte {exc.start}, line {line}). Re-save the file as UTF-8."
        ) from exc


def _read_rows(path: Path, config: DataConfig) -> tuple[list[dict], str]:
    """The rows of one file, and how a delimited file was read ('' for other files), which a
    message about its columns repeats (a wrong delimiter shows up as one odd column)."""
    if path.suffix == ".parquet":
        return _read_parquet(path), ""
    text = _read_text(path)
    if path.suffix in (".csv", ".tsv"):
        delimiter = _delimiter(text, path, config)
        reader = csv.DictReader(io.StringIO(text, newline=""), delimiter=delimiter)
        try:
            rows = list(reader)
        except csv.Error as exc:
            raise DataError(f"{path}, line {reader.line_num}: not valid CSV ({exc}).") from exc
        return rows, (f" (read as {DELIMITERS[delimiter]}-separated; pass --delimiter if that "
                      f"is wrong)")
    return _json_rows(text, path), ""


def _json_rows(text: str, path: Path) -> list[dict]:
    """JSON Lines, or one JSON array of objects (in a .json or .jsonl file)."""
    if text.lstrip().startswith("["):
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}, line {exc.lineno}, column {exc.colno}: not valid JSON "
                            f"({exc.msg}).") from exc
        except RecursionError as exc:
            raise _too_deep(path, "") from exc
    else:
        rows = []
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except RecursionError as exc:
                raise _too_deep(path, f", line {number}") from exc
            except json.JSONDecodeError as exc:
                hint = (" A .json file holds one object per line, or one array of objects "
                        "([{...}, {...}]).") if path.suffix == ".json" else ""
                raise DataError(f"{path}, line {number}: not valid JSON ({exc.msg}).{hint}") from exc
    for number, row in enumerate(rows, start=1):
        if not isinstance(row, dict):
            raise DataError(f"{path}, row {number}: expected a JSON object, got {type(row).__name__}")
    return rows


def _too_deep(path: Path, where: str) -> DataError:
    """Python's json parser recurses once per level of nesting, so a deep enough value exhausts
    the interpreter's stack (RecursionError) before it is read."""
    return DataError(f"{path}{where}: JSON nested too deeply to read (more than about "
                     f"{sys.getrecursionlimit()} levels of [ or {{). A row is one object whose text "
                     f"and label are a string or a number each; fix or remove that row.")


def _delimiter(text: str, path: Path, config: DataConfig) -> str:
    """--delimiter if given; a tab for .tsv; else csv.Sniffer's guess among ``DELIMITERS`` from
    the first lines, unless only another of them splits the header into the text and label
    columns (texts full of commas can mislead the sniffer)."""
    if config.delimiter:
        return config.delimiter
    if path.suffix == ".tsv":
        return "\t"
    lines = text.splitlines()
    try:
        guess = csv.Sniffer().sniff("\n".join(lines[:100]), delimiters="".join(DELIMITERS)).delimiter
    except csv.Error:  # one column, or too few lines to tell
        guess = ","

    def names_columns(delimiter: str) -> bool:
        header = next(csv.reader(lines[:1], delimiter=delimiter), [])
        return {config.text_column, config.label_column} <= set(header)

    if not names_columns(guess):
        fitting = [d for d in DELIMITERS if names_columns(d)]
        if len(fitting) == 1:
            return fitting[0]
    return guess


def _read_parquet(path: Path) -> list[dict]:
    try:
        import pyarrow.parquet as pq
    except ImportError as exc:
        raise DataError(
            f"{path}: reading .parquet files needs pyarrow, which is not installed. Install it "
            f"with `pip install pyarrow` (or `pip install 'tunebert[parquet]'`), or save the "
            f"split as .jsonl or .csv.") from exc
    try:
        return pq.read_table(path).to_pylist()
    except Exception as exc:  # pyarrow raises ArrowInvalid, OSError and others
        raise DataError(f"{path}: not a readable Parquet file ({type(exc).__name__}: "
                        f"{str(exc)[:200]}).") from exc


def _row_list(numbers: list[int]) -> str:
    """'2, 5, 9' or, for many, the first ``SHOWN_ROWS`` and 'and N more'."""
    shown = ", ".join(str(n) for n in numbers[:SHOWN_ROWS])
    return shown + (f" and {len(numbers) - SHOWN_ROWS} more" if len(numbers) > SHOWN_ROWS else "")


def _missing(label: Any) -> bool:
    return (label is None or (isinstance(label, str) and not label.strip())
            or (isinstance(label, float) and math.isnan(label)))


# a label cell that is a whole number written as text ("7", "-3"; ASCII digits only: "²" passes
# str.isdigit() yet int() refuses it) is read as that number, since CSV gives every cell as text
_INTEGER_TEXT = re.compile(r"\s*-?[0-9]+\s*")
STRUCTURED = (list, tuple, dict, set)  # JSON arrays and objects, Parquet list and struct columns


def _label_value(label: Any, number: int, config: DataConfig, split: str, origin: str) -> Any:
    """A present label as the class value it stands for; a list, a mapping or another
    structured value is refused (it cannot be one class; multi-label data is not supported)."""
    if isinstance(label, STRUCTURED) or not isinstance(label, collections.abc.Hashable):
        shown = repr(label)
        shown = shown if len(shown) <= 60 else shown[:57] + "..."
        raise DataError(
            f"{split} split ({origin}), row {number}: the label in column "
            f"{config.label_column!r} is a {type(label).__name__} ({shown}), but a label must be "
            f"one class: a string or a number. Multi-label data is not supported: give each row "
            f"a single label, or check --label-column.")
    if isinstance(label, bool):  # JSON true/false: as texts, or True would merge with 1
        return str(label).lower()
    if isinstance(label, str) and _INTEGER_TEXT.fullmatch(label):
        return int(label)
    return label


def _rows_to_split(rows: list[dict], config: DataConfig, origin: str, split: str,
                   how: str = "") -> tuple[RawSplit, Optional[str]]:
    """The split, and with ``skip_bad_rows`` a report of the rows it dropped (else None)."""
    if not rows:
        raise DataError(f"{split} split ({origin}) is empty: it needs at least one row.")
    available = sorted(k for k in rows[0] if isinstance(k, str))
    for kind, column in (("text", config.text_column), ("label", config.label_column)):
        if column not in rows[0]:
            option = "--text-column" if kind == "text" else "--label-column"
            raise DataError(
                f"{split} split ({origin}) has no {kind} column {column!r}; its columns are "
                f"{available}{how}. Name the right one with {option}."
            )
    texts, labels, numbers, no_label, no_text = [], [], [], [], []
    for number, row in enumerate(rows, start=1):
        text, label = row.get(config.text_column), row.get(config.label_column)
        label_missing = _missing(label)
        text_missing = not isinstance(text, str) or not text.strip()
        if label_missing:
            no_label.append(number)
        if text_missing:
            no_text.append(number)
        if label_missing or text_missing:
            continue
        label = _label_value(label, number, config, split, origin)
        texts.append(text)
        labels.append(label)
        numbers.append(number)
    skip = " Fill in or remove those rows, or pass --skip-bad-rows to drop them."
    if no_label and not config.skip_bad_rows:
        where = f"row {no_label[0]}" if len(no_label) == 1 else f"rows {_row_list(no_label)}"
        raise DataError(f"{split} split ({origin}), {where}: the label is missing (column "
                        f"{config.label_column!r}).{skip}")
    if no_text and not config.skip_bad_rows:
        shown = no_text[:20] + (["..."] if len(no_text) > 20 else [])
        raise DataError(
            f"{split} split ({origin}) has {len(no_text)} empty or missing text(s) in column "
            f"{config.text_column!r}, at row(s) {shown}.{skip}"
        )
    bad = sorted(set(no_label) | set(no_text))
    if bad and not texts:
        raise DataError(f"{split} split ({origin}): all {len(rows)} rows have an empty text or a "
                        f"missing label; nothing is left after --skip-bad-rows. Check "
                        f"--text-column and --label-column.")
    note = (f"{split} split ({origin}): skipped {len(bad)} of {len(rows)} rows with an empty "
            f"text or a missing label (--skip-bad-rows): row(s) {_row_list(bad)}") if bad else None
    return RawSplit(texts, labels, origin, numbers), note


# --------------------------------------------------------------------------- finding the splits


def _folder_files(folder: Path) -> dict[str, Path]:
    """Data files of a folder by stem; where a stem has several, the first of ``EXTENSIONS``
    (``_load_folder`` refuses a split whose stem has several)."""
    return {stem: paths[0] for stem, paths in _files_by_stem(folder).items()}


def _files_by_stem(folder: Path) -> dict[str, list[Path]]:
    files: dict[str, list[Path]] = defaultdict(list)
    for ext in EXTENSIONS:
        for path in sorted(folder.glob(f"*{ext}")):
            if path.suffix == ext and path.is_file():
                files[path.stem].append(path)
    return files


def _check_one_file_per_split(folder: Path, chosen: dict[str, Optional[str]]) -> None:
    """Two files of one stem (train.jsonl and train.csv) leave it open which is the split;
    reading one of them silently could train on data the user did not mean."""
    by_stem = _files_by_stem(folder)
    for split, stem in chosen.items():
        if stem is not None and len(by_stem[stem]) > 1:
            names = [p.name for p in by_stem[stem]]
            raise DataError(
                f"data folder {folder} has {len(names)} files for the {split} split: "
                f"{', '.join(names)}; it is not clear which one to read. Keep one of them in the "
                f"folder (move or rename the others, e.g. to {stem}-old{by_stem[stem][1].suffix}).")


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


# --------------------------------------------------------------------------- tokenizing


@dataclass
class EncodedSplit:
    """Token ids without padding: one int32 array per text, and one label index per text."""

    input_ids: list[np.ndarray]
    labels: np.ndarray

    def lengths(self) -> np.ndarray:
        return np.fromiter((len(ids) for ids in self.input_ids), dtype=np.int64,
                           count=len(self.input_ids))

    def __len__(self) -> int:
        return len(self.labels)


@dataclass
class TokenizedData:
    """What every trial of a sweep receives (through Ray's object store)."""

    splits: dict[str, EncodedSplit]
    label_map: LabelMap
    model: str
    max_length: int
    pad_token_id: int
    truncated: dict[str, int] = field(default_factory=dict)  # texts cut to max_length, per split

    @property
    def num_labels(self) -> int:
        return len(self.label_map)

    def without_test(self) -> "TokenizedData":
        """The same data minus the test split: what tuning trials get, so they cannot peek."""
        splits = {k: v for k, v in self.splits.items() if k != "test"}
        return TokenizedData(splits, self.label_map, self.model, self.max_length,
                             self.pad_token_id, dict(self.truncated))


def encode_texts(tokenizer, texts: list[str], max_length: int) -> tuple[list[np.ndarray], int]:
    """Token ids of each text (special tokens added), cut to ``max_length`` keeping the closing
    special token; and how many texts were cut. Training and prediction both encode this way."""
    ids, cut = [], 0
    for seq in tokenizer(list(texts), add_special_tokens=True, truncation=False)["input_ids"]:
        if len(seq) > max_length:
            cut += 1
            seq = seq[: max_length - 1] + seq[-1:]  # keep the closing [SEP]
        ids.append(np.asarray(seq, dtype=np.int32))
    return ids, cut


def _model_config(model: str) -> Optional[dict]:
    """The model's config.json as a dict, from its folder or the local hub cache (never the
    network); None when neither has it (the model's own loading then says what is wrong)."""
    path = Path(resolve_model(model)).expanduser() / "config.json"
    if not path.is_file():
        try:
            from huggingface_hub import try_to_load_from_cache

            cached = try_to_load_from_cache(model, "config.json")
        except Exception:  # not a valid hub id, or no hub client: nothing to read
            return None
        if not isinstance(cached, str):
            return None
        path = Path(cached)
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return config if isinstance(config, dict) else None


def model_positions(model: str) -> Optional[int]:
    """How many tokens the model's position embeddings can hold (None when unknown). RoBERTa's
    family numbers positions from ``pad_token_id + 1``, so that many of its rows are never used."""
    config = _model_config(model) or {}
    positions = config.get("max_position_embeddings")
    if isinstance(positions, bool) or not isinstance(positions, int) or positions < 1:
        return None
    kind = str(config.get("model_type", ""))
    if "roberta" in kind or kind in ("camembert", "longformer"):
        positions -= int(config.get("pad_token_id") or 1) + 1
    return positions


def check_max_length(model: str, max_length: int) -> None:
    """Refuse a ``max_length`` beyond the model's positions before anything trains: a longer
    text would index past the position embeddings, deep inside the first batch of a trial."""
    positions = model_positions(model)
    if positions is not None and max_length > positions:
        raise ConfigError(
            f"`max_length` (--max-length) {max_length} is more than model {model!r} can read: its "
            f"position embeddings hold {positions} tokens (max_position_embeddings in its "
            f"config.json). Pass --max-length {positions} or less (with `tunebert train`: --set "
            f"max_length={positions}).")


def tokenize_splits(raw: dict[str, RawSplit], tokenizer, *, model: str, max_length: int,
                    include_test: bool = True) -> TokenizedData:
    """Build the label map from train, encode labels and texts of each split once."""
    check_max_length(model, max_length)
    label_map = LabelMap.from_labels(raw["train"].labels)
    splits, truncated = {}, {}
    for split in SPLITS:
        if split == "test" and not include_test:
            continue
        part = raw[split]
        labels = label_map.encode(part.labels, split=split, origin=part.origin)
        ids, truncated[split] = encode_texts(tokenizer, part.texts, max_length)
        splits[split] = EncodedSplit(ids, labels)
    return TokenizedData(splits, label_map, model, max_length, int(tokenizer.pad_token_id or 0),
                         truncated)


# --------------------------------------------------------------------------- batching


def bucketed_batches(lengths: np.ndarray, batch_size: int, *, rng: np.random.Generator,
                     shuffle: bool = True, bucket_batches: int = 50) -> list[np.ndarray]:
    """Index batches of similar length, so dynamic padding wastes little.

    Training order stays random: indices are shuffled, cut into chunks of ``bucket_batches``
    batches, sorted by length inside each chunk, batched, and the batches shuffled. Without
    ``shuffle`` (evaluation) the batches follow the sorted lengths (order does not matter there).
    """
    n = len(lengths)
    if not shuffle:
        order = np.argsort(lengths, kind="stable")
        return [order[i:i + batch_size] for i in range(0, n, batch_size)]
    order = rng.permutation(n)
    chunk = batch_size * bucket_batches
    batches = []
    for start in range(0, n, chunk):
        part = order[start:start + chunk]
        part = part[np.argsort(lengths[part], kind="stable")]
        batches.extend(part[i:i + batch_size] for i in range(0, len(part), batch_size))
    rng.shuffle(batches)
    return batches


def collate(split: EncodedSplit, indices: np.ndarray, pad_token_id: int):
    """Pad one batch to its own longest text. Returns (input_ids, attention_mask, labels) tensors."""
    import torch

    seqs = [split.input_ids[i] for i in indices]
    width = max(len(s) for s in seqs)
    ids = np.full((len(seqs), width), pad_token_id, dtype=np.int64)
    mask = np.zeros((len(seqs), width), dtype=np.int64)
    for row, seq in enumerate(seqs):
        ids[row, :len(seq)] = seq
        mask[row, :len(seq)] = 1
    return (torch.from_numpy(ids), torch.from_numpy(mask),
            torch.from_numpy(split.labels[indices]))


def steps_per_epoch(num_examples: int, batch_size: int) -> int:
    return math.ceil(num_examples / batch_size)
