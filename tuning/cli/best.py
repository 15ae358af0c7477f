"""``tunebert best``: print or export a sweep's best config, its top K or its Pareto front."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import yaml

from trainables.errors import UserError
from tuning.tracking import reachable_store
from tuning.tracking.best import front, front_rows, sweep_goal, top_k


def run(args) -> int:
    """``tunebert best``."""
    reachable_store(args.tracking_uri, args.storage)
    goal = sweep_goal(args.name, tracking_uri=args.tracking_uri, storage=args.storage).preferring(args.prefer)
    if args.front:
        if args.metric:
            raise UserError("--front lists the Pareto front of the sweep's own objectives; leave "
                            "out --metric (or use --top K to rank by one metric)")
        runs = front(args.name, goal=goal, tracking_uri=args.tracking_uri, storage=args.storage)
        if not runs:
            raise UserError(f"sweep {args.name!r} has no finished trial with {goal.wanted()} yet "
                            f"(val_accuracy_int8 is reported at a trial's last epoch: trials "
                            f"ASHA stopped early have none)")
        rows = front_rows(runs, goal)
        text = json.dumps(rows, indent=2) if args.format == "json" else _front_table(args.name, goal, rows)
    else:
        runs = top_k(args.name, max(1, args.top), args.metric, args.mode, goal=goal,
                     tracking_uri=args.tracking_uri, storage=args.storage)
        if not runs:
            ranked_by = f"a finite {args.metric!r}" if args.metric else goal.wanted()
            raise UserError(f"sweep {args.name!r} has no finished trial with {ranked_by} yet")
        metrics = [args.metric] if args.metric else goal.metrics
        if args.top > 1:
            rows = [{"rank": i + 1, "trial_id": r.trial_id, "run_id": r.run_id,
                     **{m: r.score(m) for m in metrics},
                     "epoch": int(r.metrics.get("best_epoch", 0)) or None, "config": r.config}
                    for i, r in enumerate(runs)]
            text = json.dumps(rows, indent=2) if args.format == "json" else yaml.safe_dump(rows, sort_keys=False)
        else:
            config = runs[0].config
            text = json.dumps(config, indent=2, sort_keys=True) if args.format == "json" \
                else yaml.safe_dump(config, sort_keys=True)
    if args.output:
        Path(args.output).write_text(text)
        what = "Pareto front" if args.front else "best config"
        scores = ", ".join(f"{m} {runs[0].score(m):.4g}" for m in ([args.metric] if args.metric else goal.metrics))
        print(f"[tunebert] wrote the {what} of {args.name!r} ({scores}) to {args.output}", file=sys.stderr)
    else:
        print(text, end="" if text.endswith("\n") else "\n")
    return 0


def _front_table(name: str, goal, rows: list[dict]) -> str:
    """``front_rows`` as an aligned text table under a line that says how to read it."""
    columns = [c for c in rows[0] if c != "config"]
    cells = [[f"{row[c]:.4g}" if isinstance(row[c], float) else str(row[c]) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    line = lambda values: "  ".join(v.ljust(w) for v, w in zip(values, widths)).rstrip()  # noqa: E731
    return "\n".join([f"# Pareto front of sweep {name!r}: {goal}. Feasible finished trials that no "
                      f"other one beats on every objective, best on {goal.metrics[0]} first; row 1 is "
                      f"what `tunebert best {name}` hands back.",
                      line(columns), line(["-" * w for w in widths]), *map(line, cells)]) + "\n"
