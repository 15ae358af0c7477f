"""`tunebert bench`'s entry: ``--parts gpu`` runs alone and imports neither Ray nor MLflow (a lent
GPU machine may have neither), every other part goes to ``tuning.bench.command``."""

from __future__ import annotations

from trainables.errors import UserError


def parts_of(text: str) -> list[str]:
    return [p.strip() for p in text.split(",") if p.strip()]


def run(args) -> int:
    parts = parts_of(args.parts)
    if "gpu" in parts:
        if parts != ["gpu"]:
            raise UserError(f"--parts {args.parts!r}: gpu is the check for a GPU machine and runs "
                            f"alone; run `tunebert bench --parts gpu`, then the other parts")
        from tuning.bench.gpu import run as check_gpu

        return check_gpu(args)
    from tuning.bench.command import run as run_parts

    return run_parts(args)
