"""What tunebert may delete of a user's files: only a model folder it wrote, and only by swapping
a complete new model in for it.

**The rule.** A folder tunebert hands a model over in (``train --output-dir``, ``select
--output-dir``'s ``seed-<seed>/`` and ``model/``, ``tune``'s output folder) is replaced only when
it is missing, empty, or a tunebert model folder that holds nothing tunebert did not write
(``check_replaceable``): a model folder (``tunebert.json`` with tunebert's format, and only the
file names ``trainables.model_files.WRITTEN_FILES``), or an ensemble folder (``ensemble.json`` and
``member-<i>/`` model folders, as ``save_ensemble_model`` writes it). Anything else is refused
with a ``ConfigError`` naming the folder and what in it is foreign, before anything trains.
The folder around ``seed-<seed>/`` and ``model/`` may hold anything: tunebert never removes it.

**The swap** (``replacing``). The new model is written to a sibling of the target,
``.<name>.tunebert-new-<pid>`` (same parent, so the same file system and renames are atomic),
then swapped in: the old model is renamed to ``.<name>.tunebert-old-<pid>``, the new one to
``<name>``, and only then is the old one removed. A kill while the new model is written leaves
the old model in place; a kill after the second rename leaves the new one. Between the two
renames (two system calls, microseconds apart) ``<name>`` does not exist for a moment: a kill
exactly there leaves both models complete beside it, and ``recover`` (called by every command
before it writes to ``<name>``) puts the new one in place (the old one is only moved aside once
the new one is complete). Whatever the kill, one model is at ``<name>`` or is put back there by
the next run, never neither; a reader that opens ``<name>`` during the swap itself can find it
missing. ``recover`` removes only folders with this naming whose writing process is gone and
that hold nothing but names ``save_model`` writes.

**One output folder, one pipeline** (``claim``). ``tunebert tune`` writes OWNER_FILE into its
output folder, naming the pipeline (its sweep name and folder). Another pipeline is refused that
folder while the owner's pipeline state still exists; resuming the owner goes on.

Nothing here imports mlflow or Ray.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator, Optional

from trainables.errors import ConfigError
from trainables.model_files import (CARD_FILE, ENSEMBLE_FILE, ENSEMBLE_KIND, MODEL_FILE,
                                    MODEL_FORMATS, written_by_save_model)

log = logging.getLogger(__name__)

OWNER_FILE = "tunebert-owner.json"
_MEMBER = re.compile(r"member-\d+")
_LEFTOVER = re.compile(r"\.(?P<name>.+)\.tunebert-(?P<kind>new|old)-(?P<pid>\d+)")
_SHOWN = 5  # foreign names listed in a message

# indirection for tests, which kill the process between the two renames of a swap
_rename = os.rename


# --------------------------------------------------------------------------- what tunebert wrote


def _json(path: Path) -> Optional[dict]:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def _foreign_in_model(folder: Path, prefix: str = "") -> list[str]:
    """Entries of a single model folder that ``save_model`` does not write."""
    return [prefix + entry.name + ("/" if entry.is_dir() else "")
            for entry in sorted(folder.iterdir())
            if entry.is_dir() or entry.is_symlink() or not written_by_save_model(entry.name)]


def _foreign_in_ensemble(folder: Path) -> list[str]:
    foreign = []
    for entry in sorted(folder.iterdir()):
        if entry.name in (ENSEMBLE_FILE, CARD_FILE) and entry.is_file() and not entry.is_symlink():
            continue
        if _MEMBER.fullmatch(entry.name) and entry.is_dir() and not entry.is_symlink() \
                and model_kind(entry) == "single":
            foreign += _foreign_in_model(entry, prefix=f"{entry.name}/")
        else:
            foreign.append(entry.name + ("/" if entry.is_dir() else ""))
    return foreign


def model_kind(folder: Path) -> Optional[str]:
    """"single" or "ensemble" when ``folder`` holds tunebert's manifest of that kind (valid JSON
    of tunebert's format), else None. "single" is one model folder: a text classifier's or a
    multi-task model's (``MODEL_FORMATS``)."""
    if (folder / MODEL_FILE).is_file():
        meta = _json(folder / MODEL_FILE)
        return "single" if meta is not None and meta.get("format") in MODEL_FORMATS else None
    if (folder / ENSEMBLE_FILE).is_file():
        meta = _json(folder / ENSEMBLE_FILE)
        return "ensemble" if meta is not None and meta.get("kind") == ENSEMBLE_KIND else None
    return None


def foreign_entries(folder: Path) -> Optional[list[str]]:
    """What in ``folder`` tunebert did not write: None when it holds no tunebert model manifest,
    else the entries (relative names, folders ending in "/") a model folder of its kind never
    holds; [] for a model folder that is all tunebert's."""
    kind = model_kind(folder)
    if kind is None:
        return None
    return _foreign_in_model(folder) if kind == "single" else _foreign_in_ensemble(folder)


def _names(entries: list[str]) -> str:
    shown = ", ".join(entries[:_SHOWN])
    return shown + (f" and {len(entries) - _SHOWN} more" if len(entries) > _SHOWN else "")


def check_replaceable(target: Path, option: str = "--output-dir") -> None:
    """Refuse (``ConfigError``) a ``target`` tunebert may not replace: anything but a missing
    folder, an empty one, or a tunebert model folder holding nothing tunebert did not write."""
    target = Path(target)
    if not target.exists() and not target.is_symlink():
        return
    if target.is_symlink() or not target.is_dir():
        raise ConfigError(f"{option} {str(target)!r} exists and is not a folder; tunebert writes "
                          f"a model folder there: pass a new or empty folder")
    entries = sorted(e.name + ("/" if e.is_dir() else "") for e in target.iterdir())
    if not entries:
        return
    foreign = foreign_entries(target)
    if foreign is None:
        raise ConfigError(
            f"{option} {str(target)!r} holds something other than a model tunebert wrote (no "
            f"{MODEL_FILE} or {ENSEMBLE_FILE} of tunebert's format, but {_names(entries)}); "
            f"tunebert replaces only its own model folders and deletes nothing else: pass a new "
            f"or empty folder")
    if foreign:
        raise ConfigError(
            f"{option} {str(target)!r} holds a tunebert model but also {_names(foreign)}, which "
            f"tunebert did not write; it replaces a model folder only when it holds nothing "
            f"else: move those away, or pass a new or empty folder")


# --------------------------------------------------------------------------- the swap


def _sibling(target: Path, kind: str, pid: Optional[int] = None) -> Path:
    return target.parent / f".{target.name}.tunebert-{kind}-{os.getpid() if pid is None else pid}"


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return False  # this process is not swapping this target now: it is about to
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    except OSError:
        return False
    return True


def _only_written_files(folder: Path) -> bool:
    """A leftover of a swap: its files are all ``save_model``'s (a half-written one has no
    manifest yet), or it is an ensemble folder tunebert wrote."""
    if not folder.is_dir() or folder.is_symlink():
        return False
    foreign = foreign_entries(folder)
    if foreign is not None:
        return not foreign
    return all(e.is_file() and not e.is_symlink() and written_by_save_model(e.name)
               for e in folder.iterdir())


def _leftovers(target: Path) -> list[tuple[str, int, Path]]:
    """(kind, pid, folder) of the swap leftovers beside ``target`` whose process is gone."""
    if not target.parent.is_dir():
        return []
    found = []
    for entry in target.parent.iterdir():
        match = _LEFTOVER.fullmatch(entry.name)
        if match and match["name"] == target.name and not _alive(int(match["pid"])):
            found.append((match["kind"], int(match["pid"]), entry))
    return sorted(found, key=lambda item: item[2].stat().st_mtime, reverse=True)


def recover(target: Path) -> None:
    """Finish what a swap at ``target`` that was killed left behind: with ``target`` missing and
    the old model moved aside, put the complete new model in place (or, without one, the old one
    back); then remove the swap's leftovers that hold only what ``save_model`` writes."""
    target = Path(target)
    leftovers = _leftovers(target)
    if not target.exists():
        for kind, pid, old in leftovers:
            if kind != "old":
                continue
            new = _sibling(target, "new", pid)
            if new.is_dir() and foreign_entries(new) == []:
                _rename(new, target)
                log.warning(f"{target}: a swap was stopped between its two renames; its new "
                            f"model is now in place")
            else:
                _rename(old, target)
                log.warning(f"{target}: a swap was stopped between its two renames; the earlier "
                            f"model is back in place")
            break
    for _, _, folder in leftovers:
        if folder.exists() and _only_written_files(folder):
            shutil.rmtree(folder, ignore_errors=True)


def recover_all(folder: Path) -> None:
    """``recover`` every target in ``folder`` that a killed swap left leftovers beside."""
    folder = Path(folder)
    names = {m["name"] for m in map(_LEFTOVER.fullmatch, os.listdir(folder)) if m} \
        if folder.is_dir() else set()
    for name in sorted(names):
        recover(folder / name)


def install(new: Path, target: Path, option: str = "--output-dir") -> None:
    """Swap the complete model folder ``new`` (a sibling of ``target``) in at ``target``,
    checking ``target`` again first (it may have changed while the new model was trained)."""
    check_replaceable(target, option)
    if not target.exists():
        _rename(new, target)
        return
    old = _sibling(target, "old")
    _rename(target, old)
    try:
        _rename(new, target)  # between the renames there is no model at target: see recover
    except BaseException:
        _rename(old, target)
        raise
    shutil.rmtree(old, ignore_errors=True)  # a partial removal is cleaned by the next recover


@contextmanager
def replacing(target: Path, option: str = "--output-dir") -> Iterator[Path]:
    """Write a model to replace ``target``: yields the sibling folder (not yet created) to write
    it into, and swaps it in when the block ends; when the block raises, ``target`` is left as
    it was and the sibling removed."""
    target = Path(target).expanduser()
    target.parent.mkdir(parents=True, exist_ok=True)
    new = _sibling(target, "new")
    if new.exists():  # this process id's, from a killed process before it: tunebert's own
        if not _only_written_files(new):
            raise ConfigError(f"{new} exists and is not tunebert's: move it away")
        shutil.rmtree(new)
    try:
        yield new
        install(new, target, option)
    except BaseException:
        shutil.rmtree(new, ignore_errors=True)
        raise


def check_output_target(target: Path, option: str = "--output-dir") -> None:
    """Before anything trains: finish an earlier killed swap at ``target``, then refuse it if
    tunebert may not replace it."""
    target = Path(target).expanduser()
    recover(target)
    check_replaceable(target, option)


def remove_own_model(target: Path) -> bool:
    """Remove ``target`` when it is a model folder holding only what tunebert wrote; say whether
    it was removed (anything else is left alone)."""
    target = Path(target)
    if target.is_dir() and not target.is_symlink() and foreign_entries(target) == []:
        shutil.rmtree(target)
        return True
    return False


# --------------------------------------------------------------------------- one owner per folder


@dataclass(frozen=True)
class Owner:
    """The pipeline an output folder belongs to: its sweep name and the file holding its state
    (absolute); the pipeline exists as long as that file does."""

    pipeline: str
    state_file: str

    def exists(self) -> bool:
        return Path(self.state_file).is_file()

    @property
    def sweep_dir(self) -> Path:
        return Path(self.state_file).parent


def read_owner(folder: Path) -> Optional[Owner]:
    meta = _json(Path(folder) / OWNER_FILE)
    if meta is None or not all(isinstance(meta.get(k), str) for k in ("pipeline", "state_file")):
        return None
    return Owner(meta["pipeline"], meta["state_file"])


def _refusal(folder: Path, other: Owner, option: str) -> ConfigError:
    return ConfigError(
        f"{option} {str(folder)!r} belongs to the pipeline {other.pipeline!r} (its state: "
        f"{other.state_file}; see {OWNER_FILE} there), and two pipelines cannot share one output "
        f"folder: pass another {option}")


def check_owner(folder: Path, sweep_dir: Path, option: str = "--output-dir") -> None:
    """Refuse ``folder`` when a pipeline other than the one of ``sweep_dir`` (``<storage>/ray/
    <name>``, absolute) owns it and still exists."""
    other = read_owner(folder)
    if other is not None and other.sweep_dir != Path(sweep_dir) and other.exists():
        raise _refusal(Path(folder), other, option)


def claim(folder: Path, owner: Owner, option: str = "--output-dir") -> None:
    """Make ``owner`` the owner of ``folder`` (created if missing), unless another pipeline that
    still exists owns it (``ConfigError``). A claim whose pipeline is gone, or that cannot be
    read, is taken over. The claim file appears at once and whole (a hard link of a written
    file), so of two pipelines claiming one folder at the same moment, one is refused."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / OWNER_FILE
    for _ in range(3):
        other = read_owner(folder)
        if other == owner:
            return
        if other is not None and other.exists():
            raise _refusal(folder, other, option)
        if path.exists() or path.is_symlink():
            path.unlink(missing_ok=True)  # its pipeline is gone, or it is torn
        written = folder / f".{OWNER_FILE}.{os.getpid()}"
        written.write_text(json.dumps(asdict(owner), indent=2) + "\n")
        try:
            os.link(written, path)
            return
        except FileExistsError:
            continue  # another pipeline claimed it just now: read whose it is
        finally:
            written.unlink(missing_ok=True)
    raise ConfigError(f"{option} {str(folder)!r}: could not claim it (another pipeline keeps "
                      f"claiming it); pass another {option}")
