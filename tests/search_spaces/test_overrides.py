import pytest

from search_spaces.finetune import SWEEP_LEVEL, finetune_space
from search_spaces.overrides import SpaceError, apply_overrides, load_space
from search_spaces.space import Categorical, Fixed, FloatRange, IntRange
from trainables.hparams import FinetuneConfig


def _apply(overrides):
    return apply_overrides(finetune_space(), overrides, config_cls=FinetuneConfig, source="s.yaml",
                           fixed_by_sweep=SWEEP_LEVEL)


def test_narrow_fix_drop_add_choices():
    space = _apply({"lr": {"low": 2e-5, "high": 1e-4, "log": True}, "optimizer": "adamw",
                    "label_smoothing": None, "freeze_layers": {"low": 0, "high": 3},
                    "batch_size": [32, 64], "momentum": {"low": 0.8, "high": 0.99}})
    assert space.get("lr").dist == FloatRange(2e-5, 1e-4, log=True)
    assert space.get("optimizer").dist == Fixed("adamw")
    assert space.get("label_smoothing") is None
    assert space.get("freeze_layers").dist == IntRange(0, 3)
    assert space.get("batch_size").dist == Categorical((32, 64))
    # a parameter the default space leaves out gets its declared condition
    assert space.get("momentum").when == {"optimizer": ("sgd",)}


@pytest.mark.parametrize("overrides, match", [
    ({"learning_rate": 1e-4}, r"s.yaml: unknown parameter\(s\) \['learning_rate'\].*allowed"),
    ({"epochs": 3}, "sweep settings: set them on the command line"),
    ({"lr": {"low": 1e-3, "high": 1e-5}}, r"`lr`: `low <= high` must hold, but got \(low=0.001, high=1e-05\)"),
    ({"lr": {"low": 0.0, "high": 1e-3, "log": True}}, "log-scale range needs low > 0"),
    ({"lr": {"low": "a", "high": 1e-3}}, r"`lr`.low must be a finite number, got 'a'"),
    ({"optimizer": "adam"}, r"`optimizer`: `optimizer` must be one of"),
    ({"batch_size": {"choices": [16, "big"]}}, r"`batch_size`.choices\[1\]"),
    ({"pooling": {"low": 0, "high": 1}}, "cannot take a numeric range"),
    ({"freeze_layers": {"low": 0.5, "high": 2}}, "must be an integer"),
    ({"lr": {"lo": 1e-5, "hi": 1e-3}}, "a range needs `low` and `high`"),
    ({"head": None}, r"`head_hidden` depends on \['head'\]"),
])
def test_bad_space_files_are_rejected_with_key_and_rule(overrides, match):
    with pytest.raises(SpaceError, match=match):
        _apply(overrides)


def test_load_space_file_errors(tmp_path):
    with pytest.raises(SpaceError, match="does not exist"):
        load_space(tmp_path / "nope.yaml", finetune_space(), config_cls=FinetuneConfig)
    bad = tmp_path / "bad.yaml"
    bad.write_text("lr: [1, 2\n")
    with pytest.raises(SpaceError, match="not valid YAML"):
        load_space(bad, finetune_space(), config_cls=FinetuneConfig)
    lst = tmp_path / "list.yaml"
    lst.write_text("- lr\n")
    with pytest.raises(SpaceError, match="expected a mapping"):
        load_space(lst, finetune_space(), config_cls=FinetuneConfig)
