"""Predictions of a multi-task model folder: intent with its probability and slots as character
spans of the original text (trainables.joint_predict), through ``load_model``, ``tunebert predict``
and the MLflow pyfunc model. The heads are set by hand (zero weights, chosen biases) so what the
model answers is known exactly whatever the encoder computes."""

import json
import math
import shutil
from io import StringIO
from pathlib import Path

import pytest
import torch

from trainables.export import load_model as load_folder
from trainables.hparams import MultitaskConfig
from trainables.joint_export import save_multitask_model
from trainables.joint_model import build_multitask_model
from trainables.joint_predict import predict_utterances, spans_to_char_spans, word_offsets
from trainables.labels import LabelMap
from trainables.models import load_tokenizer
from trainables.tagging import TagMap
from tuning.cli import main
from tuning.serve.predict import load_model

INTENTS = LabelMap.from_labels(["set_alarm", "play_music", "get_weather"])
TAGS = TagMap.from_tags([["B-time", "I-time", "B-place"]])  # O, B-place, I-place, B-time, I-time
INTENT_BIAS = [0.0, 0.0, 2.0]  # get_weather, play_music, set_alarm: set_alarm wins
SET_ALARM_P = math.exp(2) / (math.exp(2) + 2)  # softmax of the bias


# --------------------------------------------------------------------------- offsets, by hand


@pytest.mark.parametrize("text, offsets", [
    ("wake me up", [(0, 4), (5, 7), (8, 10)]),
    ("  wake   me\tup \n", [(2, 6), (9, 11), (12, 14)]),  # spaces, a tab, a newline around
    ("Réveille-moi à 7h30 !", [(0, 12), (13, 14), (15, 19), (20, 21)]),  # accents, punctuation
    ("set alarm, 7:30am!", [(0, 3), (4, 10), (11, 18)]),
    ("naïve\u00a0café", [(0, 5), (6, 10)]),  # a no-break space separates words too
    ("", []),
    ("   ", []),
])
def test_word_offsets_are_each_words_characters_in_the_text(text, offsets):
    assert word_offsets(text) == offsets
    assert [text[a:b] for a, b in offsets] == text.split()


def test_spans_become_the_original_characters_from_first_word_to_last():
    text = "Wake  me at\tNINE am, in Zürich"
    offsets = word_offsets(text)  # Wake me at NINE am, in Zürich: words 0..6
    slots = spans_to_char_spans(text, offsets, [("time", 3, 4), ("place", 6, 6)])
    assert slots == [{"slot": "time", "value": "NINE am,", "start": 12, "end": 20},
                     {"slot": "place", "value": "Zürich", "start": 24, "end": 30}]
    assert spans_to_char_spans(text, offsets, [("x", 0, 2)])[0]["value"] == "Wake  me at"


# --------------------------------------------------------------------------- a model set by hand


def _set_bias(head, bias):
    with torch.no_grad():
        head[-1].weight.zero_()
        head[-1].bias.copy_(torch.tensor(bias))


def _save(base: str, folder: Path, slot_tag: str, *, intents: bool = True) -> Path:
    """A multi-task model whose intent head always answers set_alarm (probability SET_ALARM_P)
    and whose slot head tags every piece ``slot_tag``; max_length 8."""
    cfg = MultitaskConfig(model=base, epochs=1, max_length=8, precision="fp32")
    torch.manual_seed(0)
    model = build_multitask_model(cfg, num_labels=3 if intents else 0, num_tags=len(TAGS)).eval()
    if intents:
        _set_bias(model.head, INTENT_BIAS)
    _set_bias(model.slot_head, [5.0 if name == slot_tag else 0.0 for name in TAGS.names])
    label_map = {**(INTENTS.to_dict() if intents else {"names": [], "raw_values": []}),
                 "tag_names": list(TAGS.names)}
    return save_multitask_model(folder, model, config=cfg.to_dict(), label_map=label_map,
                                tokenizer=load_tokenizer(base))


@pytest.fixture(scope="module")
def folders(tiny_model_dir, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("joint-models")
    return {tag: _save(tiny_model_dir, root / tag, tag) for tag in ("B-time", "I-place", "O")}


def test_every_word_tagged_b_is_a_slot_of_its_own_characters(folders):
    text = "  Wake   me\tat Nine!"
    [answer] = predict_utterances(load_folder(folders["B-time"]), [text], device="cpu")
    assert answer["text"] == text and answer["intent"] == "set_alarm"
    assert answer["probability"] == pytest.approx(SET_ALARM_P, abs=1e-6)
    assert answer["slots"] == [{"slot": "time", "value": v, "start": s, "end": e}
                               for v, s, e in [("Wake", 2, 6), ("me", 9, 11), ("at", 12, 14),
                                               ("Nine!", 15, 20)]]
    json.dumps(answer)  # JSON-ready


def test_i_tags_without_a_b_make_one_span_keeping_the_texts_own_spacing_and_case(folders):
    text = "Café  au\tLAIT à Zürich"
    [answer] = load_model(folders["I-place"], device="cpu").predict([text])
    assert answer["slots"] == [{"slot": "place", "value": "Café  au\tLAIT à Zürich", "start": 0,
                                "end": len(text)}]


def test_words_cut_off_by_max_length_get_no_slot_and_an_empty_text_none(folders):
    words = [f"w{i}" for i in range(10)]  # max_length 8: [CLS] + 6 pieces + [SEP]
    answers = load_model(folders["B-time"], device="cpu").predict([" ".join(words), "", "   "])
    kept = [slot["value"] for slot in answers[0]["slots"]]
    assert 0 < len(kept) < len(words) and kept == words[:len(kept)]
    assert [a["slots"] for a in answers[1:]] == [[], []]
    assert [a["intent"] for a in answers] == ["set_alarm"] * 3


def test_a_tagging_only_model_answers_no_intent_and_all_o_no_slot(tiny_model_dir, folders,
                                                                   tmp_path):
    folder = _save(tiny_model_dir, tmp_path / "tags-only", "B-place", intents=False)
    [answer] = load_model(folder, device="cpu").predict(["in paris"], probabilities=True)
    assert (answer["intent"], answer["probability"]) == (None, None)
    assert "probabilities" not in answer
    assert [s["value"] for s in answer["slots"]] == ["in", "paris"]
    [answer] = load_model(folders["O"], device="cpu").predict(["in paris"])
    assert answer["slots"] == []


# --------------------------------------------------------------------------- tunebert predict


def test_tunebert_predict_prints_one_json_object_a_line(folders, tmp_path, capsys):
    texts_file = tmp_path / "texts.txt"
    texts_file.write_text("wake me\n\nplay  Jazz\n")  # the blank line is skipped
    assert main(["predict", str(folders["B-time"]), "at nine", "--file", str(texts_file)]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["text"] for r in rows] == ["at nine", "wake me", "play  Jazz"]
    assert rows[2] == {"text": "play  Jazz", "intent": "set_alarm",
                       "probability": pytest.approx(SET_ALARM_P, abs=1e-6),
                       "slots": [{"slot": "time", "value": "play", "start": 0, "end": 4},
                                 {"slot": "time", "value": "Jazz", "start": 6, "end": 10}]}
    assert main(["predict", str(folders["O"]), "hi", "--proba"]) == 0
    [row] = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert set(row["probabilities"]) == {"get_weather", "play_music", "set_alarm"}
    assert row["probabilities"]["set_alarm"] == pytest.approx(SET_ALARM_P, abs=1e-6)


def test_tunebert_predict_refuses_text_that_is_not_utf8_on_a_multitask_model(folders, capsys):
    assert main(["predict", str(folders["O"]), "caf\udce9"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("tunebert predict: error:") and "holds bytes that are not UTF-8" in err


# --------------------------------------------------------------------------- the MLflow model


def test_the_logged_pyfunc_model_serves_the_same_records(folders, tmp_path, monkeypatch,
                                                         tiny_model_dir):
    import mlflow.pyfunc
    import pandas as pd
    from mlflow.pyfunc.scoring_server import predictions_to_json
    from mlflow.tracking import MlflowClient

    from tuning import tracking

    folder = Path(shutil.copytree(folders["B-time"], tmp_path / "model"))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    run_id = client.create_run(client.create_experiment("joint")).info.run_id
    ref = tracking.log_model(uri, run_id, str(folder), "model")
    client.set_terminated(run_id)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    model = mlflow.pyfunc.load_model(ref.uri)
    texts = ["wake me  Up", "hi"]
    expected = load_model(folder, device="cpu").predict(texts)
    assert model.predict(texts) == expected
    assert model.predict(pd.DataFrame({"text": texts})) == expected
    with_proba = model.predict(texts, params={"proba": True})
    assert with_proba[0]["probabilities"]["set_alarm"] == pytest.approx(SET_ALARM_P, abs=1e-6)
    out = StringIO()  # what `mlflow models serve` answers over REST
    predictions_to_json(model.predict(texts), out)
    assert json.loads(out.getvalue()) == {"predictions": expected}
