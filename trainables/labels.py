"""Rows to a split of (text, label): missing texts and labels found (or skipped with
``skip_bad_rows``), label cells read as the class they stand for, structured labels refused; and
``LabelMap``, label value <-> class index, built from the train split.
"""

from __future__ import annotations

import collections.abc
import math
import re
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np

from trainables.errors import DataError

SPLITS = ("train", "validation", "test")  # the roles a split plays
SHOWN_ROWS = 10  # row numbers listed in a --skip-bad-rows report

# ``config`` below is a ``trainables.data.DataConfig`` (its columns and skip_bad_rows are read);
# not imported, since trainables.data imports this module.


@dataclass
class RawSplit:
    texts: list[str]
    labels: list[Any]
    origin: str  # file or dataset the split came from, for error messages
    rows: list[int] = field(default_factory=list)  # each example's 1-based row in its origin

    def __len__(self) -> int:
        return len(self.texts)


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



# --------------------------------------------------------------------------- rows to a split


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


def _label_value(label: Any, number: int, config: Any, split: str, origin: str) -> Any:
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


def _rows_to_split(rows: list[dict], config: Any, origin: str, split: str,
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

