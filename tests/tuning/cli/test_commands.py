"""Every command is defined one way (``tuning.cli.commands.COMMANDS``), and the parser stays light:
``tunebert --help`` reads the definitions only, and running a command imports its own module only."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tuning.cli import build_parser
from tuning.cli.commands import COMMANDS

REPO = Path(__file__).resolve().parents[3]
HEAVY = ("torch", "ray", "mlflow")


def _imported(*argv: str) -> set[str]:
    """The modules ``python -m tuning.cli ARGV`` imports, read from ``-X importtime``."""
    done = subprocess.run([sys.executable, "-X", "importtime", "-m", "tuning.cli", *argv], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return {line.rpartition("|")[2].strip() for line in done.stderr.splitlines()
            if line.startswith("import time:") and "|" in line}


@pytest.mark.parametrize("argv", [["--help"], ["predict", "--help"]])
def test_help_imports_no_torch_ray_or_mlflow(argv):
    modules = _imported(*argv)
    assert "tuning.cli.commands" in modules, "the importtime output was not read"
    heavy = sorted(m for m in modules if m.split(".")[0] in HEAVY)
    assert not heavy, f"tunebert {' '.join(argv)} imports {heavy[:5]}"


def test_a_command_imports_its_own_run_module_and_no_other_commands():
    # importlib.import_module bypasses -X importtime's report: read sys.modules after main instead
    code = ("import json, sys; from tuning.cli import main; main(['presets']); "
            "print(json.dumps(sorted(sys.modules)), file=sys.stderr)")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    modules = set(json.loads(done.stderr.strip().splitlines()[-1]))
    assert "tuning.cli.catalog" in modules
    others = {c.run.partition(":")[0] for c in COMMANDS} - {"tuning.cli.catalog"}
    assert not modules & others, f"tunebert presets imported {sorted(modules & others)}"


def test_every_command_names_an_existing_run_function_and_reaches_the_parser():
    names = [c.name for c in COMMANDS]
    assert len(names) == len(set(names)), f"a command is defined twice: {names}"
    parser = build_parser()
    subparsers = next(a for a in parser._actions if a.dest == "command")
    assert list(subparsers.choices) == names
    for command in COMMANDS:
        module, _, function = command.run.partition(":")
        path = REPO / Path(*module.split("."))
        path = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
        defined = {node.name for node in ast.parse(path.read_text()).body if isinstance(node, ast.FunctionDef)}
        assert function in defined, f"{command.name}: {command.run} names no function of {path}"
