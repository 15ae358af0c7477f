"""What every part of the benchmark shares: its log line, the markdown report it fills, the
machine it ran on, and the data (tokenized, or a smaller folder of it)."""

from __future__ import annotations

import json
import logging
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from trainables.data import DataConfig, TokenizedData, load_raw_splits, tokenize_splits
from trainables.models import load_tokenizer

log = logging.getLogger("tuning.bench")


def say(message: str) -> None:
    log.info(f"bench: {message}")


@dataclass
class BenchReport:
    sections: dict[str, list[str]] = field(default_factory=dict)
    figures: list[str] = field(default_factory=list)
    numbers: dict[str, float] = field(default_factory=dict)

    def add(self, section: str, line: str) -> None:
        self.sections.setdefault(section, []).append(line)

    def markdown(self, command: str) -> str:
        out = ["# tunebert benchmark", "", f"Command: `{command}`", "",
               f"Machine: {machine()}", ""]
        for section, lines in self.sections.items():
            out += [f"## {section}", "", *lines, ""]
        for fig in self.figures:
            out += [f"![{Path(fig).stem}]({Path(fig).name})", ""]
        return "\n".join(out)


def machine() -> str:
    import os
    import platform

    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, {gpu}, torch {torch.__version__}"


# --------------------------------------------------------------------------- data


def load_data(data: DataConfig, model: str, max_length: int, subset: Optional[int]) -> TokenizedData:

    raw = load_raw_splits(data)
    tokenized = tokenize_splits(raw, load_tokenizer(model), model=model, max_length=max_length)
    if subset:
        train = tokenized.splits["train"]
        keep = np.random.default_rng(0).permutation(len(train))[:subset]
        tokenized.splits["train"] = type(train)([train.input_ids[i] for i in keep], train.labels[keep])
    return tokenized


def subset_folder(data_cfg: DataConfig, subset: int, folder: Path) -> Path:
    """A folder with ``subset`` training rows that cover every label (validation and test
    unchanged): shuffled, then taken round-robin over labels."""
    raw = load_raw_splits(data_cfg)
    folder.mkdir(parents=True, exist_ok=True)
    labels = raw["train"].labels
    order = np.random.default_rng(0).permutation(len(labels))
    seen: dict = {}
    rank = np.empty(len(labels), dtype=np.int64)
    for i in order:
        rank[i] = seen.get(labels[i], 0)
        seen[labels[i]] = rank[i] + 1
    keep = sorted(order, key=lambda i: rank[i])[:subset]
    for split, part in raw.items():
        idx = keep if split == "train" else range(len(part.texts))
        rows = ({"text": part.texts[i], "label": part.labels[i]} for i in idx)
        (folder / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder



def pm(values: list[float]) -> str:
    if len(values) == 1:
        return f"{100 * values[0]:.2f} %"
    return f"{100 * statistics.mean(values):.2f} ± {100 * statistics.stdev(values):.2f} %"


