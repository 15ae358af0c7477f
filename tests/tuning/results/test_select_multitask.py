"""Final selection and `tunebert evaluate` for multitask (joint intent + slot) models: a multitask
sweep's candidates are chosen by their mean validation sentence accuracy, the ensemble of the
chosen seed models (each head's mean probabilities) is handed over only if it scores at least the
seed models' mean on validation, the test split is read once, after the choice, for the chosen
config alone; `tunebert evaluate` scores a multitask folder on joint data as training scores it."""

import json
import statistics

import pytest
import torch
from mlflow.tracking import MlflowClient

from trainables import task_data
from trainables.data import DataConfig
from trainables.hparams import MultitaskConfig
from trainables.joint import evaluate_multitask, label_maps
from trainables.joint_export import save_multitask_model
from trainables.joint_model import build_multitask_model
from trainables.models import load_tokenizer
from tuning.cli import main
from tuning.results.selection import evaluate_folders, final_selection
from tuning.serve.predict import load_model


def _spy(monkeypatch):
    """Record, in order, every encoding of joint data (with or without test), every scoring of a
    validation or test split (the trials' epochs included) and the moment the handed-over model
    is decided (its MLflow tag)."""
    import trainables.joint
    import tuning.tracking

    events = []
    encode, evaluate = task_data.encode, trainables.joint.evaluate_multitask
    set_tags = tuning.tracking.SelectionRun.set_tags

    def spy_encode(*args, **kwargs):
        data = encode(*args, **kwargs)
        events.append("encode+test" if "test" in data.splits else "encode")
        for name, split in data.splits.items():
            split.seen_as = name
        return data

    def spy_evaluate(model, split, *args, **kwargs):
        events.append(f"evaluate-{getattr(split, 'seen_as', '?')}")
        return evaluate(model, split, *args, **kwargs)

    def spy_set_tags(run, tags):
        if "tunebert.handed_over" in tags:
            events.append("handed-over")
        return set_tags(run, tags)

    monkeypatch.setattr(task_data, "encode", spy_encode)
    monkeypatch.setattr(trainables.joint, "evaluate_multitask", spy_evaluate)
    monkeypatch.setattr(tuning.tracking.SelectionRun, "set_tags", spy_set_tags)
    return events


@pytest.mark.slow
def test_a_multitask_sweep_is_selected_by_sentence_accuracy_and_tested_once(
        ray_local, tiny_model_dir, snips_slice, tmp_path, monkeypatch):
    from tuning.config import SweepConfig
    from tuning.sweep.runner import run_sweep

    cfg = SweepConfig(name="jsel", trainable="multitask", data=DataConfig(str(snips_slice)),
                      model=tiny_model_dir, max_length=48, epochs=1, num_trials=2,
                      storage=str(tmp_path), scheduler="none", max_concurrent=2, seed=0)
    run_sweep(cfg)
    events = _spy(monkeypatch)

    result = final_selection("jsel", top_k=2, seeds=2, storage=str(tmp_path), ensemble=True,
                             output_dir=str(tmp_path / "chosen"))

    # 4 one-epoch trainings without test (each scores validation once), then the chosen seed
    # models and their ensemble on validation, the choice, and only then test: the seed models,
    # and the ensemble once if it is handed over
    ensemble_won = result.handed_over == "ensemble"
    assert events == (["encode", "evaluate-validation"] * 4 + ["encode"]
                      + ["evaluate-validation"] * 3 + ["handed-over", "encode+test"]
                      + ["evaluate-test"] * (2 + ensemble_won))
    monkeypatch.undo()
    assert result.metric == "val_sentence_accuracy"  # the multitask sweep's own ranking

    # the chosen candidate has the best mean of its seed runs' (best epoch) sentence accuracy
    client = MlflowClient(cfg.resolved_tracking_uri())
    for candidate in result.candidates:
        runs = [client.get_run(run_id) for run_id in candidate.run_ids]
        scores = [r.data.metrics["best_val_sentence_accuracy"] for r in runs]
        assert list(candidate.scores) == scores
        assert candidate.mean == pytest.approx(statistics.fmean(scores), abs=1e-12)
        # test metrics on the chosen config's runs only
        tests = {k for r in runs for k in r.data.metrics if k.startswith("test_")}
        if candidate.chosen:
            assert {"test_intent_accuracy", "test_slot_f1", "test_sentence_accuracy"} <= tests
        else:
            assert not tests
    best = max(result.candidates, key=lambda c: (round(c.mean, 12), -round(c.std, 12), -c.rank))
    assert result.chosen.rank == best.rank

    # the hand-over, on validation: the ensemble unless below the seed models' mean
    folders = [f"{result.output_dir}/seed-{s}" for s in result.chosen.seeds] + [result.model_dir]
    *seeds, ensemble = [m["val_sentence_accuracy"] for m in evaluate_folders(
        folders, DataConfig(str(snips_slice)), result.chosen.config, "validation")]
    assert (result.single_val, result.ensemble_val) == (max(seeds), ensemble)
    assert ensemble_won == (round(ensemble, 12) >= round(statistics.fmean(seeds), 12))

    # the selection run's test summary, the report, and the handed-over model predicts
    logged = client.get_run(result.run_id).data.metrics
    chosen_runs = [client.get_run(r) for r in result.chosen.run_ids]
    sentence = [r.data.metrics["test_sentence_accuracy"] for r in chosen_runs]
    assert logged["test_sentence_accuracy_mean"] == pytest.approx(statistics.fmean(sentence))
    assert "handed_over_test_slot_f1" in logged
    assert "test sentence accuracy (intent and every tag)" in result.markdown()
    [answer] = load_model(result.model_dir, device="cpu").predict(["play jazz on spotify"])
    assert answer["intent"] in json.loads((tmp_path / "chosen" / f"seed-{result.chosen.seeds[0]}"
                                           / "label_map.json").read_text())["names"]


def test_evaluate_scores_a_multitask_folder_as_training_scores_it(tiny_model_dir, snips_slice,
                                                                  tmp_path, capsys):
    data_config = DataConfig(str(snips_slice))
    cfg = MultitaskConfig(model=tiny_model_dir, epochs=1, max_length=48, precision="fp32", seed=3)
    raw = task_data.load_raw(data_config, "multitask")
    tokenizer = load_tokenizer(tiny_model_dir)
    data = task_data.encode(raw, tokenizer, trainable="multitask", model=tiny_model_dir,
                            max_length=48)
    torch.manual_seed(3)
    model = build_multitask_model(cfg, num_labels=data.num_labels, num_tags=data.num_tags).eval()
    with torch.no_grad():  # predict more than "O": a random slot head on a random encoder
        model.slot_head[-1].weight.mul_(50.0)
    folder = save_multitask_model(tmp_path / "model", model, config=cfg.to_dict(),
                                  label_map=label_maps(data), tokenizer=tokenizer)
    expected = evaluate_multitask(model, data.splits["test"], data, batch_size=64,
                                  device=torch.device("cpu"), prefix="test")

    out = tmp_path / "scores.json"
    assert main(["evaluate", str(folder), "--data", str(snips_slice), "--perturb",
                 "typo:0.2,delete:0.1", "--device", "cpu", "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    saved = json.loads(out.read_text())
    assert saved["kind"] == "multitask" and saved["examples"] == len(data.splits["test"])
    for key in ("intent_accuracy", "slot_f1", "sentence_accuracy"):
        assert saved["scores"][key] == pytest.approx(expected.metrics[f"test_{key}"], abs=1e-9)
    assert {k: v["f1"] for k, v in saved["per_type"].items()} == pytest.approx(
        {k: s.f1 for k, s in expected.per_type.items()})
    assert expected.metrics["test_slot_f1"] > 0  # the check above compared real spans
    # the intent accuracy under each perturbation, clean first (the scores' own)
    rows = saved["rows"]
    assert [r["perturbation"] for r in rows] == ["clean", "typo:0.2", "delete:0.1",
                                                 "all combined (typo:0.2,delete:0.1)"]
    assert rows[0]["accuracy"] == pytest.approx(saved["scores"]["intent_accuracy"])
    assert rows[1]["changed"] > 0
    for line in ("intent accuracy", "slot F1 (micro, exact spans)", "sentence accuracy",
                 "slot type", "intent accuracy under perturbation:"):
        assert line in printed


def test_evaluate_refuses_a_multitask_folder_on_text_only_data_and_the_reverse(
        tiny_model_dir, snips_slice, tmp_path, capsys):
    cfg = MultitaskConfig(model=tiny_model_dir, epochs=1, max_length=48, precision="fp32")
    model = build_multitask_model(cfg, num_labels=2, num_tags=3)
    folder = save_multitask_model(tmp_path / "model", model, config=cfg.to_dict(),
                                  label_map={"names": ["a", "b"], "raw_values": ["a", "b"],
                                             "tag_names": ["O", "B-x", "I-x"]},
                                  tokenizer=load_tokenizer(tiny_model_dir))
    assert main(["evaluate", str(folder), "--data", "demo", "--perturb", "typo:0.1"]) == 2
    assert "holds a multi-task model, but --data 'demo' holds texts with labels only" in \
        capsys.readouterr().err
    assert main(["evaluate", str(folder), "--data", str(snips_slice), "--perturb", "typo:0.1"]) == 2
    assert "intent(s) the model never learned" in capsys.readouterr().err
