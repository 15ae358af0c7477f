"""A multi-task model as a model folder (trainables.joint_export): it round-trips to the same logits
without its base encoder, loads without Ray or MLflow, says which file is damaged, and counts as a
folder tunebert wrote for the output-folder rule (tuning.results.outputs)."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from trainables.errors import ConfigError, ModelLoadError
from trainables.export import load_model, save_ensemble_model
from trainables.hparams import MultitaskConfig
from trainables.joint_export import save_multitask_model
from trainables.joint_model import build_multitask_model
from trainables.labels import LabelMap
from trainables.models import load_tokenizer
from trainables.tagging import TagMap
from tuning.results.outputs import check_replaceable, model_kind

REPO = Path(__file__).resolve().parents[2]
INTENTS = LabelMap.from_labels(["set_alarm", "play_music", "get_weather"])
TAGS = TagMap.from_tags([["B-time", "I-time", "O", "B-place"]])  # O, B/I-place, B/I-time
TEXTS = ["wake me up at nine am", "play jazz in the kitchen", "hi"]


@pytest.fixture
def base(tiny_model_dir, tmp_path) -> Path:
    """A copy of the tiny base encoder, which a test takes away."""
    return Path(shutil.copytree(tiny_model_dir, tmp_path / "base-encoder"))


def _multitask(base: Path, *, intents: bool = True, tags: bool = True, seed: int = 1, **changes):
    """(config, model, label map): a multi-task model on ``base`` with its encoder moved by a
    seeded random step (so it is not the base encoder) and random heads."""
    cfg = MultitaskConfig(model=str(base), epochs=1, max_length=16, precision="fp32", seed=seed,
                          **changes)
    torch.manual_seed(seed)
    model = build_multitask_model(cfg, num_labels=len(INTENTS.names) if intents else 0,
                                  num_tags=len(TAGS) if tags else 0).eval()
    with torch.no_grad():
        for param in model.encoder.parameters():
            param.add_(0.05 * torch.randn_like(param))
    label_map = {**(INTENTS.to_dict() if intents else {"names": [], "raw_values": []}),
                 "tag_names": list(TAGS.names) if tags else []}
    return cfg, model, label_map


def _logits(model, tokenizer):
    batch = tokenizer(TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        return model(batch["input_ids"], batch["attention_mask"])


def _saved(base: Path, folder: Path, **kwargs) -> Path:
    cfg, model, label_map = _multitask(base, **kwargs)
    return save_multitask_model(folder, model, config=cfg.to_dict(), label_map=label_map,
                                tokenizer=load_tokenizer(str(base)))


@pytest.mark.parametrize("changes", [
    dict(pooling="mean", head="linear", slot_head="linear", sentence_norm="none"),
    dict(pooling="cls", head="norm_gelu", slot_head="norm_gelu", sentence_norm="l2"),
    dict(pooling="max", head="mlp", slot_head="linear", head_hidden=8, sentence_norm="l1"),
])
def test_a_saved_multitask_model_gives_the_same_logits_without_its_base_encoder(
        base, tmp_path, monkeypatch, changes):
    cfg, model, label_map = _multitask(base, **changes)
    tokenizer = load_tokenizer(str(base))
    expected = _logits(model, tokenizer)
    folder = save_multitask_model(tmp_path / "model", model, config=cfg.to_dict(),
                                  label_map=label_map, tokenizer=tokenizer,
                                  metrics={"val_sentence_accuracy": 0.875})
    names = {p.name for p in folder.iterdir()}
    assert {"config.json", "model.safetensors", "head.safetensors", "slot_head.safetensors",
            "label_map.json", "tunebert.json", "README.md", "tokenizer.json"} <= names
    assert not [n for n in names if n.endswith((".pt", ".bin", ".pkl"))]  # no pickles
    meta = json.loads((folder / "tunebert.json").read_text())
    assert meta["format"] == "tunebert-multitask" and meta["format_version"] == 1
    assert {k: meta[k] for k in changes} == changes
    assert (meta["num_labels"], meta["num_tags"], meta["num_layers"], meta["max_length"]) == \
        (3, 5, 2, 16)
    assert meta["config"] == cfg.to_dict()
    card = (folder / "README.md").read_text()
    assert "`get_weather`, `play_music`, `set_alarm`" in card and "`place`, `time`" in card
    assert "0.8750" in card and "tunebert predict" in card

    base.rename(base.with_name("base-encoder-gone"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    loaded = load_model(folder)
    assert loaded.kind == "multitask" and loaded.config == cfg.to_dict()
    assert loaded.label_map == label_map
    sentence, tokens = _logits(loaded.model, loaded.tokenizer)
    torch.testing.assert_close(sentence, expected[0], rtol=0, atol=0)
    torch.testing.assert_close(tokens, expected[1], rtol=0, atol=0)


@pytest.mark.parametrize("intents, tags, present, absent", [
    (True, False, "head.safetensors", "slot_head.safetensors"),
    (False, True, "slot_head.safetensors", "head.safetensors"),
])
def test_a_model_with_one_task_writes_and_reads_only_its_head(base, tmp_path, intents, tags,
                                                             present, absent):
    folder = _saved(base, tmp_path / "model", intents=intents, tags=tags)
    assert (folder / present).is_file() and not (folder / absent).exists()
    loaded = load_model(folder)
    assert (loaded.model.head is not None, loaded.model.slot_head is not None) == (intents, tags)
    meta = json.loads((folder / "tunebert.json").read_text())
    assert (meta["num_labels"], meta["num_tags"]) == (3 * intents, 5 * tags)


def test_the_folder_loads_and_predicts_in_a_process_without_ray_or_mlflow(base, tmp_path):
    folder = _saved(base, tmp_path / "model")
    shutil.rmtree(base)
    code = ("import json, sys\n"
            "from trainables.export import load_model\n"
            "from trainables.joint_predict import predict_utterances\n"
            f"loaded = load_model({str(folder)!r})\n"
            f"answers = predict_utterances(loaded, {TEXTS!r}, device='cpu')\n"
            "heavy = sorted(m for m in ('ray', 'mlflow', 'tuning') if m in sys.modules)\n"
            "print(json.dumps({'kind': loaded.kind, 'heavy': heavy, 'answers': answers}))\n")
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                          timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.splitlines()[-1])
    assert out["kind"] == "multitask" and out["heavy"] == []
    assert [a["text"] for a in out["answers"]] == TEXTS
    assert all(a["intent"] in INTENTS.names and 0 < a["probability"] <= 1
               for a in out["answers"])


def _cut_in_half(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:path.stat().st_size // 2])


def _edited(change):
    return lambda path: path.write_text(json.dumps(change(json.loads(path.read_text()))))


@pytest.mark.parametrize("file, damage, message", [
    ("slot_head.safetensors", Path.unlink, "is incomplete: slot_head.safetensors missing"),
    ("head.safetensors", Path.unlink, "is incomplete: head.safetensors missing"),
    ("slot_head.safetensors", _cut_in_half, "slot_head.safetensors does not fit a linear slot "
                                            "head for 5 tags"),
    ("model.safetensors", _cut_in_half,
     "holds an encoder (config.json, model.safetensors) that cannot be read (SafetensorError"),
    ("tokenizer.json", _cut_in_half, "holds a tokenizer (tokenizer.json"),
    ("label_map.json", _edited(lambda d: {**d, "tag_names": d["tag_names"][:2]}),
     "label_map.json must hold {\"names\": [...], \"tag_names\": [...]} with one name per intent "
     "(3) and one per tag (5)"),
    ("tunebert.json", _edited(lambda d: {k: v for k, v in d.items() if k != "slot_head"}),
     "tunebert.json lacks 'slot_head'"),
    ("tunebert.json", _edited(lambda d: {**d, "num_labels": 0, "num_tags": 0}),
     "holds num_labels 0 and num_tags 0, but they must be counts (>= 0), at least one of them > 0"),
    ("tunebert.json", _edited(lambda d: {**d, "slot_head": "crf"}),
     "tunebert.json holds a \"config\" or head settings that no training config allows (`slot_head`"),
    ("tunebert.json", _edited(lambda d: {**d, "config": {**d["config"], "trainable": "finetune"}}),
     "holds a \"config\" or head settings that no training config allows"),
    ("tunebert.json", _edited(lambda d: {**d, "format_version": 99}),
     "multi-task model in format version 99; this tunebert reads versions up to 1: upgrade"),
])
def test_a_damaged_multitask_folder_is_refused_naming_the_file(base, tmp_path, file, damage,
                                                              message):
    folder = _saved(base, tmp_path / "model")
    damage(folder / file)
    with pytest.raises(ModelLoadError) as caught:
        load_model(folder)
    text = str(caught.value)
    assert message in text, text
    assert "copy it again" in text or "upgrade tunebert" in text  # and what to do


def test_saving_refuses_a_label_map_that_does_not_fit_the_heads(base, tmp_path):
    cfg, model, label_map = _multitask(base)
    with pytest.raises(ValueError, match=r"one name per intent \(3\) and one per tag \(5\)"):
        save_multitask_model(tmp_path / "a", model, config=cfg.to_dict(),
                             label_map={**label_map, "tag_names": ["O"]}, tokenizer=None)
    with pytest.raises(TypeError, match="needs a MultitaskModel"):
        save_multitask_model(tmp_path / "b", model.encoder, config=cfg.to_dict(),
                             label_map=label_map, tokenizer=None)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    folder = _saved(base, tmp_path / "model")
    with pytest.raises(FileExistsError, match="not an empty folder"):
        save_multitask_model(folder, model, config=cfg.to_dict(), label_map=label_map,
                             tokenizer=None)


def test_an_ensemble_of_multitask_models_loads_as_one_but_not_with_other_intents(base, tmp_path):
    # the ensemble's math and predictions: tests/trainables/test_joint_ensemble.py
    members = [_saved(base, tmp_path / f"m{seed}", seed=seed) for seed in (1, 2)]
    assert load_model(save_ensemble_model(tmp_path / "ensemble", members)).kind == "multitask"
    other = _saved(base, tmp_path / "m3", seed=3, intents=False)
    with pytest.raises(ModelLoadError, match="member member-1 predicts other intents than member-0"):
        load_model(save_ensemble_model(tmp_path / "mixed", [members[0], other]))


def test_the_output_folder_rule_replaces_a_multitask_folder_but_nothing_foreign(base, tmp_path):
    folder = _saved(base, tmp_path / "model")
    assert model_kind(folder) == "single"
    check_replaceable(folder)  # a folder tunebert wrote, slot_head.safetensors included
    (folder / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="also notes.txt, which tunebert did not write"):
        check_replaceable(folder)
    (folder / "notes.txt").unlink()
    meta = json.loads((folder / "tunebert.json").read_text())
    (folder / "tunebert.json").write_text(json.dumps({**meta, "format": "someone-else"}))
    with pytest.raises(ConfigError, match="holds something other than a model tunebert wrote"):
        check_replaceable(folder)
