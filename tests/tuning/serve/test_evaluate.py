"""`tunebert evaluate`: accuracy of a model folder on a clean split and perturbed copies of it."""

import json
import re

import pytest

from trainables.checkpointing import save_checkpoint
from tuning.cli import main
from tuning.serve.evaluate import robustness_rows


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tiny_model_dir, _demo_tokenized):
    """A tiny classifier trained 2 epochs on the demo data, saved as `tunebert train` saves it."""
    import torch

    from trainables.finetune import fit
    from trainables.hparams import FinetuneConfig

    cfg = FinetuneConfig(model=tiny_model_dir, epochs=2, lr=3e-3, batch_size=32, max_length=64,
                         precision="fp32")
    model = fit(cfg, _demo_tokenized.without_test(), device=torch.device("cpu"),
                report=lambda metrics, write: None)
    folder = tmp_path_factory.mktemp("evaluate") / "model"
    save_checkpoint(folder, model=model, optimizer=None, scheduler=None, scaler=None, epoch=2,
                    config=cfg.to_dict(), label_map=_demo_tokenized.label_map.to_dict())
    return folder


def test_table_and_json_have_one_row_per_kind_and_a_combined_one(model_dir, tmp_path, capsys):
    out = tmp_path / "robust.json"
    args = ["evaluate", str(model_dir), "--perturb", "typo:0.2,delete:0.1", "--data", "demo",
            "--output", str(out), "--device", "cpu"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    result = json.loads(out.read_text())
    names = [r["perturbation"] for r in result["rows"]]
    assert names == ["clean", "typo:0.2", "delete:0.1", "all combined (typo:0.2,delete:0.1)"]
    assert result["split"] == "test" and result["examples"] == 96 and result["kind"] == "single"
    clean = result["rows"][0]["accuracy"]
    for row in result["rows"]:
        assert 0.0 <= row["accuracy"] <= 1.0
        assert row["drop"] == pytest.approx(clean - row["accuracy"])
        assert row["perturbation"] in printed
    assert all(row["changed"] > 0.5 for row in result["rows"][1:])
    # the same seed gives the same table
    assert main(args) == 0
    assert json.loads(out.read_text()) == result


def test_clean_row_is_the_models_plain_accuracy(model_dir):
    from trainables.data import DataConfig, load_raw_splits
    from trainables.perturb import parse_spec
    from tuning.serve.predict import load_model

    test = load_raw_splits(DataConfig("demo"))["test"]
    predictor = load_model(model_dir, device="cpu")
    rows = robustness_rows(predictor.predict, test.texts, test.labels, parse_spec("swap:1"), seed=0)
    direct = sum(p == str(g) for p, g in zip(predictor.predict(test.texts), test.labels)) / len(test.texts)
    assert [r.perturbation for r in rows] == ["clean", "swap:1"]  # one kind: no combined row
    assert rows[0].accuracy == direct


def test_data_json_in_the_folder_is_the_default_data(model_dir, tmp_path, capsys):
    from trainables.ensemble import save_ensemble

    ensemble = save_ensemble(tmp_path / "ensemble", [model_dir, model_dir])
    (ensemble / "data.json").write_text(json.dumps({"source": "demo"}))
    assert main(["evaluate", str(ensemble), "--perturb", "contraction:1", "--split", "validation",
                 "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    assert "ensemble model" in printed and "validation split of 'demo'" in printed


@pytest.mark.parametrize("extra, message", [
    (["--perturb", "tpyo:0.1", "--data", "demo"], "--perturb 'tpyo:0.1': unknown kind 'tpyo'; known kinds: swap"),
    (["--perturb", "typo:0", "--data", "demo"], r"rate of 'typo' must be a number in \(0, 1\]"),
    (["--perturb", "typo:0.1"], "has no data.json; pass --data"),
    (["--perturb", "typo:0.1", "--data", "demo", "-o", "."], "--output '.' is a folder; pass a file"),
])
def test_user_mistakes_exit_2_with_a_message(model_dir, capsys, extra, message):
    assert main(["evaluate", str(model_dir), *extra]) == 2
    assert re.search(message, capsys.readouterr().err)


def test_missing_folder_and_missing_split_are_refused(model_dir, tmp_path, capsys):
    assert main(["evaluate", str(tmp_path / "nope"), "--perturb", "typo:0.1", "--data", "demo"]) == 2
    assert "does not exist" in capsys.readouterr().err
    data = tmp_path / "data"
    data.mkdir()
    for split in ("train", "validation"):
        (data / f"{split}.jsonl").write_text('{"text": "a", "label": "x"}\n{"text": "b", "label": "y"}\n')
    assert main(["evaluate", str(model_dir), "--perturb", "typo:0.1", "--data", str(data)]) == 2
    assert "no test file" in capsys.readouterr().err


def test_output_into_missing_folders_creates_them(model_dir, tmp_path, capsys):
    out = tmp_path / "results" / "robustness" / "typo.json"
    assert main(["evaluate", str(model_dir), "--perturb", "typo:0.1", "--data", "demo",
                 "--output", str(out), "--device", "cpu"]) == 0
    assert json.loads(out.read_text())["perturb"] == "typo:0.1"
    above = tmp_path / "a-file"
    above.write_text("mine\n")
    assert main(["evaluate", str(model_dir), "--perturb", "typo:0.1", "--data", "demo",
                 "--output", str(above / "typo.json")]) == 2
    assert f"{str(above)!r} is a file, not a folder" in capsys.readouterr().err
    assert above.read_text() == "mine\n"


def test_an_empty_split_exits_2_with_a_message(model_dir, tmp_path, capsys):
    """Two train rows of two labels carve no validation split: nothing to score."""
    data = tmp_path / "data"
    data.mkdir()
    rows = '{"text": "wake me up", "label": "alarm"}\n{"text": "play jazz", "label": "music"}\n'
    for split in ("train", "test"):
        (data / f"{split}.jsonl").write_text(rows)
    assert main(["evaluate", str(model_dir), "--perturb", "typo:0.1", "--data", str(data),
                 "--split", "validation", "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("tunebert evaluate: error:") and "validation split" in err
