"""Knowledge distillation (issue 25): a fine-tuning trial trained as the student of a teacher model
folder, e.g. an ensemble, into one model of the student's size.

With ``distill_teacher`` set the student trains on

    distill_alpha * T^2 * KL(soften(teacher, T) || softmax(student / T)) + (1 - distill_alpha) * CE

(``trainables.losses.distillation_loss``, Hinton et al. 2015) at ``T = distill_temperature``. The
student is a normal fine-tuning trial in every other way, and what it hands over is a normal model
folder: loading it needs no teacher.

The teacher's probabilities do not change while a student trains, so they are computed once per
(teacher, train split) and cached in the teacher's folder, ``teacher_probs/<key>.npy``: the next
student of that teacher (another temperature, weight or seed) reads them instead of running the
teacher. ``key`` hashes the split's token ids and labels, the student's label names (the columns'
order) and the names, sizes and modification times of the teacher's files (a teacher retrained in
place is run again).

The teacher reads the student's token ids, so the two must share one tokenizer: the teacher
folder's vocabulary is compared with the student's and a different one refused. The selection
distils a config's own ensembles, whose tokenizer is the student's.

``fit`` is the fine-tuning family's registered ``fit`` (``trainables.registry``): it computes or
loads the probabilities once, before the first epoch, and hands them to
``trainables.finetune.fit``; the batches and the loss are ``trainables.finetune_losses``'s.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
import uuid
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch

from trainables import finetune
from trainables.encoding import EncodedSplit, collate, epoch_batches
from trainables.errors import ConfigError, DataError, UserError
from trainables.export import load_model
from trainables.finetune_losses import TeacherTargets
from trainables.model_files import MULTITASK_KIND
from trainables.models import load_tokenizer

log = logging.getLogger(__name__)

CACHE_DIR = "teacher_probs"
CACHE_VERSION = 1  # part of the key: a change in how probabilities are computed invalidates them


def fit(cfg, data, *, device: torch.device, report: Callable, resume_dir: Optional[str] = None,
        progress: Optional[Callable[[int], None]] = None):
    """``trainables.finetune.fit``; with ``cfg.distill_teacher`` given the teacher's probabilities
    of the train split (``train_targets``), computed or loaded once before the first epoch. A
    data-parallel worker runs this too: each one holds the whole split's probabilities and takes
    the rows of its examples."""
    teacher = train_targets(cfg, data, device) if getattr(cfg, "distill_teacher", None) else None
    return finetune.fit(cfg, data, device=device, report=report, resume_dir=resume_dir,
                        progress=progress, teacher=teacher)


def train_targets(cfg, data, device: torch.device) -> TeacherTargets:
    """The teacher's probabilities of ``data``'s train split and the seconds they took."""
    start = time.perf_counter()
    probs = teacher_probabilities(
        cfg.distill_teacher, data.splits["train"], pad_token_id=data.pad_token_id,
        label_names=data.label_map.to_dict()["names"], device=device,
        batch_size=max(64, cfg.batch_size), tokenizer=load_tokenizer(data.model))
    return TeacherTargets(probs, time.perf_counter() - start)


def teacher_probabilities(teacher_dir: str | Path, split: EncodedSplit, *, pad_token_id: int,
                          label_names: Sequence[str], device: torch.device, batch_size: int = 64,
                          tokenizer=None) -> np.ndarray:
    """The teacher's softmax probabilities of every example of ``split``: (examples, labels)
    float32, rows in the split's order, columns in ``label_names``' order (the teacher's columns
    reordered when only the order differs; another set of labels is refused). ``teacher_dir``: a
    model folder or an ensemble folder (``trainables.export.load_model``). ``tokenizer``: the
    student's, checked against the teacher's (None: not checked).

    Read from ``teacher_dir/teacher_probs/<key>.npy`` when an earlier call wrote them; otherwise
    computed (fp32, dropout off) and written there atomically. A folder that cannot be written
    (read-only) is logged and the probabilities computed again next time."""
    folder = Path(teacher_dir).expanduser()
    if not folder.is_dir():
        raise ConfigError(f"`distill_teacher` {str(folder)!r} does not exist or is not a folder; "
                          f"pass a model folder or an ensemble folder (`tunebert train --output-dir`, "
                          f"`tunebert select --output-dir`), or leave `distill_teacher` unset (null)")
    start = time.perf_counter()
    path = folder / CACHE_DIR / f"{cache_key(folder, split, label_names)}.npy"
    probs = _read_cached(path, (len(split), len(label_names)))
    if probs is not None:
        log.info("distillation: reused the teacher's probabilities of %d examples from %s (%.2f s)",
                 len(split), path, time.perf_counter() - start)
        return probs
    teacher, columns = _load_teacher(folder, label_names, tokenizer)
    probs = _predict(teacher, split, pad_token_id, device, batch_size)[:, columns]
    _write_cached(path, probs)
    log.info("distillation: computed the teacher's probabilities of %d examples with %s (%.2f s)",
             len(split), folder, time.perf_counter() - start)
    return probs


def cache_key(teacher_dir: Path, split: EncodedSplit, label_names: Sequence[str]) -> str:
    """What the teacher's probabilities of ``split`` depend on, hashed (sha256, 24 hex digits)."""
    digest = hashlib.sha256(json.dumps({"version": CACHE_VERSION, "labels": list(label_names),
                                        "teacher": _fingerprint(teacher_dir)}).encode())
    lengths = split.lengths()
    digest.update(lengths.tobytes())
    if len(lengths):
        digest.update(np.concatenate([np.asarray(ids, dtype=np.int32) for ids in split.input_ids]).tobytes())
    digest.update(np.asarray(split.labels, dtype=np.int64).tobytes())
    return digest.hexdigest()[:24]


def _fingerprint(folder: Path) -> list:
    """The teacher folder's files (relative path, size, modification time), its cache left out."""
    found = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not (Path(root) == folder and d == CACHE_DIR))
        for name in sorted(files):
            stat = (Path(root) / name).stat()
            found.append([str((Path(root) / name).relative_to(folder)), stat.st_size, stat.st_mtime_ns])
    return found


def _load_teacher(folder: Path, label_names: Sequence[str], tokenizer) -> tuple[torch.nn.Module, list[int]]:
    """The teacher's model, and for each of ``label_names`` the teacher's column of it."""
    try:
        loaded = load_model(folder)
    except UserError as exc:
        raise type(exc)(f"`distill_teacher` {str(folder)!r} cannot be loaded: {exc}") from None
    if loaded.kind == MULTITASK_KIND:
        raise ConfigError(f"`distill_teacher` {str(folder)!r} is a multi-task model; a teacher must "
                          f"be a text classifier (a model folder or an ensemble folder of them)")
    names = list(loaded.label_map["names"])
    if sorted(names) != sorted(label_names):
        raise DataError(f"`distill_teacher` {str(folder)!r} classifies other labels than the student's "
                        f"data: only the teacher has {sorted(set(names) - set(label_names))}, only the "
                        f"data has {sorted(set(label_names) - set(names))}; distil on the data the "
                        f"teacher was trained on")
    if tokenizer is not None and loaded.tokenizer.get_vocab() != tokenizer.get_vocab():
        raise ConfigError(f"`distill_teacher` {str(folder)!r} tokenizes with another vocabulary "
                          f"({len(loaded.tokenizer.get_vocab())} pieces) than the student "
                          f"({len(tokenizer.get_vocab())} pieces); the teacher reads the student's token "
                          f"ids, so train the student on the teacher's base model "
                          f"({loaded.config.get('model')!r})")
    return loaded.model, [names.index(name) for name in label_names]


def _is_int8(model: torch.nn.Module) -> bool:
    """A teacher trained with ``quantize`` loads as dynamic int8 modules, which run on the CPU only."""
    return any(type(m).__module__.startswith("torch.ao.nn.quantized") for m in model.modules())


@torch.no_grad()
def _predict(model: torch.nn.Module, split: EncodedSplit, pad_token_id: int, device: torch.device,
             batch_size: int) -> np.ndarray:
    """softmax(model(ids, mask)) of every example, in the split's order: (examples, labels)."""
    device = torch.device("cpu") if _is_int8(model) else device
    model = model.to(device).eval()
    out = None
    for indices in epoch_batches(split, batch_size, rng=np.random.default_rng(0), shuffle=False):
        ids, mask, _ = (t.to(device) for t in collate(split, indices, pad_token_id))
        probs = torch.softmax(model(ids, mask).float(), dim=-1).cpu().numpy()
        if out is None:
            out = np.empty((len(split), probs.shape[1]), dtype=np.float32)
        out[indices] = probs
    return out


def _read_cached(path: Path, shape: tuple[int, int]) -> Optional[np.ndarray]:
    """The cached probabilities at ``path`` when they are there and sound, else None."""
    if not path.is_file():
        return None
    try:
        probs = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        log.warning("distillation: ignoring the unreadable cache %s (%s); computing again", path, exc)
        return None
    if probs.shape != shape or probs.dtype != np.float32 or not np.all(np.isfinite(probs)):
        log.warning("distillation: ignoring the cache %s (shape %s, %s; expected %s float32); "
                    "computing again", path, probs.shape, probs.dtype, shape)
        return None
    return probs


def _write_cached(path: Path, probs: np.ndarray) -> None:
    """Write ``probs`` to ``path`` atomically (a temporary file, then ``os.replace``): concurrent
    students of one teacher never read a half-written file."""
    temporary = path.with_name(f".{path.stem}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        path.parent.mkdir(exist_ok=True)
        with open(temporary, "wb") as handle:
            np.save(handle, probs, allow_pickle=False)
        os.replace(temporary, path)
    except OSError as exc:
        log.warning("distillation: cannot cache the teacher's probabilities in %s (%s); they are "
                    "computed again for the next student", path.parent, exc)
        temporary.unlink(missing_ok=True)
