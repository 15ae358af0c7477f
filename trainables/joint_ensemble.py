"""An ensemble of multi-task models (``trainables.joint_model.MultitaskModel``): each head's
prediction is the weighted mean of the members' softmax probabilities, and its folder format.

The rule is ``trainables.ensemble.ProbabilityEnsemble``'s, applied per head: the sentence head
averages the members' intent probabilities, the token head averages, piece by piece, their tag
probabilities (Lakshminarayanan et al. 2017, eq. 2). ``forward`` returns the log of the averaged
probabilities of each head, ``(sentence or None, tokens or None)`` as a ``MultitaskModel`` does, so
everything written for one (``trainables.joint.evaluate_multitask``, ``MultitaskPredictor``)
reads an ensemble too: argmax is the ensemble's choice, softmax gives back the mean
probabilities, cross-entropy on it is the negative log-likelihood of the averaged distribution.

On disk it is an ensemble folder (``trainables.ensemble.save_ensemble``: ``ensemble.json`` and
``member-<i>/``) whose members are multi-task model folders (``trainables.joint_export``), plus
its own README.md. ``trainables.export.load_model`` reads it as a ``LoadedModel`` of kind
"multitask" (what its model returns and what its label map holds are a multi-task model's, so
``tunebert predict``, ``evaluate`` and the MLflow model treat it as one) whose model is a
``MultitaskEnsemble``. Members must share the intent names, the tag names and the tokenizer.
Nothing here imports Ray, MLflow or ``tuning``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import torch
from torch import nn

from trainables.ensemble import _normalised as normalised_weights  # the same weight rule
from trainables.ensemble import read_ensemble, save_ensemble
from trainables.errors import ModelLoadError
from trainables.joint_export import is_multitask_folder
from trainables.model_files import CARD_FILE, LABEL_MAP_FILE, MODEL_FILE, MULTITASK_KIND
from trainables.model_folder import LoadedModel, read_json

# what members must agree on besides their label maps: one tokenizer encodes for all of them
SHARED_CONFIG_KEYS = ("model", "max_length")


def mean_log_probabilities(logits: Sequence[torch.Tensor], log_weights: torch.Tensor) -> torch.Tensor:
    """``log sum_m w_m softmax(z_m)`` over the last dimension, for member logits ``z_m`` of one
    shape ((batch, labels) or (batch, seq, tags)), as a logsumexp of w-shifted log-softmaxes
    (stable; fp32 whatever autocast handed back)."""
    log_probs = torch.stack([torch.log_softmax(z.float(), dim=-1) for z in logits])
    shape = (-1,) + (1,) * (log_probs.dim() - 1)  # (members, 1, ...): one weight per member
    return torch.logsumexp(log_probs + log_weights.to(log_probs.device).view(shape), dim=0)


class MultitaskEnsemble(nn.Module):
    """Multi-task members (each ``(input_ids, attention_mask) -> (sentence logits or None, token
    logits or None)``) combined head by head with ``weights`` (default: equal; normalised)."""

    def __init__(self, members: Sequence[nn.Module], weights: Optional[Sequence[float]] = None):
        super().__init__()
        self.weights = normalised_weights(weights, len(members))
        self.members = nn.ModuleList(members)
        self.register_buffer("log_weights", torch.log(torch.tensor(self.weights)),
                             persistent=False)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor
                ) -> tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
        """(batch, seq) → ((batch, labels) log mean intent probabilities, (batch, seq, tags) log
        mean tag probabilities per piece); each None when the members have no such head."""
        outputs = [member(input_ids, attention_mask) for member in self.members]
        return tuple(self._head(i, [out[i] for out in outputs]) for i in (0, 1))

    def _head(self, index: int, logits: list[Optional[torch.Tensor]]) -> Optional[torch.Tensor]:
        present = [z is not None for z in logits]
        if not any(present):
            return None
        if not all(present):
            which = ("sentence", "token")[index]
            raise ValueError(f"ensemble members disagree: members {present.index(True)} and "
                             f"{present.index(False)} differ in having a {which} head; members must "
                             f"predict the same tasks")
        return mean_log_probabilities(logits, self.log_weights)


# --------------------------------------------------------------------------- the folder


def save_multitask_ensemble(folder: str | Path, member_dirs: Sequence[str | Path],
                            weights: Optional[Sequence[float]] = None) -> Path:
    """An ensemble folder of multi-task model folders (``save_multitask_model``), with its model
    card. ``folder`` must not exist yet or be empty."""
    not_multitask = [str(m) for m in member_dirs if not is_multitask_folder(m)]
    if not_multitask:
        raise ModelLoadError(f"multi-task ensemble members must be multi-task model folders "
                             f"(format tunebert-multitask in {MODEL_FILE}), but {not_multitask} "
                             f"are not")
    folder = save_ensemble(folder, member_dirs, weights)
    members, weights = read_ensemble(folder)
    metas = [read_json(m / MODEL_FILE) for m in members]
    label_map = read_json(members[0] / LABEL_MAP_FILE)
    (folder / CARD_FILE).write_text(_card(metas, [m.name for m in members], weights, label_map))
    return folder


def _card(metas: list[dict], members: list[str], weights: list[float], label_map: dict) -> str:
    intents, tags = label_map.get("names") or [], label_map.get("tag_names") or []
    types = sorted({t[2:] for t in tags if t != "O"})
    lines = ["---", "library_name: tunebert", "pipeline_tag: token-classification", "---", "",
             f"# Ensemble of {len(members)} multi-task models ({len(intents)} intents, "
             f"{len(types)} slot types)", "",
             "Its intent probabilities are the weighted mean of the members'; its slot tags are "
             "read from the weighted mean of their tag probabilities, word piece by word piece.",
             ""]
    if intents:
        lines += [f"Intents: {', '.join(f'`{n}`' for n in intents)}.", ""]
    if types:
        lines += [f"Slot types: {', '.join(f'`{t}`' for t in types)}.", ""]
    lines += ["| member | weight | base encoder | pooling | intent head | slot head |",
              "|---|---|---|---|---|---|"]
    lines += [f"| `{m}/` | {w:.4f} | `{meta.get('base_model')}` | {meta.get('pooling')} | "
              f"{meta.get('head')} | {meta.get('slot_head')} |"
              for m, w, meta in zip(members, weights, metas)]
    lines += ["", "Each member folder is a multi-task model folder of its own (see its README.md);",
              "`ensemble.json` lists the members and their weights.", "",
              "## How to load", "",
              "With tunebert installed (no sweep, Ray or MLflow needed; works offline):", "",
              "```python", "from tuning.serve.predict import load_model", "",
              "model = load_model(\"path/to/this/folder\")",
              "model.predict([\"wake me up at seven\"])  # intent, probability, slots per text",
              "```", "",
              "or `tunebert predict path/to/this/folder \"wake me up at seven\"`.", ""]
    return "\n".join(lines)


def multitask_ensemble(folder: Path, member_dirs: Sequence[Path], members: Sequence[LoadedModel],
                       weights: Sequence[float]) -> LoadedModel:
    """The loaded members of ensemble ``folder`` as one ``LoadedModel`` of kind "multitask",
    refused (``ModelLoadError``) unless every member is a multi-task model with the first's
    intents, tags and tokenizer."""
    first = members[0]
    for directory, other in zip(member_dirs, members):
        if other.kind != MULTITASK_KIND:
            raise ModelLoadError(f"ensemble {folder} mixes multi-task models and text classifiers "
                                 f"({directory.name} is a {other.kind!r} model); its members must "
                                 f"all be multi-task models, or all text classifiers")
        for key in ("names", "tag_names"):
            if other.label_map.get(key) != first.label_map.get(key):
                what = "intents" if key == "names" else "tags"
                raise ModelLoadError(
                    f"ensemble {folder}: member {directory.name} predicts other {what} than "
                    f"{member_dirs[0].name} ({other.label_map.get(key)} vs "
                    f"{first.label_map.get(key)}); members must share the {what}")
        for key in SHARED_CONFIG_KEYS:
            if other.config.get(key) != first.config.get(key):
                raise ModelLoadError(
                    f"ensemble {folder}: members must share one tokenizer, but `{key}` is "
                    f"{first.config.get(key)!r} in {member_dirs[0].name} and "
                    f"{other.config.get(key)!r} in {directory.name}")
    ensemble = MultitaskEnsemble([m.model for m in members], weights).eval()
    return LoadedModel(ensemble, first.config, first.label_map, first.tokenizer, MULTITASK_KIND,
                       folder)
