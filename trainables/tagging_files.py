"""Reading token-tagging data (words with one BIO tag each, and maybe a sentence label per example)
into one ``JointRawSplit`` per split, each example with its line or row number.

A data folder holds one of these layouts (``detect_layout`` tells which, and refuses a folder that
holds several, or none):
- ``seq``: one sub-folder per split (train, dev/validation/valid/val, test), each with ``seq.in``
  (the words, separated by spaces), ``seq.out`` (one BIO tag per word) and optionally ``label``
  (the sentence label), aligned line by line, as SNIPS and ATIS are shared;
- ``token-rows``: train/validation/test ``.jsonl``/``.json``/``.parquet`` files whose rows hold a
  list of words (``DataConfig.tokens_column``), a list of tags (``tags_column``) and optionally a
  label (``label_column``);
- ``conll``: train/dev/test ``.conll``/``.txt``/``.iob`` files, one word per line with its tag in
  the last column, a blank line between sentences, ``-DOCSTART-`` lines skipped; tags only;
- ``text``: text-classification files (``trainables.data``), labels only.

Tags are BIO: ``O``, ``B-<type>`` or ``I-<type>`` (an ``I-`` without a ``B-`` before it, IOB1, is
read as it is; the span metrics start a span there). An example whose tag count differs from its
word count, that has no words, a tag that is not BIO, a missing label or a value of the wrong type
is a bad row: refused with its file and line, or dropped with ``DataConfig.skip_bad_rows``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from trainables.data import SPLIT_ALIASES, map_split_names
from trainables.data_files import EXTENSIONS, _check_one_file_per_split, _read_rows, _read_text
from trainables.errors import ConfigError, DataError
from trainables.labels import _label_value, _missing, _row_list

SEQ_WORDS, SEQ_TAGS, SEQ_LABELS = "seq.in", "seq.out", "label"
CONLL_EXTENSIONS = (".conll", ".txt", ".iob")
TOKEN_ROW_EXTENSIONS = (".jsonl", ".json", ".parquet")
LAYOUTS = ("seq", "token-rows", "conll", "text")
DOCSTART = "-DOCSTART-"
_BIO = re.compile(r"O|[BI]-\S+")

# ``config`` below is a ``trainables.data.DataConfig`` (its columns, split_names and
# skip_bad_rows are read).


@dataclass
class JointRawSplit:
    """One split's examples as read: words, word-level tags and sentence labels (either may be
    None per example), which dataset each came from, and its 1-based line/row in ``origin``."""

    words: list[list[str]]
    tags: list[Optional[list[str]]]
    labels: list[Optional[Any]]
    sources: list[int]
    origin: str
    rows: list[int]
    source_names: tuple[str, ...] = ()  # one name per dataset, for messages and metrics

    def __len__(self) -> int:
        return len(self.words)

    def subset(self, positions: list[int], origin: Optional[str] = None) -> "JointRawSplit":
        return JointRawSplit([self.words[p] for p in positions], [self.tags[p] for p in positions],
                             [self.labels[p] for p in positions], [self.sources[p] for p in positions],
                             origin or self.origin, [self.rows[p] for p in positions],
                             self.source_names)


class _BadRow(Exception):
    """What is wrong with one example (becomes part of a DataError, or a skipped row)."""


def bio_problem(words: list[str], tags: list[str]) -> Optional[str]:
    """Why an example's words and tags cannot be used, or None when they can."""
    if not words:
        return "it has no words"
    if len(tags) != len(words):
        return f"{len(tags)} tag(s) for {len(words)} word(s): each word needs exactly one tag"
    for position, tag in enumerate(tags, start=1):
        if not _BIO.fullmatch(tag):
            return (f"tag {tag!r} (word {position}, {words[position - 1]!r}) is not a BIO tag: a "
                    f"tag is O, B-<type> or I-<type>")
    return None


class _SplitBuilder:
    """Collects one split's examples and its bad rows, then refuses or skips those."""

    def __init__(self, split: str, origin: str, config: Any, unit: str = "line") -> None:
        self.split, self.origin, self.config, self.unit = split, origin, config, unit
        self.examples: list[tuple[int, list[str], Optional[list[str]], Optional[Any]]] = []
        self.bad: list[tuple[int, str]] = []
        self.seen = 0

    def add(self, number: int, words: list[str], tags: Optional[list[str]],
            label: Optional[Any] = None) -> None:
        self.seen += 1
        problem = bio_problem(words, tags) if tags is not None else (None if words else
                                                                      "it has no words")
        if problem:
            self.bad.append((number, problem))
        else:
            self.examples.append((number, words, tags, label))

    def reject(self, number: int, problem: str) -> None:
        self.seen += 1
        self.bad.append((number, problem))

    def finish(self) -> tuple[JointRawSplit, Optional[str]]:
        where = f"{self.split} split ({self.origin})"
        if not self.seen:
            raise DataError(f"{where} is empty: it needs at least one example.")
        numbers = [n for n, _ in self.bad]
        if self.bad and not self.config.skip_bad_rows:
            number, problem = self.bad[0]
            more = (f" {len(numbers) - 1} other {self.unit}(s) are bad too: "
                    f"{self.unit}(s) {_row_list(numbers[1:])}." if len(numbers) > 1 else "")
            raise DataError(f"{where}, {self.unit} {number}: {problem}.{more} Fix or remove "
                            f"{'them' if more else 'it'}, or pass --skip-bad-rows to drop bad "
                            f"{self.unit}s.")
        if self.bad and not self.examples:
            raise DataError(f"{where}: all {self.seen} {self.unit}s are bad (first, {self.unit} "
                            f"{numbers[0]}: {self.bad[0][1]}); nothing is left after "
                            f"--skip-bad-rows.")
        note = (f"{where}: skipped {len(numbers)} of {self.seen} {self.unit}s that cannot be used "
                f"(--skip-bad-rows): {self.unit}(s) {_row_list(numbers)}; first: "
                f"{self.bad[0][1]}") if self.bad else None
        rows, words, tags, labels = (list(part) for part in zip(*self.examples))
        return JointRawSplit(words, tags, labels, [0] * len(rows), self.origin, rows), note


# --------------------------------------------------------------------------- finding the layout


def _split_stems(config: Any) -> set[str]:
    """The file or folder names that may hold a split: the usual ones and those --split-names gives."""
    names = {name for aliases in SPLIT_ALIASES.values() for name in aliases}
    return names | {name for _, name in (config.split_names if config is not None else ())}


def _seq_dirs(folder: Path) -> dict[str, Path]:
    return {p.name: p for p in sorted(folder.iterdir())
            if p.is_dir() and ((p / SEQ_WORDS).is_file() or (p / SEQ_TAGS).is_file())}


def _files_of(folder: Path, extensions: tuple[str, ...]) -> dict[str, list[Path]]:
    files: dict[str, list[Path]] = {}
    for ext in extensions:
        for path in sorted(folder.glob(f"*{ext}")):
            if path.suffix == ext and path.is_file():
                files.setdefault(path.stem, []).append(path)
    return files


def _first_row_keys(path: Path) -> set[str]:
    """The columns of a file's first row (empty when it cannot be read: the loader says why)."""
    try:
        if path.suffix == ".parquet":
            import pyarrow.parquet as pq  # optional dependency, only for .parquet files

            return set(pq.read_schema(path).names)
        with path.open(encoding="utf-8-sig") as lines:  # JSON Lines: the first row alone, not
            line = next((line for line in lines if line.strip()), "").strip()  # a file of GBs
        first = json.loads(_read_text(path))[0] if line.startswith("[") else json.loads(line)
        return set(first) if isinstance(first, dict) else set()
    except Exception:  # any unreadable file counts as no columns here
        return set()


def _found_layouts(folder: Path, config: Any) -> dict[str, list[str]]:
    """Each layout the folder matches, with the names that match it."""
    stems = _split_stems(config)
    tokens = config.tokens_column if config is not None else "tokens"
    tags = config.tags_column if config is not None else "tags"
    found: dict[str, list[str]] = {}
    for name in _seq_dirs(folder):
        found.setdefault("seq", []).append(f"{name}/")
    for stem, paths in _files_of(folder, CONLL_EXTENSIONS).items():
        if stem in stems:
            found.setdefault("conll", []).extend(p.name for p in paths)
    for stem, paths in _files_of(folder, EXTENSIONS).items():
        if stem not in stems:
            continue
        for path in paths:
            rows = path.suffix in TOKEN_ROW_EXTENSIONS and {tokens, tags} <= _first_row_keys(path)
            found.setdefault("token-rows" if rows else "text", []).append(path.name)
    return found


_DESCRIBED = {"seq": "split folders with seq.in/seq.out", "token-rows": "token-tagging rows",
              "conll": "CoNLL files", "text": "text-classification files"}


def detect_layout(folder: Path | str, config: Any = None) -> str:
    """'seq', 'token-rows', 'conll' or 'text' (see the module docstring). ``config``: a
    DataConfig, whose tokens/tags columns and split names are used (defaults without it)."""
    folder = Path(folder)
    found = _found_layouts(folder, config)
    if len(found) == 1:
        return next(iter(found))
    if not found:
        held = sorted(p.name + ("/" if p.is_dir() else "") for p in folder.iterdir())
        raise ConfigError(
            f"data folder {folder} holds no data in a layout tunebert reads; it holds "
            f"{held[:12]}. Expected one of: split folders (train/, dev/, test/) each with {SEQ_WORDS} "
            f"and {SEQ_TAGS}; train/dev/test CoNLL files ({', '.join(CONLL_EXTENSIONS)}); or "
            f"train/validation/test files ({', '.join(EXTENSIONS)}).")
    what = "; ".join(f"{_DESCRIBED[k]} ({', '.join(v[:6])})" for k, v in found.items())
    columns = (" If the rows hold words and tags under other column names, name them with the data "
               "settings tokens_column and tags_column." if "text" in found else "")
    raise ConfigError(
        f"data folder {folder} holds data in {len(found)} layouts: {what}. It is not clear which "
        f"to read: keep one layout in the folder and move the other files out.{columns}")


# --------------------------------------------------------------------------- the seq.in / seq.out layout


def _lines(path: Path) -> list[str]:
    """A file's lines, without the blank lines at its end (an editor's trailing newlines)."""
    lines = _read_text(path).splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    return lines


def read_seq_split(folder: Path, split: str, config: Any) -> tuple[JointRawSplit, Optional[str]]:
    """One split folder of the seq layout; ``label`` is optional."""
    for name in (SEQ_WORDS, SEQ_TAGS):
        if not (folder / name).is_file():
            raise DataError(f"{split} split folder {folder} has no {name}: the layout needs "
                            f"{SEQ_WORDS} (words) and {SEQ_TAGS} (one BIO tag per word) side by side.")
    names = [SEQ_WORDS, SEQ_TAGS] + ([SEQ_LABELS] if (folder / SEQ_LABELS).is_file() else [])
    columns = {name: _lines(folder / name) for name in names}
    counts = {name: len(lines) for name, lines in columns.items()}
    if len(set(counts.values())) > 1:
        shown = ", ".join(f"{folder / n}: {c} lines" for n, c in counts.items())
        raise DataError(f"{split} split: its files are read line by line together, but their line "
                        f"counts differ ({shown}). Make each line of {SEQ_WORDS} have its tags on the "
                        f"same line of {SEQ_TAGS}" + (f" and its label on that of {SEQ_LABELS}."
                                                      if SEQ_LABELS in counts else "."))
    builder = _SplitBuilder(split, str(folder), config)
    for index, (text, tag_text) in enumerate(zip(columns[SEQ_WORDS], columns[SEQ_TAGS])):
        number, words, tags = index + 1, text.split(), tag_text.split()
        if words and len(words) != len(tags):
            builder.reject(number, f"{SEQ_TAGS} has {len(tags)} tag(s) but {SEQ_WORDS} has "
                                   f"{len(words)} word(s): each word needs exactly one tag")
            continue
        label = None
        if SEQ_LABELS in columns:
            label = columns[SEQ_LABELS][index].strip()
            if not label:
                builder.reject(number, f"the label (in {SEQ_LABELS}) is empty")
                continue
            label = _label_value(label, number, config, split, str(folder))
        builder.add(number, words, tags, label)
    return builder.finish()


def read_seq_folder(folder: Path, config: Any) -> tuple[dict[str, JointRawSplit], list[str]]:
    dirs = _seq_dirs(folder)
    chosen = map_split_names(dirs, config.split_names, f"data folder {folder}", kind="folder")
    return _read_each(chosen, lambda name, split: read_seq_split(dirs[name], split, config))


def _read_each(chosen: dict[str, Optional[str]], read) -> tuple[dict[str, JointRawSplit], list[str]]:
    splits, notes = {}, []
    for split, name in chosen.items():
        if name is not None:
            splits[split], note = read(name, split)
            notes += [note] if note else []
    return splits, notes


# --------------------------------------------------------------------------- token rows (JSON Lines, Parquet)


def _string_list(value: Any, column: str) -> list[str]:
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        shown = repr(value)
        shown = shown if len(shown) <= 60 else shown[:57] + "..."
        raise _BadRow(f"column {column!r} must be a list of strings, but is a "
                      f"{type(value).__name__} ({shown})")
    if any(not v.strip() for v in value):
        raise _BadRow(f"column {column!r} holds an empty string")
    return list(value)


def read_token_rows(path: Path, split: str, config: Any) -> tuple[JointRawSplit, Optional[str]]:
    rows, _ = _read_rows(path, config)
    if not rows:
        raise DataError(f"{split} split ({path}) is empty: it needs at least one row.")
    missing = [c for c in (config.tokens_column, config.tags_column) if c not in rows[0]]
    if missing:
        raise DataError(
            f"{split} split ({path}) has no column {missing[0]!r}; the columns of its first row are "
            f"{sorted(k for k in rows[0] if isinstance(k, str))}. Token-tagging rows need a list of "
            f"words and a list of tags: name their columns with the data settings tokens_column "
            f"and tags_column.")
    labelled = config.label_column in rows[0]
    builder = _SplitBuilder(split, str(path), config, unit="row")
    for number, row in enumerate(rows, start=1):
        try:
            words = _string_list(row.get(config.tokens_column), config.tokens_column)
            tags = _string_list(row.get(config.tags_column), config.tags_column)
            label = row.get(config.label_column) if labelled else None
            if labelled and _missing(label):
                raise _BadRow(f"the label (column {config.label_column!r}) is missing")
        except _BadRow as exc:
            builder.reject(number, str(exc))
            continue
        label = _label_value(label, number, config, split, str(path)) if labelled else None
        builder.add(number, words, tags, label)
    return builder.finish()


def read_token_row_folder(folder: Path, config: Any) -> tuple[dict[str, JointRawSplit], list[str]]:
    files = {stem: paths[0] for stem, paths in _files_of(folder, TOKEN_ROW_EXTENSIONS).items()}
    chosen = map_split_names(files, config.split_names, f"data folder {folder}", kind="file")
    _check_one_file_per_split(folder, chosen)
    return _read_each(chosen, lambda stem, split: read_token_rows(files[stem], split, config))


# --------------------------------------------------------------------------- CoNLL column files


def _conll_sentences(path: Path) -> list[tuple[int, list[list[str]]]]:
    """(line number of the first word, the split columns of each line) per sentence."""
    sentences: list[tuple[int, list[list[str]]]] = []
    current: list[list[str]] = []
    start = 0
    for number, line in enumerate(_read_text(path).splitlines(), start=1):
        columns = line.split()
        if columns and columns[0] == DOCSTART:
            columns = []
        if not columns:
            if current:
                sentences.append((start, current))
            current = []
            continue
        start = start if current else number
        current.append(columns)
    if current:
        sentences.append((start, current))
    return sentences


def read_conll(path: Path, split: str, config: Any) -> tuple[JointRawSplit, Optional[str]]:
    builder = _SplitBuilder(split, str(path), config)
    for start, lines in _conll_sentences(path):
        single = next((i for i, columns in enumerate(lines) if len(columns) < 2), None)
        if single is not None:
            builder.reject(start, f"line {start + single} has one column ({lines[single][0]!r}): "
                                  f"a CoNLL line holds the word first and its tag last")
            continue
        builder.add(start, [c[0] for c in lines], [c[-1] for c in lines])
    return builder.finish()


def read_conll_folder(folder: Path, config: Any) -> tuple[dict[str, JointRawSplit], list[str]]:
    by_stem = _files_of(folder, CONLL_EXTENSIONS)
    chosen = map_split_names(by_stem, config.split_names, f"data folder {folder}", kind="file")
    for split, stem in chosen.items():
        if stem is not None and len(by_stem[stem]) > 1:
            raise DataError(f"data folder {folder} has {len(by_stem[stem])} files for the {split} "
                            f"split: {', '.join(p.name for p in by_stem[stem])}; it is not clear "
                            f"which one to read. Keep one of them in the folder.")
    return _read_each(chosen, lambda stem, split: read_conll(by_stem[stem][0], split, config))


READERS = {"seq": read_seq_folder, "token-rows": read_token_row_folder, "conll": read_conll_folder}
