"""The distributions a parameter can take: float and int ranges, a categorical choice, a fixed value.

A leaf that imports nothing of the project, so the registry (``trainables/hparams.py``) and the
search spaces (``search_spaces/``) both build on it without importing each other.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Union


@dataclass(frozen=True)
class FloatRange:
    low: float
    high: float
    log: bool = False
    step: Optional[float] = None

    def describe(self) -> dict:
        d = {"low": self.low, "high": self.high}
        if self.log:
            d["log"] = True
        if self.step is not None:
            d["step"] = self.step
        return d


@dataclass(frozen=True)
class IntRange:
    low: int
    high: int
    log: bool = False
    step: int = 1

    def describe(self) -> dict:
        d = {"low": self.low, "high": self.high}
        if self.log:
            d["log"] = True
        if self.step != 1:
            d["step"] = self.step
        return d


@dataclass(frozen=True)
class Categorical:
    choices: tuple

    def describe(self) -> dict:
        return {"choices": list(self.choices)}


@dataclass(frozen=True)
class Fixed:
    value: Any

    def describe(self) -> Any:
        return self.value


Distribution = Union[FloatRange, IntRange, Categorical, Fixed]
