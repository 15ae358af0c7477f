"""Whether a sweep's saved Ray Tune state may be unpickled: the trust boundary of ``--storage``.

``tunebert resume`` restores a sweep with ``ray.tune.Tuner.restore``, which unpickles the files Ray
saved in the sweep's folder (``tuner.pkl``, the searcher's ``*.pkl`` and the experiment state,
whose trials are cloudpickled inside its JSON). Unpickling runs whatever code a file names, so
anyone who can write those files, or replace the folders that hold them, can run code as the user
who resumes. Before a resume, every such file and folder must be writable by its owner only (or
also by the owner's private group), and that owner must be the current user (or root, who can
write anything anyway).

The folders above the sweep's folder (``--storage`` and its ``ray/``) may be shared the way
``/tmp`` is, writable by all with the sticky bit: others may add entries there but not rename or
replace ours. The sweep's own folder may not: Ray restores from the newest
``experiment_state-*.json`` it finds there, so whoever can add a file there chooses what is
unpickled.

On Windows, ``os.stat`` reports no owner and fixed mode bits (access is governed by ACLs), so the
check is skipped there.
"""

from __future__ import annotations

import os
import shlex
import stat
from pathlib import Path

from trainables.errors import ConfigError

# the files of a sweep's folder that Ray unpickles when it restores the sweep: tuner.pkl, the
# searcher's searcher-state-*.pkl, and the experiment state (trials cloudpickled inside its JSON)
PICKLED_STATE = ("*.pkl", "experiment_state-*.json")


def unsafe_reason(path: Path, *, shared_like_tmp_ok: bool = False) -> str | None:
    """Why other users could change what ``path`` holds (it is writable by its group or by
    others, or owned by another user), or None when only its owner (you or root) can."""
    info = os.stat(path)
    if info.st_uid not in (os.getuid(), 0):
        return f"it is owned by uid {info.st_uid}, not by you (uid {os.getuid()})"
    writers = stat.S_IWOTH | (0 if _private_group(info.st_gid) else stat.S_IWGRP)
    sticky = stat.S_ISDIR(info.st_mode) and info.st_mode & stat.S_ISVTX
    if info.st_mode & writers and not (shared_like_tmp_ok and sticky):
        return f"other users can write to it (mode {stat.filemode(info.st_mode)})"
    return None


def _private_group(gid: int) -> bool:
    """Whether group ``gid`` is the current user's private group (named after the user, the user's
    primary group, no other member): where the umask is 002 every file is group-writable, and
    that lets no one else write (Debian's OpenSSH accepts such files for the same reason)."""
    import grp
    import pwd

    try:
        user, group = pwd.getpwuid(os.getuid()), grp.getgrgid(gid)
    except KeyError:  # a uid or gid with no name: not known to be private
        return False
    return (gid == user.pw_gid and group.gr_name == user.pw_name
            and set(group.gr_mem) <= {user.pw_name})


def _checked_paths(storage_root: Path, sweep_dir: Path) -> list[tuple[Path, bool]]:
    """(path, may it be sticky and world-writable): the folders from ``storage_root`` down to
    ``sweep_dir``, then the sweep folder's pickled state files."""
    folders = [sweep_dir, *[p for p in sweep_dir.parents if p == storage_root
                            or storage_root in p.parents]]
    paths = [(folder, folder != sweep_dir) for folder in reversed(folders)]
    files = sorted({f for pattern in PICKLED_STATE for f in sweep_dir.glob(pattern) if f.is_file()})
    return paths + [(f, False) for f in files]


def check_safe_to_unpickle(storage_root: Path, sweep_dir: Path, name: str) -> None:
    """Refuse (``ConfigError``) to resume sweep ``name`` from ``sweep_dir`` under the storage
    folder ``storage_root`` when another user could have written the state Ray would unpickle."""
    if os.name == "nt":
        return
    storage_root, sweep_dir = Path(storage_root).resolve(), Path(sweep_dir).resolve()
    unsafe = [(path, reason) for path, shared_ok in _checked_paths(storage_root, sweep_dir)
              if (reason := unsafe_reason(path, shared_like_tmp_ok=shared_ok))]
    if not unsafe:
        return
    path, reason = unsafe[0]
    others = f" ({len(unsafe) - 1} more path(s) likewise)" if len(unsafe) > 1 else ""
    writable = [p for p, r in unsafe if r.startswith("other users")]
    if len(writable) == len(unsafe):
        fix = "chmod go-w " + " ".join(shlex.quote(str(p)) for p in writable)
    else:
        fix = (f"resume as the owner of {path}, or have it given to you "
               f"(sudo chown -R $USER {shlex.quote(str(storage_root))})"
               + (", then chmod go-w the rest" if writable else ""))
    raise ConfigError(
        f"refusing to resume sweep {name!r}: {path} is not yours alone: {reason}{others}. "
        f"Resuming unpickles Ray Tune's saved state from {sweep_dir}, and unpickling runs any code "
        f"a writer put there. If you trust everyone who can write to it, make it yours alone and "
        f"resume again: {fix}")
