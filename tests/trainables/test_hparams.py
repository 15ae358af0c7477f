import ast
from pathlib import Path

import pytest

from trainables.errors import ConfigError
from trainables.hparams import HPARAMS, ContrastiveConfig, FinetuneConfig, markdown_table

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("tuning", "search_spaces", "trainables")


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
    ({"stop_epoch": 5, "epochs": 4}, r"`stop_epoch` \(5\) cannot exceed `epochs` \(4\)"),
    ({"swa_epochs": 3, "epochs": 4, "stop_epoch": 2}, r"`swa_epochs` \(3\) cannot exceed"),
    ({"ema_decay": 0.999, "swa_epochs": 1}, "use one of them"),
    ({"ema_decay": 1.0}, "`ema_decay` must lie in"),
    ({"temperature": 0.1}, r"\['temperature'\] apply to \['contrastive'\] trials only"),
])
def test_bad_values_name_key_value_and_rule(values, match):
    with pytest.raises(ConfigError, match=match):
        FinetuneConfig.from_dict(values)


def test_config_fields_are_exactly_the_registry():
    assert set(FinetuneConfig.field_names()) == {n for n, p in HPARAMS.items() if "finetune" in p.families}
    assert set(ContrastiveConfig.field_names()) == {n for n, p in HPARAMS.items() if "contrastive" in p.families}
    for name, p in HPARAMS.items():
        cls = FinetuneConfig if "finetune" in p.families else ContrastiveConfig
        default = getattr(cls(), name)
        assert default == (cls.TRAINABLE if name == "trainable" else p.default), name
        p.check(p.default) if name != "trainable" else None
    # recipe knobs are fine-tuning only; the contrastive trainable refuses them by name
    with pytest.raises(ConfigError, match="apply to"):
        ContrastiveConfig.from_dict({"rdrop_alpha": 1.0})


def test_every_default_search_range_is_valid_for_its_parameter():
    for p in HPARAMS.values():
        if p.search is None:
            continue
        d = p.search.describe()
        values = d["choices"] if isinstance(d, dict) and "choices" in d else \
            [d["low"], d["high"]] if isinstance(d, dict) else [d]
        for v in values:
            p.check(v)


def _string_lists(tree: ast.AST):
    """Every tuple/list/set literal of two or more string constants in a module."""
    for node in ast.walk(tree):
        if isinstance(node, (ast.Tuple, ast.List, ast.Set)) and len(node.elts) >= 2 and all(
                isinstance(e, ast.Constant) and isinstance(e.value, str) for e in node.elts):
            yield node.lineno, {e.value for e in node.elts}


def test_no_other_module_spells_out_a_choice_list_of_a_registered_parameter():
    """Choices live in trainables/hparams.py only; the CLI, spaces, validation and docs read them."""
    choice_sets = {name: set(p.choices) for name, p in HPARAMS.items()
                   if p.choices is not None and all(isinstance(c, str) for c in p.choices)}
    offenders = []
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            if path.name == "hparams.py" and package == "trainables":
                continue
            for line, strings in _string_lists(ast.parse(path.read_text())):
                for name, allowed in choice_sets.items():
                    if strings <= allowed:
                        offenders.append(f"{path.relative_to(REPO)}:{line} {sorted(strings)} ({name})")
    assert not offenders, "choice lists repeated outside trainables/hparams.py:\n" + "\n".join(offenders)


def test_the_checker_would_catch_a_repeated_choice_list():
    tree = ast.parse('PRECISIONS = ("auto", "fp32", "bf16")\nok = ("max", "min")')
    found = [s for _, s in _string_lists(tree)]
    assert {"auto", "fp32", "bf16"} in found and found[0] <= set(HPARAMS["precision"].choices)
    assert not {"max", "min"} <= set(HPARAMS["pooling"].choices)


def test_docs_parameter_table_is_the_registry():
    page = (REPO / "docs" / "search-space.md").read_text()
    start, end = "<!-- hparams:start -->\n", "<!-- hparams:end -->"
    assert start in page and end in page, "docs/search-space.md lost its generated parameter table markers"
    table = page.split(start, 1)[1].split(end, 1)[0]
    assert table == markdown_table(), ("docs/search-space.md's parameter table is stale: regenerate it "
                                       "with `tunebert space --table`")
