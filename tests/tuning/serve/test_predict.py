"""Prediction from a model folder, single or ensemble: in this process, in a fresh one, and through
`tunebert predict`. The models are tiny untrained classifiers written as checkpoint folders (the
model folders of older tunebert versions, which still load; today's format: test_export.py), so
what they should answer can be computed here directly."""

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from trainables.checkpointing import save_checkpoint
from trainables.data import LabelMap
from trainables.ensemble import save_ensemble
from trainables.errors import ModelLoadError, UserError
from tuning.cli import main
from tuning.serve.predict import load_model

REPO = Path(__file__).resolve().parents[3]
TEXTS = ["wake me up at seven", "play some jazz", "will it rain tomorrow in berlin", "hi",
         "turn the volume up " * 30]  # the last one is longer than max_length
LABELS = LabelMap.from_labels(["weather", "music", "alarm"])


@pytest.fixture
def models(tiny_config, tmp_path):
    """Two untrained classifiers (seeds 1 and 2: different heads), each saved as a plain model
    folder; fp32 so the direct computation below matches to rounding."""
    from trainables.finetune import build_classifier

    out = []
    for seed in (1, 2):
        cfg = tiny_config.replace(seed=seed, precision="fp32", max_length=16)
        torch.manual_seed(seed)
        model = build_classifier(cfg, len(LABELS)).eval()
        folder = save_checkpoint(tmp_path / f"seed-{seed}", model=model, optimizer=None,
                                 scheduler=None, scaler=None, epoch=1, config=cfg.to_dict(),
                                 label_map=LABELS.to_dict())
        out.append((model, folder))
    return out


def _direct_proba(model, texts, tiny_model_dir, max_length=16):
    """One text at a time, no padding, no batching: what the folder's model must answer."""
    from trainables.models import load_tokenizer

    tokenizer = load_tokenizer(tiny_model_dir)
    rows = []
    with torch.no_grad():
        for text in texts:
            ids = tokenizer(text)["input_ids"]
            if len(ids) > max_length:
                ids = ids[:max_length - 1] + ids[-1:]
            ids = torch.tensor([ids])
            rows.append(torch.softmax(model(ids, torch.ones_like(ids)), -1)[0].numpy())
    return np.stack(rows)


def test_a_single_folder_predicts_what_its_model_computes(models, tiny_model_dir):
    model, folder = models[0]
    predictor = load_model(folder, device="cpu", batch_size=2)
    assert predictor.kind == "single" and predictor.labels == ["alarm", "music", "weather"]
    proba = predictor.predict_proba(TEXTS)
    assert proba.shape == (len(TEXTS), 3) and proba.dtype == np.float32
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-6)
    np.testing.assert_allclose(proba, _direct_proba(model, TEXTS, tiny_model_dir), atol=1e-5)
    assert predictor.predict(TEXTS) == [predictor.labels[i] for i in proba.argmax(axis=1)]
    assert predictor.predict_proba([]).shape == (0, 3) and predictor.predict([]) == []
    with pytest.raises(UserError, match="text 1 is 3"):
        predictor.predict_proba(["fine", 3])


def test_an_ensemble_folder_predicts_the_mean_of_its_members_probabilities(models, tmp_path,
                                                                           tiny_model_dir):
    folder = save_ensemble(tmp_path / "model", [f for _, f in models])
    predictor = load_model(folder, device="cpu")
    assert predictor.kind == "ensemble" and predictor.labels == ["alarm", "music", "weather"]
    members = [_direct_proba(m, TEXTS, tiny_model_dir) for m, _ in models]
    np.testing.assert_allclose(predictor.predict_proba(TEXTS), (members[0] + members[1]) / 2,
                               atol=1e-5)


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "tuning.cli", "predict", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=300, env=dict(os.environ))


@pytest.mark.slow
def test_a_fresh_process_predicts_what_this_one_does(models, tmp_path):
    ensemble = save_ensemble(tmp_path / "model", [f for _, f in models])
    texts_file = tmp_path / "texts.txt"
    texts_file.write_text("\n".join(TEXTS[:3]) + "\n\n")  # the blank line is skipped
    for folder in (models[0][1], ensemble):
        here = load_model(folder)  # default device, as the command uses
        proc = _cli(str(folder), *TEXTS[3:], "--file", str(texts_file), "--proba")
        assert proc.returncode == 0, proc.stderr
        rows = [json.loads(line) for line in proc.stdout.splitlines()]
        texts = TEXTS[3:] + TEXTS[:3]
        assert [r["text"] for r in rows] == texts
        assert [r["label"] for r in rows] == here.predict(texts)
        there = np.array([[r["probabilities"][label] for label in here.labels] for r in rows])
        np.testing.assert_allclose(there, here.predict_proba(texts), rtol=0, atol=1e-7)


def test_tunebert_predict_on_a_single_and_an_ensemble_folder(models, tmp_path, capsys):
    ensemble = save_ensemble(tmp_path / "model", [f for _, f in models])
    for folder in (models[0][1], ensemble):
        assert main(["predict", str(folder), *TEXTS[:2]]) == 0
        lines = capsys.readouterr().out.splitlines()
        assert lines == [f"{label}\t{text}" for label, text
                         in zip(load_model(folder).predict(TEXTS[:2]), TEXTS[:2])]


@pytest.mark.parametrize("args, message", [
    (["/no/such/model"], "model folder '/no/such/model' does not exist"),
    (["{tmp}", "a text"], "is not a model folder: it has no tunebert.json"),
    (["{model}"], "no texts to classify"),
    (["{model}", "--file", "/no/such/file.txt"], "--file '/no/such/file.txt': no such file"),
    (["{model}", "a text", "--batch-size", "0"], "--batch-size must be at least 1"),
    (["{model}", "--file", "{latin1}"], "is not UTF-8 text: byte 3 (line 1) is 0xe9"),
    (["{model}", "caf\udce9"], "text 0 ('caf\\udce9') holds bytes that are not UTF-8"),  # argv
])
def test_bad_input_exits_2_with_a_message(args, message, models, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    (tmp_path / "latin1.txt").write_bytes("café au lait\n".encode("latin-1"))
    args = [a.format(tmp=tmp_path / "empty", model=models[0][1], latin1=tmp_path / "latin1.txt")
            for a in args]
    assert main(["predict", *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("tunebert predict: error:") and message in err


def test_stdin_that_is_not_utf8_exits_2_with_a_message(models, monkeypatch, capsys):
    """As Python reads a pipe in the C locale: bytes that are not UTF-8 become surrogates."""
    stdin = io.TextIOWrapper(io.BytesIO(b"caf\xe9 au lait\n"), errors="surrogateescape")
    monkeypatch.setattr(sys, "stdin", stdin)
    assert main(["predict", str(models[0][1]), "--file", "-"]) == 2
    err = capsys.readouterr().err
    assert err == ("tunebert predict: error: stdin (--file -) is not UTF-8 text: byte 3 (line 1) "
                   "is 0xe9. Convert it to UTF-8 first, e.g. `iconv -f latin1 -t utf-8 FILE > "
                   "FILE.utf8` for Latin-1 text\n")


@pytest.fixture
def saved(models, tmp_path, tiny_model_dir):
    """The first model as a model folder of today's format (``trainables.export.save_model``)."""
    from trainables.export import save_model
    from trainables.models import load_tokenizer

    model, folder = models[0]
    return save_model(tmp_path / "saved", model, config=json.loads((folder / "config.json").read_text()),
                      label_map=LABELS.to_dict(), tokenizer=load_tokenizer(tiny_model_dir))


def _cut_in_half(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:path.stat().st_size // 2])


def _edited(change):
    return lambda path: path.write_text(json.dumps(change(json.loads(path.read_text()))))


@pytest.mark.parametrize("folder, file, damage, message", [
    ("saved", "model.safetensors", _cut_in_half,
     "holds an encoder (config.json, model.safetensors) that cannot be read (SafetensorError"),
    ("saved", "config.json", lambda p: p.write_text("{not json"),
     "holds an encoder (config.json, model.safetensors) that cannot be read"),
    ("saved", "tokenizer.json", _cut_in_half, "holds a tokenizer (tokenizer.json"),
    ("saved", "tunebert.json", _edited(lambda d: {k: v for k, v in d.items() if k != "pooling"}),
     "tunebert.json lacks 'pooling'"),
    ("saved", "tunebert.json", _edited(lambda d: {k: v for k, v in d.items() if k != "config"}),
     "tunebert.json lacks 'config'"),
    ("saved", "tunebert.json", _edited(lambda d: {**d, "pooling": "weird"}),
     "`pooling` must be one of ['cls', 'mean', 'max'], but got 'weird'"),
    ("saved", "tunebert.json", _edited(lambda d: {**d, "config": {**d["config"], "lr": "fast"}}),
     "tunebert.json holds a \"config\" or head settings that no training config allows (`lr`"),
    ("ensemble", "ensemble.json", _edited(lambda d: {**d, "weights": 0.5}),
     "ensemble.json: \"weights\" must be a list of numbers, one per member (2)"),
    ("ensemble", "ensemble.json", lambda p: p.write_bytes(p.read_bytes() + "\u00e9".encode("latin-1")),
     "ensemble.json ('utf-8' codec can't decode byte 0xe9"),
])
def test_a_damaged_model_folder_exits_2_naming_the_file(folder, file, damage, message, saved,
                                                       models, tmp_path, capsys):
    if folder == "ensemble":
        folder = save_ensemble(tmp_path / "ensemble", [f for _, f in models])
    else:
        folder = saved
    damage(folder / file)
    assert main(["predict", str(folder), "a text"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("tunebert predict: error:") and message in err, err
    assert err.count("\n") == 1 and ("copy" in err or "fix it" in err)  # and what to do


def test_ensemble_members_must_agree_on_labels_and_tokenizer(models, tmp_path):
    from trainables.finetune import build_classifier
    from trainables.hparams import FinetuneConfig

    _, first = models[0]
    config = json.loads((first / "config.json").read_text())
    other = save_checkpoint(tmp_path / "other", model=build_classifier(
        FinetuneConfig.from_dict(config), 2), optimizer=None, scheduler=None, scaler=None,
        epoch=1, config=config, label_map=LabelMap.from_labels(["x", "y"]).to_dict())
    with pytest.raises(ModelLoadError, match="member member-1 has another label map"):
        load_model(save_ensemble(tmp_path / "mixed-labels", [first, other]))
    longer = save_checkpoint(tmp_path / "longer", model=models[1][0], optimizer=None,
                             scheduler=None, scaler=None, epoch=1,
                             config={**config, "max_length": 32}, label_map=LABELS.to_dict())
    with pytest.raises(ModelLoadError, match="`max_length` is 16 in member-0 and 32 in member-1"):
        load_model(save_ensemble(tmp_path / "mixed-lengths", [first, longer]))
