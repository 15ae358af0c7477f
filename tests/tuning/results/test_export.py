"""The handed-over model: a self-contained Hugging Face style folder (``trainables.export``) that
loads with no sweep, no Ray, no MLflow and no base encoder; the same model as an MLflow pyfunc
model (``tuning.serve.mlflow_model``), registered with its lineage, served by ``mlflow models serve``, and
predicted from by ``tunebert predict`` through ``runs:/`` and ``models:/`` URIs.

The models are tiny classifiers whose encoder weights are moved away from the base encoder's, so
a folder that silently read its base encoder again would answer differently."""

import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from trainables.data import DataConfig, LabelMap
from trainables.errors import ConfigError, ModelLoadError
from trainables.export import LoadedModel, load_model as load_folder, save_ensemble_model, save_model
from tuning.cli import main
from tuning.serve.predict import Predictor, load_model

TEXTS = ["wake me up at seven", "play some jazz", "will it rain tomorrow in berlin", "hi",
         "turn the volume up " * 30]  # the last one is longer than max_length
LABELS = LabelMap.from_labels(["weather", "music", "alarm"])
LINEAGE = {"sweep": "intents", "trial_id": "abc_00001", "data_fingerprint": "sha256:0123",
           "kind": "single", "data": "demo"}


def _classifier(base: Path, seed: int, **changes):
    """(config, model): a classifier on the encoder in ``base``, its encoder weights moved by a
    seeded random step (so they are not the base encoder's) and a random head."""
    from trainables.finetune import build_classifier
    from trainables.hparams import FinetuneConfig

    cfg = FinetuneConfig(model=str(base), epochs=1, max_length=16, precision="fp32", seed=seed,
                         **changes)
    torch.manual_seed(seed)
    model = build_classifier(cfg, len(LABELS)).eval()
    with torch.no_grad():
        for param in model.encoder.parameters():
            param.add_(0.05 * torch.randn_like(param))
    return cfg, model


def _in_memory(model, cfg, tokenizer) -> Predictor:
    """What the model answers before it is saved."""
    return Predictor(LoadedModel(model, cfg.to_dict(), LABELS.to_dict(), tokenizer, "single",
                                 Path(".")), device="cpu", batch_size=2)


@pytest.fixture
def base(tiny_model_dir, tmp_path) -> Path:
    """A copy of the tiny base encoder, which a test may take away."""
    return Path(shutil.copytree(tiny_model_dir, tmp_path / "base-encoder"))


def _take_away(base: Path, monkeypatch) -> None:
    base.rename(base.with_name("base-encoder-gone"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.mark.parametrize("changes", [dict(pooling="mean", head="mlp", head_hidden=8),
                                     dict(pooling="cls", head="linear")])
def test_a_saved_model_predicts_the_same_without_its_base_encoder(base, tmp_path, monkeypatch,
                                                                  changes):
    from trainables.models import load_tokenizer

    cfg, model = _classifier(base, 1, **changes)
    tokenizer = load_tokenizer(str(base))
    expected = _in_memory(model, cfg, tokenizer).predict_proba(TEXTS)
    folder = save_model(tmp_path / "model", model, config=cfg.to_dict(),
                        label_map=LABELS.to_dict(), tokenizer=tokenizer,
                        metrics={"val_accuracy": 0.75})
    names = {p.name for p in folder.iterdir()}
    assert {"config.json", "model.safetensors", "head.safetensors", "label_map.json",
            "tunebert.json", "README.md", "tokenizer_config.json"} <= names
    assert not [n for n in names if n.endswith((".pt", ".bin", ".pkl"))]  # no pickles
    meta = json.loads((folder / "tunebert.json").read_text())
    assert (meta["pooling"], meta["head"], meta["max_length"], meta["num_labels"]) == \
        (changes["pooling"], changes["head"], 16, 3)
    assert meta["config"] == cfg.to_dict()
    card = (folder / "README.md").read_text()
    assert "`alarm`, `music`, `weather`" in card and "load_model" in card and "0.7500" in card

    _take_away(base, monkeypatch)
    predictor = load_model(folder, device="cpu", batch_size=2)
    assert predictor.kind == "single" and predictor.labels == ["alarm", "music", "weather"]
    np.testing.assert_array_equal(predictor.predict_proba(TEXTS), expected)
    # plain Hugging Face reads the encoder and the tokenizer too
    from transformers import AutoModel, AutoTokenizer

    assert AutoTokenizer.from_pretrained(folder)("hi")["input_ids"] == tokenizer("hi")["input_ids"]
    encoder = AutoModel.from_pretrained(folder)
    torch.testing.assert_close(encoder.embeddings.word_embeddings.weight,
                               model.encoder.embeddings.word_embeddings.weight)


def test_an_ensemble_of_saved_models_round_trips_without_its_base_encoder(base, tmp_path,
                                                                          monkeypatch):
    from trainables.models import load_tokenizer

    tokenizer = load_tokenizer(str(base))
    members, expected = [], []
    for seed in (1, 2):
        cfg, model = _classifier(base, seed)
        expected.append(_in_memory(model, cfg, tokenizer).predict_proba(TEXTS))
        members.append(save_model(tmp_path / f"seed-{seed}", model, config=cfg.to_dict(),
                                  label_map=LABELS.to_dict(), tokenizer=tokenizer))
    folder = save_ensemble_model(tmp_path / "ensemble", members, weights=[3, 1])
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "ensemble.json", "member-0",
                                                        "member-1"]
    assert "Ensemble of 2" in (folder / "README.md").read_text()
    _take_away(base, monkeypatch)
    predictor = load_model(folder, device="cpu")
    assert predictor.kind == "ensemble"
    np.testing.assert_allclose(predictor.predict_proba(TEXTS),
                               0.75 * expected[0] + 0.25 * expected[1], rtol=0, atol=1e-6)


def test_a_contrastive_model_hands_over_its_classifier(base, tmp_path):
    from trainables.contrastive import ContrastiveModel
    from trainables.models import load_tokenizer

    cfg, model = _classifier(base, 3)
    tokenizer = load_tokenizer(str(base))
    folder = save_model(tmp_path / "model", ContrastiveModel(model, 8), config=cfg.to_dict(),
                        label_map=LABELS.to_dict(), tokenizer=tokenizer)
    np.testing.assert_array_equal(load_model(folder, device="cpu", batch_size=2).predict_proba(TEXTS),
                                  _in_memory(model, cfg, tokenizer).predict_proba(TEXTS))


def test_damaged_or_foreign_folders_are_refused_with_what_to_do(base, tmp_path):
    from trainables.models import load_tokenizer

    cfg, model = _classifier(base, 1)
    folder = save_model(tmp_path / "model", model, config=cfg.to_dict(),
                        label_map=LABELS.to_dict(), tokenizer=load_tokenizer(str(base)))
    with pytest.raises(FileExistsError, match="not an empty folder"):
        save_model(folder, model, config=cfg.to_dict(), label_map=LABELS.to_dict(),
                   tokenizer=None)
    (folder / "head.safetensors").unlink()
    with pytest.raises(ModelLoadError, match="head.safetensors missing"):
        load_folder(folder)
    meta = json.loads((folder / "tunebert.json").read_text())
    (folder / "tunebert.json").write_text(json.dumps({**meta, "format_version": 99}))
    with pytest.raises(ModelLoadError, match="format version 99.*upgrade tunebert"):
        load_folder(folder)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("hello")
    with pytest.raises(ModelLoadError, match="is not a model folder: it has no tunebert.json"):
        load_folder(tmp_path / "other")


# --------------------------------------------------------------------------- MLflow


@pytest.fixture(scope="module")
def logged(tmp_path_factory, tiny_model_dir):
    """One model folder logged as an MLflow model of a run in a SQLite store and registered:
    (store URI, run id, LoggedModelRef, what the model answers)."""
    from mlflow.tracking import MlflowClient

    from trainables.models import load_tokenizer
    from tuning import tracking

    root = tmp_path_factory.mktemp("mlflow-model")
    base = Path(shutil.copytree(tiny_model_dir, root / "base-encoder"))
    cfg, model = _classifier(base, 1)
    tokenizer = load_tokenizer(str(base))
    expected = _in_memory(model, cfg, tokenizer)
    folder = save_model(root / "model", model, config=cfg.to_dict(), label_map=LABELS.to_dict(),
                        tokenizer=tokenizer)
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(uri)
    run_id = client.create_run(client.create_experiment("export")).info.run_id
    before = os.environ.get("MLFLOW_TRACKING_URI")
    ref = tracking.log_model(uri, run_id, str(folder), "model", register_as="intent-classifier",
                             lineage=tracking.lineage_tags(run_id=run_id, **LINEAGE))
    assert os.environ.get("MLFLOW_TRACKING_URI") == before  # the process-wide URI is put back
    client.set_terminated(run_id)
    shutil.rmtree(base)  # served and loaded models never need it
    return uri, run_id, ref, expected


def test_the_logged_pyfunc_model_predicts_labels_and_on_request_probabilities(logged,
                                                                              monkeypatch):
    import mlflow.pyfunc

    uri, run_id, ref, expected = logged
    assert ref.uri == f"runs:/{run_id}/model"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    model = mlflow.pyfunc.load_model(ref.uri)
    assert model.predict(["wake me up at seven"]) == expected.predict(["wake me up at seven"])
    assert model.predict(pd.DataFrame({"text": TEXTS})) == expected.predict(TEXTS)
    proba = model.predict(TEXTS, params={"proba": True, "batch_size": 2})
    assert list(proba.columns) == ["alarm", "music", "weather"]
    np.testing.assert_allclose(proba.to_numpy(), expected.predict_proba(TEXTS), rtol=0, atol=1e-6)
    params = {p.name: p.default for p in model.metadata.get_params_schema().params}
    assert params == {"proba": False, "batch_size": 64}
    assert model.metadata.get_input_schema().input_types()[0].name == "string"
    assert model.metadata.saved_input_example_info is not None  # an input example was logged


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def test_a_logged_model_holds_no_pickle_and_loads_where_pickles_are_refused(logged, tmp_path,
                                                                             monkeypatch):
    """Logged "from code": no pickled object in the model, MLflow's own warning about pickled
    models not fired (nor silenced), and the model loads with MLflow's pickle loading turned off."""
    import mlflow.artifacts
    import mlflow.pyfunc
    from mlflow.models import Model
    from mlflow.tracking import MlflowClient

    from tuning import tracking

    uri, _, _, expected = logged
    folder = Path(uri.removeprefix("sqlite:///")).parent / "model"  # the fixture's model folder
    client = MlflowClient(uri)
    run_id = client.create_run(client.get_experiment_by_name("export").experiment_id).info.run_id
    records = _Records()
    mlflow_log = logging.getLogger("mlflow")  # MLflow's loggers do not propagate to the root
    mlflow_log.addHandler(records)
    try:
        ref = tracking.log_model(uri, run_id, str(folder), "model")
    finally:
        mlflow_log.removeHandler(records)
    assert not [m for m in records.messages if "CloudPickle" in m or "python_model" in m]

    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=ref.uri,
                                                     dst_path=str(tmp_path / "downloaded")))
    files = [p.relative_to(local).as_posix() for p in local.rglob("*") if p.is_file()]
    assert "MLmodel" in files
    assert not [f for f in files if any(s in f.lower() for s in (".pkl", ".pickle", "cloudpickle"))]
    flavor = Model.load(str(local / "MLmodel")).flavors["python_function"]
    assert "python_model" not in flavor  # the key of a pickled python_model
    code = local / Path(flavor["model_code_path"]).name
    assert code.read_text() == tracking.MODEL_CODE.read_text()

    monkeypatch.setenv("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", "false")
    model = mlflow.pyfunc.load_model(str(local))
    assert model.predict(TEXTS) == expected.predict(TEXTS)


def test_register_model_creates_a_version_with_lineage_tags(logged):
    from mlflow.tracking import MlflowClient

    uri, run_id, ref, expected = logged
    assert ref.registered_uri == f"models:/intent-classifier/{ref.registered_version}"
    version = MlflowClient(uri).get_model_version("intent-classifier", ref.registered_version)
    assert version.run_id == run_id
    assert {k: version.tags.get(k) for k in ("tunebert.sweep", "tunebert.trial_id",
                                             "tunebert.run_id", "tunebert.data_fingerprint")} == {
        "tunebert.sweep": "intents", "tunebert.trial_id": "abc_00001", "tunebert.run_id": run_id,
        "tunebert.data_fingerprint": "sha256:0123"}


def test_tunebert_predict_reads_runs_and_models_uris(logged, capsys):
    uri, run_id, ref, expected = logged
    for source in (ref.uri, ref.registered_uri, "models:/intent-classifier@none"):
        if source.endswith("@none"):
            assert main(["predict", source, "hi", "--tracking-uri", uri]) == 2
            assert "cannot download the model models:/intent-classifier@none" in \
                capsys.readouterr().err
            continue
        assert main(["predict", source, *TEXTS[:2], "--tracking-uri", uri]) == 0
        lines = capsys.readouterr().out.splitlines()
        assert lines == [f"{label}\t{text}" for label, text
                         in zip(expected.predict(TEXTS[:2]), TEXTS[:2])]
    assert main(["predict", f"runs:/{'0' * 32}/model", "hi", "--tracking-uri", uri]) == 2
    assert "cannot download the model runs:/" in capsys.readouterr().err


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _post(url: str, body: dict) -> dict:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=120) as response:
        return json.loads(response.read())


@pytest.mark.slow
def test_mlflow_models_serve_answers_with_labels(logged, tmp_path):
    uri, run_id, ref, expected = logged
    port = _free_port()
    log = (tmp_path / "serve.log").open("w")
    venv_bin = Path(sys.executable).parent  # the serving command runs uvicorn from there
    proc = subprocess.Popen(
        [str(venv_bin / "mlflow"), "models", "serve", "-m", ref.uri, "--env-manager", "local",
         "-h", "127.0.0.1", "-p", str(port)],
        env={**os.environ, "MLFLOW_TRACKING_URI": uri,
             "PATH": f"{venv_bin}{os.pathsep}{os.environ.get('PATH', '')}"},
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.time() + 900
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2)
                break
            except OSError:
                assert proc.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
                assert time.time() < deadline, (tmp_path / "serve.log").read_text()[-3000:]
                time.sleep(1)
        url = f"http://127.0.0.1:{port}/invocations"
        answer = _post(url, {"inputs": ["wake me up at seven", "play some jazz"]})
        assert answer == {"predictions": expected.predict(["wake me up at seven", "play some jazz"])}
        answer = _post(url, {"dataframe_split": {"columns": ["text"], "data": [["hi"]]},
                             "params": {"proba": True}})
        (row,) = answer["predictions"]
        np.testing.assert_allclose([row[label] for label in expected.labels],
                                   expected.predict_proba(["hi"])[0], rtol=0, atol=1e-6)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=30)
        except ProcessLookupError:  # it had exited
            pass
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


# --------------------------------------------------------------------------- the commands that hand models over


def test_train_hands_over_a_model_folder_and_logs_and_registers_it(tiny_model_dir, tmp_path,
                                                                   mlflow_uri):
    from mlflow.tracking import MlflowClient

    from trainables.data import data_fingerprint, load_raw_splits
    from tuning.results.train import train_config

    config = {"model": tiny_model_dir, "max_length": 32, "epochs": 1, "batch_size": 32}
    out = tmp_path / "model"
    outcome = train_config(config, DataConfig("demo"), tracking_uri=mlflow_uri,
                           max_train_examples=32, output_dir=str(out), register_model="demo-intents",
                           tags={"tunebert.from_sweep": "s1", "tunebert.from_trial_id": "t1"})
    assert outcome.checkpoint_dir == str(out) and (out / "tunebert.json").is_file()
    assert outcome.model_uri == f"runs:/{outcome.run_id}/model"
    assert outcome.registered_uri == "models:/demo-intents/1"
    client = MlflowClient(mlflow_uri)
    assert client.get_run(outcome.run_id).info.status == "FINISHED"
    version = client.get_model_version("demo-intents", "1")
    assert version.run_id == outcome.run_id
    assert version.tags["tunebert.sweep"] == "s1" and version.tags["tunebert.trial_id"] == "t1"
    assert version.tags["tunebert.data_fingerprint"] == \
        data_fingerprint(load_raw_splits(DataConfig("demo")))
    folder, logged = load_model(out, device="cpu"), load_model(outcome.model_uri,
                                                               tracking_uri=mlflow_uri,
                                                               device="cpu")
    np.testing.assert_array_equal(folder.predict_proba(TEXTS), logged.predict_proba(TEXTS))
    # a second run replaces the earlier model; a folder holding other things is refused
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="holds something other than a model"):
        train_config(config, DataConfig("demo"), tracking_uri=mlflow_uri, max_train_examples=32,
                     output_dir=str(tmp_path / "busy"))


def test_selection_hands_over_an_ensemble_folder_and_registers_it(tiny_model_dir, tmp_path,
                                                                  mlflow_uri, monkeypatch):
    """Selection's hand-over, without Ray: the sweep's trial list is given (one trial) instead of
    run, and the ensemble is made to win the comparison (which test_select checks for real); the
    seed trainings, the ensemble folder, the logging and the registry are real."""
    from mlflow.tracking import MlflowClient

    from tuning.tracking import best

    from tuning.results import handover
    from tuning.results.selection import final_selection

    config = {"trainable": "finetune", "model": tiny_model_dir, "max_length": 32, "epochs": 1,
              "batch_size": 32, "seed": 0}
    client = MlflowClient(mlflow_uri)
    client.create_experiment("fake-sweep")
    trial = best.TrialRun("r0", "trial_0", "finetune", config,
                          {"val_accuracy": 0.5, "val_loss": 1.0}, "", "FINISHED")
    monkeypatch.setattr(best, "top_k", lambda *args, **kwargs: [trial])
    # patched where the hand-over looks it up
    monkeypatch.setattr(handover, "ensemble_wins", lambda ensemble, members, mode: True)
    out = tmp_path / "selected"
    result = final_selection("fake-sweep", top_k=1, seeds=2, metric="val_loss", mode="max",
                             tracking_uri=mlflow_uri, storage=str(tmp_path),
                             data=DataConfig("demo"), max_train_examples=32, output_dir=str(out),
                             ensemble=True, register_model="selected-intents")
    handed = Path(result.model_dir)
    assert result.handed_over == "ensemble" and handed == (out / "model").resolve()
    assert (handed / "ensemble.json").is_file() and (handed / "README.md").is_file()
    for member in ("member-0", "member-1"):
        assert (handed / member / "tunebert.json").is_file()
    for seed in (1, 2):  # fresh seeds: the trial's own (0) would repeat its sweep run
        assert (out / f"seed-{seed}" / "tunebert.json").is_file()
    version = client.get_model_version("selected-intents", "1")
    assert version.run_id == result.run_id
    assert version.tags["tunebert.trial_id"] == "trial_0"
    assert version.tags["tunebert.sweep"] == "fake-sweep"
    assert version.tags["tunebert.model_kind"] == "ensemble"
    here = load_model(handed, device="cpu")
    there = load_model(f"runs:/{result.run_id}/handed_over_model", tracking_uri=mlflow_uri,
                       device="cpu")
    np.testing.assert_array_equal(here.predict_proba(TEXTS), there.predict_proba(TEXTS))
    seed_run = result.test[0]["run_id"]
    assert load_model(f"runs:/{seed_run}/model", tracking_uri=mlflow_uri, device="cpu").kind == \
        "single"
