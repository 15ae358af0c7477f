import pytest

from trainables.errors import ConfigError
from trainables.hparams import FinetuneConfig


def test_round_trip_and_coercion():
    cfg = FinetuneConfig.from_dict({"lr": 1, "epochs": 3.0})
    assert cfg.lr == 1.0 and isinstance(cfg.lr, float) and cfg.epochs == 3
    assert FinetuneConfig.from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize("values, match", [
    ({"lrr": 1e-4}, r"unknown finetune parameter\(s\) \['lrr'\]"),
    ({"optimizer": "adam"}, r"`optimizer` must be one of \['adamw', 'sgd'\], but got 'adam'"),
    ({"lr": 0.0}, r"`lr` must lie in \(0.0, 10.0\]"),
    ({"batch_size": 0}, "`batch_size` must lie in"),
    ({"batch_size": "32"}, "`batch_size` must be an integer"),
    ({"nesterov": True}, "`nesterov` needs optimizer 'sgd'"),
    ({"min_lr": 1e-3, "lr": 1e-4}, "`min_lr` must lie in"),
    ({"pooling": "avg"}, "`pooling` must be one of"),
])
def test_bad_values_name_key_value_and_rule(values, match):
    with pytest.raises(ConfigError, match=match):
        FinetuneConfig.from_dict(values)
