"""An ensemble of multi-task models (trainables.joint_ensemble): each head's probabilities are the
weighted mean of its members', checked by hand on members whose heads answer fixed biases; the
folder saves, loads as a multi-task model without Ray or MLflow, and predicts intents and slots;
members that do not fit together are refused, saying which one and why."""

import math
from pathlib import Path

import pytest
import torch

from trainables.errors import ModelLoadError
from trainables.export import load_model, save_ensemble_model
from trainables.hparams import MultitaskConfig
from trainables.joint_ensemble import MultitaskEnsemble, mean_log_probabilities
from trainables.joint_export import save_multitask_model
from trainables.joint_model import build_multitask_model
from trainables.joint_predict import MultitaskPredictor
from trainables.labels import LabelMap
from trainables.models import load_tokenizer
from trainables.tagging import TagMap

INTENTS = LabelMap.from_labels(["play_music", "set_alarm"])
TAGS = TagMap.from_tags([["B-time", "I-time"]])  # O, B-time, I-time
LN2, LN3 = math.log(2.0), math.log(3.0)
# member A: intents softmax([0, ln 3]) = [1/4, 3/4], tags softmax([0, 0, 0]) = 1/3 each;
# member B: intents [3/4, 1/4], tags softmax([ln 2, 0, 0]) = [1/2, 1/4, 1/4]
BIASES = {"A": ([0.0, LN3], [0.0, 0.0, 0.0]), "B": ([LN3, 0.0], [LN2, 0.0, 0.0])}


def _fixed(tiny_model_dir, member: str, *, seed: int = 1, intents: bool = True, tags: bool = True):
    """(config, multi-task model whose heads answer their biases whatever the input)."""
    cfg = MultitaskConfig(model=tiny_model_dir, epochs=1, max_length=16, precision="fp32",
                          seed=seed, head="linear", slot_head="linear")
    torch.manual_seed(seed)
    model = build_multitask_model(cfg, num_labels=len(INTENTS.names) if intents else 0,
                                  num_tags=len(TAGS) if tags else 0).eval()
    with torch.no_grad():
        for head, bias in zip((model.head, model.slot_head), BIASES[member]):
            if head is not None:
                head[-1].weight.zero_()
                head[-1].bias.copy_(torch.tensor(bias))
    return cfg, model


def _inputs(tiny_model_dir):
    batch = load_tokenizer(tiny_model_dir)(["wake me up at nine am", "play jazz"], padding=True,
                                           return_tensors="pt")
    return batch["input_ids"], batch["attention_mask"]


def test_each_head_is_the_weighted_mean_of_the_members_probabilities(tiny_model_dir):
    ids, mask = _inputs(tiny_model_dir)
    members = [_fixed(tiny_model_dir, "A")[1], _fixed(tiny_model_dir, "B", seed=2)[1]]
    with torch.no_grad():
        sentence, tokens = MultitaskEnsemble(members).eval()(ids, mask)
        weighted = MultitaskEnsemble(members, weights=[3, 1]).eval()(ids, mask)
    # equal weights: intents (1/4 + 3/4) / 2 = 1/2 each; tags ((1/3 + 1/2) / 2, (1/3 + 1/4) / 2, ...)
    assert sentence.shape == (2, 2) and tokens.shape == (*ids.shape, 3)
    assert torch.allclose(sentence.exp(), torch.tensor([0.5, 0.5]).expand(2, 2), atol=1e-6)
    assert torch.allclose(tokens.exp(), torch.tensor([5 / 12, 7 / 24, 7 / 24]).expand(*ids.shape, 3),
                          atol=1e-6)
    # weights 3:1 (normalised to 0.75, 0.25): intents 0.75 * [1/4, 3/4] + 0.25 * [3/4, 1/4]
    assert torch.allclose(weighted[0].exp(), torch.tensor([0.375, 0.625]).expand(2, 2), atol=1e-6)
    assert torch.allclose(weighted[1].exp()[0, 0], torch.tensor([0.375, 5 / 16, 5 / 16]), atol=1e-6)
    # log probabilities: softmax gives them back, and they sum to one per word piece
    assert torch.allclose(torch.softmax(tokens, -1), tokens.exp(), atol=1e-6)


def test_a_head_the_members_lack_stays_none_and_members_must_agree(tiny_model_dir):
    ids, mask = _inputs(tiny_model_dir)
    taggers = [_fixed(tiny_model_dir, m, tags=True, intents=False)[1] for m in "AB"]
    with torch.no_grad():
        sentence, tokens = MultitaskEnsemble(taggers)(ids, mask)
    assert sentence is None and tokens is not None
    mixed = MultitaskEnsemble([taggers[0], _fixed(tiny_model_dir, "B")[1]])
    with pytest.raises(ValueError, match="members 1 and 0 differ in having a sentence head"):
        mixed(ids, mask)


def test_mean_log_probabilities_is_stable_for_large_logits():
    logits = [torch.tensor([[1000.0, 0.0]]), torch.tensor([[0.0, 1000.0]])]
    mean = mean_log_probabilities(logits, torch.log(torch.tensor([0.5, 0.5])))
    assert torch.allclose(mean.exp(), torch.tensor([[0.5, 0.5]]))


def _saved(tiny_model_dir, folder: Path, member: str, seed: int, **kwargs) -> Path:
    cfg, model = _fixed(tiny_model_dir, member, seed=seed, **kwargs)
    label_map = {**(INTENTS.to_dict() if kwargs.get("intents", True) else
                    {"names": [], "raw_values": []}),
                 "tag_names": list(TAGS.names) if kwargs.get("tags", True) else []}
    return save_multitask_model(folder, model, config=cfg.to_dict(), label_map=label_map,
                                tokenizer=load_tokenizer(tiny_model_dir))


def test_a_saved_ensemble_loads_as_a_multitask_model_and_predicts_the_mean(tiny_model_dir,
                                                                            tmp_path):
    members = [_saved(tiny_model_dir, tmp_path / "a", "A", 1),
               _saved(tiny_model_dir, tmp_path / "b", "B", 2)]
    folder = save_ensemble_model(tmp_path / "ensemble", members, weights=[1, 3])
    assert {p.name for p in folder.iterdir()} == {"ensemble.json", "member-0", "member-1",
                                                  "README.md"}
    assert "Ensemble of 2 multi-task models (2 intents, 1 slot types)" in \
        (folder / "README.md").read_text()

    loaded = load_model(folder)
    assert loaded.kind == "multitask" and isinstance(loaded.model, MultitaskEnsemble)
    assert loaded.label_map["tag_names"] == TAGS.names and loaded.model.weights == [0.25, 0.75]
    [answer] = MultitaskPredictor(loaded, device="cpu").predict(["wake me up at nine"],
                                                                 probabilities=True)
    # 0.25 * [1/4, 3/4] + 0.75 * [3/4, 1/4] = [0.625, 0.375]: play_music
    assert answer["intent"] == "play_music" and answer["probability"] == pytest.approx(0.625)
    assert answer["probabilities"]["set_alarm"] == pytest.approx(0.375)
    # every piece: 0.25 * 1/3 + 0.75 * 1/2 > the others, so every word is O: no slots
    assert answer["slots"] == []


def test_members_that_do_not_fit_together_are_refused_naming_the_member(tiny_model_dir, tmp_path):
    a = _saved(tiny_model_dir, tmp_path / "a", "A", 1)
    no_slots = _saved(tiny_model_dir, tmp_path / "b", "B", 2, tags=False)
    with pytest.raises(ModelLoadError, match="member member-1 predicts other tags than member-0"):
        load_model(save_ensemble_model(tmp_path / "e1", [a, no_slots]))
