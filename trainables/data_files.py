"""Reading one data file into rows: JSON Lines or a JSON array (``.jsonl``/``.json``), delimited
text (``.csv``/``.tsv``, the delimiter detected or given), Parquet; and finding a folder's split
files, refusing two files for one split. Every problem is a ``DataError`` naming the file and line.
"""

from __future__ import annotations

import csv
import io
import json
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any, Optional

from trainables.errors import DataError

EXTENSIONS = (".jsonl", ".json", ".csv", ".tsv", ".parquet")
# CSV delimiters that are detected (csv.Sniffer, restricted to these) or may be given
DELIMITERS = {",": "comma", ";": "semicolon", "\t": "tab", "|": "pipe"}
DELIMITER_ALIASES = {"tab": "\t", "\\t": "\t", "comma": ",", "semicolon": ";", "pipe": "|"}

# ``config`` below is a ``trainables.data.DataConfig`` (its delimiter, text_column and
# label_column are read); not imported, since trainables.data imports this module.


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8-sig")  # -sig: drops the byte-order mark Excel writes
    except UnicodeDecodeError as exc:
        line = path.read_bytes()[: exc.start].count(b"\n") + 1
        raise DataError(
            f"{path}: not valid UTF-8 (byte {exc.start}, line {line}). Re-save the file as UTF-8."
        ) from exc


def _read_rows(path: Path, config: Any) -> tuple[list[dict], str]:
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


def _delimiter(text: str, path: Path, config: Any) -> str:
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



# --------------------------------------------------------------------------- a folder's split files


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
