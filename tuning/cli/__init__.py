"""The ``tunebert`` command line: the parser, built from one ``Command`` record per command
(``tuning.cli.commands``), the shared argument groups, and the run functions of the small commands.

User mistakes end with one message on stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Callable, Optional

import tuning.console as console
from trainables.errors import UserError
from tuning.cli.commands import COMMANDS, Command
from tuning.credentials import has_password, redact
from tuning.interrupt import Interrupted, exit_soon, raise_on_sigterm
from tuning.settings import EXIT_USER_ERROR


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tunebert",
        description="Hyperparameter sweeps for BERT-family text classifiers on Ray Tune, with "
                    "Optuna search and every trial in MLflow.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        p = sub.add_parser(command.name, help=command.help, description=command.description)
        command.add_arguments(p)
        console.add_arguments(p)
    return parser


def _run_function(command: Command) -> Callable[[argparse.Namespace], int]:
    """The function that runs ``command``, imported now: only the chosen command's module (and
    torch, Ray or MLflow if it needs them) is loaded, never the other commands'."""
    module, _, function = command.run.partition(":")
    return getattr(importlib.import_module(module), function)


def refuse_password_arguments(args) -> None:
    """A password on the command line is readable by everyone on the machine (``ps``,
    ``/proc/PID/cmdline``), kept in shell history and recorded by Ray with the driver's job:
    tunebert takes passwords from the environment only (issue 11 item 12)."""
    uri = getattr(args, "tracking_uri", None)
    if uri and has_password(uri):
        raise UserError(
            f"--tracking-uri {redact(uri)} carries a password on the command line, where anyone on "
            f"this machine can read it (ps, /proc) and the shell keeps it in its history. Pass it "
            f"in the environment instead: export MLFLOW_TRACKING_URI='<the URI with its "
            f"password>' and leave --tracking-uri out; or leave the password out of the URI and "
            f"set PGPASSWORD (or ~/.pgpass) for PostgreSQL, MLFLOW_TRACKING_USERNAME and "
            f"MLFLOW_TRACKING_PASSWORD for an MLflow server")


def main(argv: Optional[list[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    command = next(c for c in COMMANDS if c.name == args.command)
    args.argv = argv  # the exact command line, for outputs that record how they were made
    console.setup(args.verbosity)
    raise_on_sigterm()  # docker stop, Kubernetes: stop as cleanly as Ctrl-C does
    try:
        refuse_password_arguments(args)
        return _run_function(command)(args)
    except UserError as exc:  # a password in any URI it names (--address ray://u:pw@h) is masked

        print(f"tunebert {args.command}: error: {redact(str(exc))}", file=sys.stderr)
        return EXIT_USER_ERROR
    except BrokenPipeError:  # output piped into `head` and the like
        return 0
    except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM as interrupt.Interrupted
        signame = f" by {exc.args[0]}" if isinstance(exc, Interrupted) else ""
        if getattr(exc, "resume_hint", None):  # a sweep: its runs are marked KILLED in MLflow
            hint = f"; the sweep stopped and is marked KILLED in MLflow; resume with: {exc.resume_hint}"
        else:
            name = getattr(args, "name", None)
            hint = f"; resume with: tunebert resume {name}" if name and args.command in ("sweep", "resume") else ""
        print(f"\ntunebert {args.command}: interrupted{signame}{hint}", file=sys.stderr)
        if not isinstance(exc, Interrupted):
            return 130
        exit_soon(exc.exit_status)  # a real stop signal: do not wait a minute for a Ray that is gone
        return exc.exit_status


if __name__ == "__main__":
    sys.exit(main())
