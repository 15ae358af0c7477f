"""The shape of the tree (issue #22): the folders are the ones the README's Layout section names,
tuning's subpackages import only downwards, and no module or function outgrows its job.

Read from the source, nothing imported, like tests/test_imports.py.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("tuning", "trainables", "search_spaces")
MAX_MODULE_LINES = 500
MAX_FUNCTION_LINES = 80
# tuning's layers, lowest first: a subpackage may import its own modules and lower layers only.
# "base" is the modules at tuning/'s root (config, settings, console, credentials, interrupt);
# tuning/__init__.py, the public API's lazy facade, is no layer.
LAYERS = {"base": 0, "tracking": 1, "sweep": 2, "serve": 2, "report": 2, "results": 3, "bench": 4,
          "cli": 5}


def _sources():
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            if "results" in path.relative_to(ROOT / package).parts[:-1] and "bench" in path.parts:
                continue  # tuning/bench/results/: committed benchmark outputs, not code
            yield path


def _layout_block() -> list[str]:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("\n## Layout\n", 1)[1]
    return section.split("```", 2)[1].strip("\n").splitlines()


def _layout_folders(lines: list[str]) -> set[str]:
    """The folders the Layout block names: `name/` at the start of a line, nested by two spaces
    under the last top-level folder."""
    folders, parent = set(), ""
    for line in lines:
        match = re.match(r"^( *)([\w.-]+)/\s", line + " ")
        if not match:
            continue
        indent, name = len(match.group(1)), match.group(2)
        if indent == 0:
            parent = name
            folders.add(name)
        else:
            folders.add(f"{parent}/{name}")
    return folders


def test_the_layout_section_names_exactly_the_folders_of_the_tree():
    named = _layout_folders(_layout_block())
    assert named, "the README's Layout section names no folders"
    missing = sorted(f for f in named if not (ROOT / f).is_dir())
    assert not missing, f"the README's Layout section names folders that do not exist: {missing}"
    subpackages = {str(p.parent.relative_to(ROOT)) for p in (ROOT / "tuning").glob("*/__init__.py")}
    unnamed = sorted(subpackages - named)
    assert not unnamed, f"tuning subpackages missing from the README's Layout section: {unnamed}"
    for top in ("tuning", "trainables", "search_spaces", "tests", "docker", "docs"):
        assert top in named, f"the README's Layout section does not name {top}/"


def test_the_layout_parser_reads_nesting():
    assert _layout_folders(["a/   x", "  b/  y", "c/ z", "  d/", "not a folder"]) == \
        {"a", "a/b", "c", "c/d"}


def _layer(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] != "tuning" or len(parts) == 1:
        return None
    return parts[1] if (ROOT / "tuning" / parts[1]).is_dir() else "base"


def _module_name(path: Path) -> str:
    name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
    return name[: -len(".__init__")] if name.endswith(".__init__") else name


def test_tuning_subpackages_import_only_downwards():
    upward = []
    for path in _sources():
        module = _module_name(path)
        if module == "tuning" or not module.startswith("tuning."):
            continue
        own = _layer(module)
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets = [node.module] if isinstance(node, ast.ImportFrom) and node.module and \
                not node.level else [a.name for a in node.names] if isinstance(node, ast.Import) else []
            for target in targets:
                layer = _layer(target)
                if layer is None or layer == own:
                    continue
                if LAYERS[layer] >= LAYERS[own]:
                    upward.append(f"{path.relative_to(ROOT)}:{node.lineno} ({own}) imports {target} ({layer})")
    assert not upward, "imports that do not point down tuning's layers " \
                       f"({' < '.join(sorted(LAYERS, key=LAYERS.get))}):\n" + "\n".join(upward)


def test_every_subpackage_has_a_layer():
    subpackages = {p.parent.name for p in (ROOT / "tuning").glob("*/__init__.py")}
    assert subpackages <= set(LAYERS), f"give these a layer in LAYERS: {sorted(subpackages - set(LAYERS))}"


def test_no_module_or_function_outgrows_its_job():
    too_long = []
    for path in _sources():
        text = path.read_text(encoding="utf-8")
        lines = text.count("\n")
        if lines > MAX_MODULE_LINES:
            too_long.append(f"{path.relative_to(ROOT)}: {lines} lines (at most {MAX_MODULE_LINES})")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    too_long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name}: {length} lines "
                                    f"(at most {MAX_FUNCTION_LINES})")
    assert not too_long, "split these by job:\n" + "\n".join(too_long)


@pytest.mark.parametrize("package", sorted(LAYERS.keys() - {"base"}))
def test_each_subpackage_says_its_job(package):
    init = ROOT / "tuning" / package / "__init__.py"
    docstring = ast.get_docstring(ast.parse(init.read_text(encoding="utf-8")))
    assert docstring and len(docstring.split("\n\n")[0]) > 20, \
        f"tuning/{package}/__init__.py: its docstring's first lines should say the package's job"
