"""`tunebert bench`'s entry: ``--parts gpu`` runs alone and imports neither Ray nor MLflow (a lent
GPU machine may have neither), every other part goes to ``tuning.bench.command``. The module is
imported by name when it is chosen, as the CLI imports each command's module
(``tuning.cli._run_function``)."""

from __future__ import annotations

import importlib

from trainables.errors import UserError
from tuning.bench import parts_of

GPU_CHECK, PARTS_RUN = "tuning.bench.gpu", "tuning.bench.command"


def run(args) -> int:
    parts = parts_of(args.parts)
    if "gpu" in parts and parts != ["gpu"]:
        raise UserError(f"--parts {args.parts!r}: gpu is the check for a GPU machine and runs "
                        f"alone; run `tunebert bench --parts gpu`, then the other parts")
    return importlib.import_module(GPU_CHECK if parts == ["gpu"] else PARTS_RUN).run(args)
