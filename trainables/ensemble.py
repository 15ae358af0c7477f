"""An ensemble of classifiers that averages their class probabilities, and its folder format.

The combined prediction is the (weighted) mean of the members' softmax probabilities, not of their
logits: probability averaging is the usual deep-ensemble rule (Lakshminarayanan et al. 2017,
"Simple and Scalable Predictive Uncertainty Estimation using Deep Ensembles", eq. 2).
``forward`` returns the log of the averaged probabilities, so code written for logits keeps
working: argmax is the ensemble's prediction, softmax gives back the averaged probabilities, and
cross-entropy on it is the negative log-likelihood of the averaged distribution.

On disk an ensemble is ONE model folder::

    folder/
      ensemble.json      {"kind": "ensemble", "combine": "mean_probability",
                          "members": ["member-0", ...], "weights": [0.5, ...]}
      member-0/          a plain checkpoint folder (state.pt, config.json, label_map.json)
      member-1/
      ...

Nothing here rebuilds a member from its checkpoint: ``tuning.results.selection.load_model_folder`` reads
the manifest with ``read_ensemble``, rebuilds each member and wraps them in a
``ProbabilityEnsemble``.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Optional, Sequence

import torch
from torch import nn

from trainables.errors import ModelLoadError
from trainables.model_files import ENSEMBLE_FILE, ENSEMBLE_KIND as KIND

COMBINE = "mean_probability"


def _normalised(weights: Optional[Sequence[float]], n: int) -> list[float]:
    if n < 1:
        raise ValueError("an ensemble needs at least one member, but got none")
    if weights is None:
        return [1.0 / n] * n
    weights = [float(w) for w in weights]
    if len(weights) != n:
        raise ValueError(f"an ensemble needs one weight per member, but got {len(weights)} "
                         f"weight(s) for {n} member(s)")
    if not all(math.isfinite(w) and w > 0 for w in weights):
        raise ValueError(f"ensemble weights must be finite and > 0, but got {weights}")
    total = sum(weights)
    return [w / total for w in weights]


class ProbabilityEnsemble(nn.Module):
    """Members (each ``(input_ids, attention_mask) -> logits``) combined by averaging their
    softmax probabilities with ``weights`` (default: equal; normalised to sum to 1)."""

    def __init__(self, members: Sequence[nn.Module], weights: Optional[Sequence[float]] = None):
        super().__init__()
        self.weights = _normalised(weights, len(members))
        self.members = nn.ModuleList(members)
        self.register_buffer("log_weights", torch.log(torch.tensor(self.weights)),
                             persistent=False)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """(batch, seq) → (batch, num_labels) log of the weighted mean of member probabilities:
        log sum_m w_m softmax(z_m), computed as a logsumexp of w-shifted log-softmaxes (stable)."""
        log_probs = torch.stack([_log_softmax_fp32(member(input_ids, attention_mask))
                                 for member in self.members])  # (members, batch, labels)
        shifted = log_probs + self.log_weights.to(log_probs.device)[:, None, None]
        return torch.logsumexp(shifted, dim=0)


def _log_softmax_fp32(logits: torch.Tensor) -> torch.Tensor:
    """Log-softmax over labels in fp32 (autocast may hand back bf16/fp16 logits)."""
    return torch.log_softmax(logits.float(), dim=-1)


# --------------------------------------------------------------------------- the folder


def is_ensemble_folder(folder: str | Path) -> bool:
    return (Path(folder) / ENSEMBLE_FILE).is_file()


def save_ensemble(folder: str | Path, member_dirs: Sequence[str | Path],
                  weights: Optional[Sequence[float]] = None) -> Path:
    """Write an ensemble folder: each member checkpoint folder copied to ``member-<i>/``, and the
    manifest. ``folder`` must not exist yet or be empty."""
    folder = Path(folder)
    weights = _normalised(weights, len(member_dirs))
    if folder.exists() and any(folder.iterdir()):
        raise FileExistsError(f"cannot write an ensemble into {folder}: the folder is not empty")
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for i, source in enumerate(member_dirs):
        name = f"member-{i}"
        shutil.copytree(source, folder / name)
        names.append(name)
    manifest = {"kind": KIND, "combine": COMBINE, "members": names, "weights": weights}
    (folder / ENSEMBLE_FILE).write_text(json.dumps(manifest, indent=2) + "\n")
    return folder


def read_ensemble(folder: str | Path) -> tuple[list[Path], list[float]]:
    """(member folders, normalised weights) from an ensemble folder's manifest."""
    folder = Path(folder)
    path = folder / ENSEMBLE_FILE
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelLoadError(f"cannot read the ensemble manifest {path} ({exc}); it should be "
                             f"UTF-8 JSON as `tunebert select --ensemble` writes it: copy the "
                             f"folder again, or select again") from None
    if not isinstance(manifest, dict) or manifest.get("kind") != KIND \
            or manifest.get("combine") != COMBINE:
        raise ModelLoadError(f"{path} is not an ensemble manifest: it needs \"kind\": \"{KIND}\" "
                             f"and \"combine\": \"{COMBINE}\", but holds {manifest!r}")
    members = manifest.get("members")
    if not isinstance(members, list) or not members or not all(
            isinstance(m, str) and m and not Path(m).is_absolute() and ".." not in Path(m).parts
            for m in members):
        raise ModelLoadError(f"{path}: \"members\" must be a non-empty list of sub-folder names, "
                             f"but got {members!r}")
    missing = [m for m in members if not (folder / m).is_dir()]
    if missing:
        raise ModelLoadError(f"{path} names member folder(s) {missing} that are not in {folder}")
    weights = manifest.get("weights")
    if weights is not None and not (isinstance(weights, list) and all(
            isinstance(w, (int, float)) and not isinstance(w, bool) for w in weights)):
        raise ModelLoadError(f"{path}: \"weights\" must be a list of numbers, one per member "
                             f"({len(members)}), e.g. {[round(1 / len(members), 4)] * len(members)}, "
                             f"but got {weights!r}; fix it, or remove it for equal weights")
    try:
        weights = _normalised(weights, len(members))
    except ValueError as exc:
        raise ModelLoadError(f"{path}: {exc}") from None
    return [folder / m for m in members], weights

