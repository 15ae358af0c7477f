import ast
from pathlib import Path

import pytest

from trainables.errors import ConfigError
from trainables.hparams import (HPARAMS, BilstmConfig, ContrastiveConfig, FinetuneConfig, MultitaskConfig,
                               TfidfConfig, markdown_table, params_of_family)
from trainables.registry import TRAINABLES

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
    assert set(MultitaskConfig.field_names()) == {n for n, p in HPARAMS.items() if "multitask" in p.families}
    for family, (cls, _) in TRAINABLES.items():
        assert set(cls.field_names()) == {n for n, p in HPARAMS.items() if family in p.families}, family
    for name, p in HPARAMS.items():
        cls = TRAINABLES[p.families[0]][0]
        default = getattr(cls(), name)
        assert default == (cls.TRAINABLE if name == "trainable" else p.default), name
        p.check(p.default) if name != "trainable" else None
    # recipe knobs are fine-tuning only; the contrastive trainable refuses them by name
    with pytest.raises(ConfigError, match="apply to"):
        ContrastiveConfig.from_dict({"rdrop_alpha": 1.0})
    # and the fine-tuning trainable refuses the joint trials' task knobs by name
    with pytest.raises(ConfigError, match=r"\['slot_loss_weight'\] apply to \['multitask'\]"):
        FinetuneConfig.from_dict({"slot_loss_weight": 2.0})


@pytest.mark.parametrize("cls, family", [(FinetuneConfig, "finetune"), (ContrastiveConfig, "contrastive"),
                                         (MultitaskConfig, "multitask"), (TfidfConfig, "tfidf"),
                                         (BilstmConfig, "bilstm")])
def test_config_fields_types_and_defaults_in_source_equal_the_registry(cls, family):
    """The classes list their fields in source (editors and mypy see them); the registry stays the
    one declaration: a field, a type, a default or the order drifting from it fails here."""
    import dataclasses
    import typing

    fields = [(f.name, f.type, f.default) for f in dataclasses.fields(cls)]
    declared = [(p.name, p.annotation, family if p.name == "trainable" else p.default)
                for p in params_of_family(family)]
    assert fields == declared
    assert typing.get_type_hints(cls) == {name: kind for name, kind, _ in declared}
    assert all(f.default_factory is dataclasses.MISSING for f in dataclasses.fields(cls))
    assert cls.__dataclass_params__.frozen


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


def _compared_strings(test: ast.expr) -> tuple[str, str] | None:
    """(subject, string) for a test `subject == "literal"` (either side), else None."""
    if isinstance(test, ast.Compare) and len(test.ops) == 1 and isinstance(test.ops[0], ast.Eq):
        left, right = test.left, test.comparators[0]
        if isinstance(left, ast.Constant):
            left, right = right, left
        if isinstance(right, ast.Constant) and isinstance(right.value, str):
            return ast.unparse(left), right.value
    return None


def _if_chains(tree: ast.AST):
    """Per function: every subject that `if`/`elif` tests compare against two or more string
    literals (`if kind == "adamw": ... elif kind == "sgd":`, or one `if` after another)."""
    for function in ast.walk(tree):
        if not isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        chains: dict[str, tuple[int, set]] = {}
        for node in ast.walk(function):
            found = _compared_strings(node.test) if isinstance(node, (ast.If, ast.IfExp)) else None
            if found:
                chains.setdefault(found[0], (node.lineno, set()))[1].add(found[1])
        for line, strings in chains.values():
            if len(strings) >= 2:
                yield line, strings


def _registry_reads(tree: ast.AST) -> set[str]:
    """Parameters whose choices a module reads from the registry: `choices_of("name")` or
    `HPARAMS["name"]`."""
    read = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", None)) == "choices_of" \
                and node.args and isinstance(node.args[0], ast.Constant):
            read.add(node.args[0].value)
        if isinstance(node, ast.Subscript) and getattr(node.value, "id", None) == "HPARAMS" \
                and isinstance(node.slice, ast.Constant):
            read.add(node.slice.value)
    return read


def _repeated_choice_lists(tree: ast.AST, where: str) -> list[str]:
    """A literal list of choices (a subset of a parameter's choices), or an if-chain that goes
    through every choice of a parameter without reading that parameter's choices from the
    registry (so its fallback error and its coverage cannot follow the registry)."""
    choice_sets = {name: set(p.choices) for name, p in HPARAMS.items()
                   if p.choices is not None and all(isinstance(c, str) for c in p.choices)}
    offenders = []
    for line, strings in _string_lists(tree):
        offenders += [f"{where}:{line} {sorted(strings)} ({name})"
                      for name, allowed in choice_sets.items() if strings <= allowed]
    read = _registry_reads(tree)
    for line, strings in _if_chains(tree):
        names = [name for name, allowed in choice_sets.items() if strings == allowed]
        if names and not read & set(names):
            offenders.append(f"{where}:{line} if-chain over {sorted(strings)} ({', '.join(names)}): "
                             f"read the choices with trainables.hparams.choices_of({names[0]!r})")
    return offenders


def test_no_other_module_spells_out_a_choice_list_of_a_registered_parameter():
    """Choices live in the registry only (its table, and the trial families beside the HParam
    type); the CLI, spaces, validation and docs read them."""
    registry = {REPO / "trainables" / "hparam_table.py", REPO / "trainables" / "hparam_kinds.py"}
    offenders = []
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            if path in registry:
                continue
            offenders += _repeated_choice_lists(ast.parse(path.read_text()), str(path.relative_to(REPO)))
    assert not offenders, "choice lists repeated outside the registry (trainables/hparam_table.py):\n" + \
        "\n".join(offenders)


def test_the_checker_would_catch_a_repeated_choice_list():
    tree = ast.parse('PRECISIONS = ("auto", "fp32", "bf16")\nok = ("max", "min")')
    found = [s for _, s in _string_lists(tree)]
    assert {"auto", "fp32", "bf16"} in found and found[0] <= set(HPARAMS["precision"].choices)
    assert not {"max", "min"} <= set(HPARAMS["pooling"].choices)


@pytest.mark.parametrize("source, caught", [
    ('def f(kind):\n    if kind == "adamw":\n        return 1\n    elif kind == "sgd":\n        return 2\n'
     '    raise ValueError("optimizer must be adamw or sgd")\n', True),
    ('def f(kind):\n    if kind == "adamw":\n        return 1\n    if "sgd" == kind:\n        return 2\n', True),
    ('def f(kind):\n    if kind not in choices_of("optimizer"):\n        raise ValueError(kind)\n'
     '    if kind == "adamw":\n        return 1\n    if kind == "sgd":\n        return 2\n', False),
    ('def f(kind):\n    if kind == "sgd":\n        return 2\n    return 1\n', False),
])
def test_the_checker_would_catch_an_if_chain_over_every_choice(source, caught):
    assert bool(_repeated_choice_lists(ast.parse(source), "m.py")) is caught


def test_docs_parameter_table_is_the_registry():
    page = (REPO / "docs" / "search-space.md").read_text()
    start, end = "<!-- hparams:start -->\n", "<!-- hparams:end -->"
    assert start in page and end in page, "docs/search-space.md lost its generated parameter table markers"
    table = page.split(start, 1)[1].split(end, 1)[0]
    assert table == markdown_table(), ("docs/search-space.md's parameter table is stale: regenerate it "
                                       "with `tunebert space --table`")
