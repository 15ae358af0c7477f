"""A benchmark job's resumable checkpoint folder (``JobFolder``): written by ``tuning.results.train`` each
epoch, named by the benchmark's jobs (``tuning.results.jobs``). A leaf, so neither imports the other."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Callable, Optional


class JobFolder:
    """A benchmark job's resumable checkpoint, ``<storage>/jobs/<job key>/``.

    Each epoch's checkpoint goes into a folder of its own (``epoch-0003/``, with the metrics that
    epoch reported in ``metrics.json``); then ``latest`` is switched to it by an atomic rename and
    the older folders are removed. A process killed at any moment leaves a complete checkpoint
    that ``latest`` names, or none.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def latest(self) -> Optional[Path]:
        pointer = self.path / "latest"
        if not pointer.is_file():
            return None
        folder = self.path / pointer.read_text().strip()
        return folder if (folder / "metrics.json").is_file() else None

    def metrics(self) -> dict[str, float]:
        """What the latest checkpoint's epoch reported ({} without a checkpoint)."""
        latest = self.latest()
        return json.loads((latest / "metrics.json").read_text()) if latest else {}

    def save(self, metrics: dict, write: Callable[[str], None]) -> None:
        """``write(folder)`` (a trainable's checkpoint writer) for the epoch ``metrics`` report."""
        folder = self.path / f"epoch-{int(metrics['epoch']):04d}"
        shutil.rmtree(folder, ignore_errors=True)
        write(str(folder))
        (folder / "metrics.json").write_text(json.dumps(metrics, default=float))
        partial = self.path / ".latest.partial"
        partial.write_text(folder.name)
        os.replace(partial, self.path / "latest")
        for old in self.path.glob("epoch-*"):
            if old != folder:
                shutil.rmtree(old, ignore_errors=True)

    def remove(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)
