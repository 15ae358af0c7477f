"""``tunebert presets`` and ``tunebert space``: what can be searched and the named configs."""

from __future__ import annotations

import yaml

from search_spaces.presets import PRESET_NOTES, PRESETS, STUDY_TEST_ACCURACY
from trainables.hparams import markdown_table
from tuning.config import SweepConfig


def presets(args) -> int:
    """``tunebert presets``."""
    for name, values in PRESETS.items():
        if name in STUDY_TEST_ACCURACY:
            print(f"# {name} (study, bert-base-uncased on MASSIVE: {STUDY_TEST_ACCURACY[name]} % "
                  f"test accuracy)")
        else:
            print(f"# {name} ({PRESET_NOTES[name]})")
        print(yaml.safe_dump({name: values}, sort_keys=False))
    return 0


def space(args) -> int:
    """``tunebert space``."""
    if args.table:
        print(markdown_table(), end="")
        return 0
    from tuning.sweep.runner import build_space  # local: keeps torch, mlflow and ray off --table

    space = build_space(SweepConfig(trainable=args.trainable, space_file=args.space_file))
    described = space.describe()
    described.pop("trainable", None)  # the family is chosen with --trainable, not in the file
    print(f"# tunebert search space (--trainable {args.trainable}); copy, edit, pass with --space FILE")
    print(yaml.safe_dump(described, sort_keys=False), end="")
    return 0
