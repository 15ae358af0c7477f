"""The probability-averaging ensemble against hand-computed numbers, and its folder format."""

import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from trainables.ensemble import (ENSEMBLE_FILE, ProbabilityEnsemble, is_ensemble_folder,
                                 read_ensemble, save_ensemble)
from trainables.errors import ModelLoadError


class FixedLogits(nn.Module):
    """Answers every text with the same logits, in ``dtype``."""

    def __init__(self, logits, dtype=torch.float32):
        super().__init__()
        self.logits = torch.tensor(logits, dtype=dtype)

    def forward(self, input_ids, attention_mask):
        return self.logits.expand(input_ids.shape[0], -1)


IDS, MASK = torch.zeros(3, 5, dtype=torch.long), torch.ones(3, 5, dtype=torch.long)
# softmax([0, ln 3]) = [1/4, 3/4]; softmax([0, 0]) = [1/2, 1/2]
A, B = FixedLogits([0.0, math.log(3.0)]), FixedLogits([0.0, 0.0])


def test_two_members_average_their_probabilities_not_their_logits():
    out = ProbabilityEnsemble([A, B])(IDS, MASK)
    assert out.shape == (3, 2) and out.dtype == torch.float32
    # (1/4 + 1/2) / 2 = 3/8, (3/4 + 1/2) / 2 = 5/8; averaging logits would give softmax([0, ln3/2])
    assert torch.allclose(out.exp(), torch.tensor([[0.375, 0.625]] * 3), atol=1e-7)
    assert torch.allclose(torch.softmax(out, -1), torch.tensor([[0.375, 0.625]] * 3), atol=1e-7)
    assert out.argmax(-1).tolist() == [1, 1, 1]


def test_weights_are_normalised_and_weigh_the_probabilities():
    ensemble = ProbabilityEnsemble([A, B], weights=[3, 1])
    assert ensemble.weights == [0.75, 0.25]
    # 3/4 * [1/4, 3/4] + 1/4 * [1/2, 1/2] = [5/16, 11/16]
    assert torch.allclose(ensemble(IDS, MASK).exp()[0], torch.tensor([0.3125, 0.6875]), atol=1e-7)


def test_cross_entropy_on_the_output_is_the_nll_of_the_averaged_probabilities():
    out = ProbabilityEnsemble([A, B])(IDS, MASK)
    loss = F.cross_entropy(out, torch.tensor([0, 1, 1]), reduction="sum")
    assert loss.item() == pytest.approx(-math.log(0.375) - 2 * math.log(0.625), abs=1e-6)


def test_one_member_is_that_member_and_half_precision_logits_come_back_fp32():
    alone = ProbabilityEnsemble([A])(IDS, MASK)
    assert torch.allclose(alone, torch.log_softmax(A.logits, -1).expand(3, -1), atol=1e-7)
    mixed = ProbabilityEnsemble([FixedLogits([0.0, math.log(3.0)], torch.bfloat16), B])(IDS, MASK)
    assert mixed.dtype == torch.float32
    assert torch.allclose(mixed.exp()[0], torch.tensor([0.375, 0.625]), atol=1e-2)  # bf16 input


@pytest.mark.parametrize("members, weights, message", [
    ([], None, "at least one member"),
    ([A, B], [1.0], "one weight per member, but got 1 weight(s) for 2 member(s)"),
    ([A, B], [1.0, 0.0], "finite and > 0, but got [1.0, 0.0]"),
    ([A, B], [1.0, float("nan")], "finite and > 0"),
])
def test_bad_ensembles_are_refused(members, weights, message):
    with pytest.raises(ValueError) as info:
        ProbabilityEnsemble(members, weights)
    assert message in str(info.value)


# --------------------------------------------------------------------------- the folder


def _member(folder, name):
    folder.mkdir(parents=True)
    for file in ("state.pt", "config.json", "label_map.json"):
        (folder / file).write_text(f"{name}:{file}")
    return folder


def test_an_ensemble_folder_holds_its_members_and_a_manifest(tmp_path):
    members = [_member(tmp_path / "seed-1", "a"), _member(tmp_path / "seed-2", "b")]
    folder = save_ensemble(tmp_path / "model", members, weights=[1, 3])
    assert is_ensemble_folder(folder) and not is_ensemble_folder(members[0])
    assert sorted(p.name for p in folder.iterdir()) == [ENSEMBLE_FILE, "member-0", "member-1"]
    assert (folder / "member-1" / "state.pt").read_text() == "b:state.pt"  # copies, in order
    assert json.loads((folder / ENSEMBLE_FILE).read_text()) == {
        "kind": "ensemble", "combine": "mean_probability", "members": ["member-0", "member-1"],
        "weights": [0.25, 0.75]}
    assert read_ensemble(folder) == ([folder / "member-0", folder / "member-1"], [0.25, 0.75])
    with pytest.raises(FileExistsError, match="not empty"):
        save_ensemble(folder, members)


@pytest.mark.parametrize("manifest, message", [
    ("not json", "cannot read the ensemble manifest"),
    ({"kind": "single"}, "is not an ensemble manifest"),
    ({"kind": "ensemble", "combine": "mean_probability", "members": []}, "non-empty list"),
    ({"kind": "ensemble", "combine": "mean_probability", "members": ["../x"]}, "non-empty list"),
    ({"kind": "ensemble", "combine": "mean_probability", "members": ["member-9"]},
     "names member folder(s) ['member-9']"),
    ({"kind": "ensemble", "combine": "mean_probability", "members": ["member-0"],
      "weights": [-1]}, "finite and > 0"),
    ({"kind": "ensemble", "combine": "mean_probability", "members": ["member-0"],
      "weights": 0.5}, '"weights" must be a list of numbers, one per member (1), e.g. [1.0], '
                       'but got 0.5'),
    ({"kind": "ensemble", "combine": "mean_probability", "members": ["member-0"],
      "weights": ["1"]}, '"weights" must be a list of numbers'),
    (b'{"kind": "ensemble", "note": "caf\xe9"}', "it should be UTF-8 JSON"),  # Latin-1, not UTF-8
])
def test_a_broken_manifest_is_a_clear_model_load_error(tmp_path, manifest, message):
    _member(tmp_path / "member-0", "a")
    path = tmp_path / ENSEMBLE_FILE
    if isinstance(manifest, bytes):
        path.write_bytes(manifest)
    else:
        path.write_text(manifest if isinstance(manifest, str) else json.dumps(manifest))
    with pytest.raises(ModelLoadError) as info:
        read_ensemble(tmp_path)
    assert message in str(info.value)
