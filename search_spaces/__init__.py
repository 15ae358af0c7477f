"""Search spaces: define-by-run functions over plain-data parameter specs, YAML overrides, presets.

Nothing heavy is imported here: only the duck-typed ``optuna.Trial`` interface is used.
"""

from search_spaces.space import Categorical, Fixed, FloatRange, IntRange, Param, SearchSpace

__all__ = ["Categorical", "Fixed", "FloatRange", "IntRange", "Param", "SearchSpace"]
