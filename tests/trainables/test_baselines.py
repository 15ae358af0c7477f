"""The cheap baselines (trainables/tfidf.py, trainables/bilstm.py, trainables/baselines.py,
trainables/baseline_export.py): they report what every family reports, TF-IDF separates what is
separable, the model folder predicts what the trained model predicts, bad values are refused, and
a `--trainable tfidf` sweep goes through best, train and predict on the command line."""

import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from trainables.errors import ConfigError, ModelLoadError
from trainables.hparams import BilstmConfig, FinetuneConfig, TfidfConfig

REPORTED = ("val_accuracy", "val_loss", "val_macro_f1", "best_val_accuracy", "best_val_loss",
            "best_val_macro_f1", "best_epoch", "train_loss", "samples_per_s", "epoch_seconds",
            "peak_memory_mb", "params_m", "size_mb", "latency_ms_p50", "latency_ms_p95",
            "throughput_b32", "val_accuracy_perturbed")
REPO = Path(__file__).resolve().parents[2]
TEXTS = ["wake me up at seven", "play some jazz", "what is the weather like in paris",
         "turn off the lights", "remind me to call mum tomorrow"]


def _tfidf(tiny_model_dir, **changes):
    return TfidfConfig.from_dict({"model": tiny_model_dir, "max_length": 64, **changes})


def _bilstm(tiny_model_dir, **changes):
    return BilstmConfig.from_dict({"model": tiny_model_dir, "max_length": 64, "epochs": 2,
                                   "batch_size": 32, "bilstm_embedding_dim": 16,
                                   "bilstm_hidden": 16, **changes})


def test_tfidf_fits_once_and_reports_what_every_family_reports(tiny_model_dir, demo_data, run_trainable):
    reports, model = run_trainable(_tfidf(tiny_model_dir), demo_data)
    assert [r["epoch"] for r in reports] == [1]
    [report] = reports
    assert set(REPORTED) <= set(report)
    assert all(math.isfinite(report[k]) for k in REPORTED)
    assert report["best_epoch"] == 1 and report["best_val_accuracy"] == report["val_accuracy"]
    # the demo intents are word-separable: the baseline is far above chance
    assert report["val_accuracy"] > 2 / demo_data.num_labels
    ids = torch.randint(1000, 2000, (2, 6))
    assert model(ids, torch.ones_like(ids)).shape == (2, demo_data.num_labels)


def _separable(tiny_model_dir, n=200, seed=0):
    """Two classes told apart by one token each (1000 vs 2000), in random filler tokens."""
    from trainables.data import EncodedSplit, TokenizedData
    from trainables.labels import LabelMap

    rng = np.random.default_rng(seed)

    def split(count):
        labels = rng.integers(0, 2, count)
        ids = [np.asarray([101, *rng.integers(3000, 5000, 5), 1000 + 1000 * y, *rng.integers(3000, 5000, 3), 102],
                          dtype=np.int32) for y in labels]
        return EncodedSplit(ids, labels.astype(np.int64))

    return TokenizedData({"train": split(n), "validation": split(n // 2)},
                         LabelMap(names=["a", "b"], raw_values=["a", "b"]), tiny_model_dir, 64, 0)


def test_tfidf_separates_a_trivially_separable_set(tiny_model_dir, run_trainable):
    cfg = _tfidf(tiny_model_dir, perturb_eval=None, deploy_metrics=False, tfidf_c=10.0)
    [report], _ = run_trainable(cfg, _separable(tiny_model_dir))
    assert report["val_accuracy"] >= 0.97 and report["val_loss"] < 0.3


def test_tfidf_features_are_scikit_learns(tiny_model_dir):
    """The served module computes the TF-IDF rows scikit-learn computes for the same n-grams."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    from trainables.tfidf import _key, fit_classifier, ngrams_of

    docs = [[101, 5, 6, 5, 102], [101, 7, 5, 102], [101, 6, 6, 6, 8, 102]]
    cfg = _tfidf(tiny_model_dir, tfidf_ngram_max=2, tfidf_sublinear_tf=True)
    model = fit_classifier(cfg, docs, np.array([0, 1, 0]), 2)
    vectorizer = TfidfVectorizer(analyzer=lambda d: [_key(g) for g in ngrams_of(d, 2)], sublinear_tf=True)
    expected = vectorizer.fit_transform(docs).toarray()
    width = max(map(len, docs))
    ids = torch.tensor([d + [0] * (width - len(d)) for d in docs])
    mask = torch.tensor([[1] * len(d) + [0] * (width - len(d)) for d in docs])
    got = model.features(ids, mask).to_dense().numpy()
    order = [model.vocabulary()[tuple(int(t) for t in key.split())] for key in vectorizer.get_feature_names_out()]
    assert np.allclose(got[:, order], expected, atol=1e-6)


def test_bilstm_reports_every_epoch_and_hands_back_its_best(tiny_model_dir, demo_data, run_trainable):
    from trainables.loops import evaluate

    cfg = _bilstm(tiny_model_dir, epochs=3)
    reports, model = run_trainable(cfg, demo_data)
    assert [r["epoch"] for r in reports] == [1, 2, 3]
    assert all(set(REPORTED) <= set(r) and r["lr"] == cfg.bilstm_lr for r in reports)
    best = max(reports, key=lambda r: r["val_accuracy"])
    assert reports[-1]["best_epoch"] == best["epoch"]
    result = evaluate(model, demo_data.splits["validation"], batch_size=64,
                      pad_token_id=demo_data.pad_token_id, num_labels=demo_data.num_labels,
                      device=torch.device("cpu"))
    assert result.accuracy == reports[-1]["best_val_accuracy"]


def test_bilstm_resume_matches_an_uninterrupted_run(tiny_model_dir, demo_data, tmp_path, run_trainable):
    cfg = _bilstm(tiny_model_dir, perturb_eval=None, deploy_metrics=False)
    full, _ = run_trainable(cfg, demo_data, keep={1: str(tmp_path / "ep1")})
    resumed, _ = run_trainable(cfg, demo_data, resume_dir=str(tmp_path / "ep1"))
    assert [r["epoch"] for r in resumed] == [2]
    assert resumed[0]["val_accuracy"] == full[1]["val_accuracy"]
    assert resumed[0]["train_loss"] == pytest.approx(full[1]["train_loss"], rel=1e-5)


@pytest.mark.parametrize("family", ["tfidf", "bilstm"])
def test_the_model_folder_predicts_what_the_trained_model_predicts(family, tiny_model_dir, demo_data,
                                                                   tmp_path, run_trainable):
    from trainables.data import EncodedSplit, encode_texts
    from trainables.export import save_model
    from trainables.loops import evaluate
    from trainables.models import load_tokenizer
    from tuning.serve.predict import load_model

    cfg = (_tfidf if family == "tfidf" else _bilstm)(tiny_model_dir, perturb_eval=None, deploy_metrics=False)
    _, model = run_trainable(cfg, demo_data)
    tokenizer = load_tokenizer(tiny_model_dir)
    folder = save_model(tmp_path / "model", model, config=cfg.to_dict(),
                        label_map=demo_data.label_map.to_dict(), tokenizer=tokenizer)
    assert (folder / "baseline.safetensors").is_file() and (folder / "README.md").is_file()
    predictor = load_model(folder, device="cpu")
    ids, _ = encode_texts(tokenizer, TEXTS, cfg.max_length)
    split = EncodedSplit(ids, np.zeros(len(ids), dtype=np.int64))
    trained = evaluate(model, split, batch_size=64, pad_token_id=demo_data.pad_token_id,
                       num_labels=demo_data.num_labels, device=torch.device("cpu"))
    assert predictor.predict(TEXTS) == [demo_data.label_map.names[i] for i in trained.predictions]
    # a damaged folder is said to be one
    (folder / "baseline.safetensors").write_bytes(b"torn")
    with pytest.raises(ModelLoadError, match="damaged"):
        load_model(folder, device="cpu")


@pytest.mark.parametrize("make, values, message", [
    (TfidfConfig, {"tfidf_c": 0.0}, r"`tfidf_c` must lie in \(0.0, 1000000.0\], but got 0.0"),
    (TfidfConfig, {"tfidf_class_weight": "even"}, r"`tfidf_class_weight` must be one of \['none', 'balanced'\]"),
    (TfidfConfig, {"stop_epoch": 2}, "`stop_epoch` must be 1 or null for a tfidf trial"),
    (TfidfConfig, {"eval_every": "10"}, "available to fine-tuning trials only"),
    (TfidfConfig, {"lr": 1e-3}, r"\['lr'\] apply to \['contrastive', 'finetune', 'multitask'\]"),
    (BilstmConfig, {"bilstm_layers": 0}, r"`bilstm_layers` must lie in \[1, 8\], but got 0"),
    (FinetuneConfig, {"tfidf_c": 1.0}, r"\['tfidf_c'\] apply to \['tfidf'\] trials only"),
])
def test_bad_values_say_what_where_and_the_rule(make, values, message):
    with pytest.raises(ConfigError, match=message):
        make.from_dict(values)


def test_a_min_df_that_leaves_no_ngram_is_refused(tiny_model_dir, demo_data, run_trainable):
    with pytest.raises(ConfigError, match="`tfidf_min_df` .* leaves no n-gram"):
        run_trainable(_tfidf(tiny_model_dir, tfidf_min_df=100_000), demo_data)


def cli(*args):
    return subprocess.run([sys.executable, "-m", "tuning.cli", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=600, env=dict(os.environ))


def test_a_tfidf_sweep_goes_through_best_train_and_predict(tiny_model_dir, tmp_path):
    storage = str(tmp_path)
    proc = cli("sweep", "--smoke-test", "--trainable", "tfidf", "--name", "tf", "--model", tiny_model_dir,
               "--storage", storage, "--max-length", "64")
    assert proc.returncode == 0, proc.stderr[-3000:]
    best = tmp_path / "best.yaml"
    proc = cli("best", "tf", "-o", str(best), "--storage", storage)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "trainable: tfidf" in best.read_text()
    proc = cli("train", "--config", str(best), "--storage", storage, "--output-dir", str(tmp_path / "model"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "test_accuracy" in proc.stdout
    proc = cli("predict", str(tmp_path / "model"), "wake me up at seven")
    assert proc.returncode == 0, proc.stderr[-3000:]
    label, text = proc.stdout.strip().split("\t")
    assert text == "wake me up at seven" and label
    # the final selection builds hand-over candidates from baseline models too: their seed and
    # cross-config ensembles; a student needs a fine-tuned config, so none is trained
    proc = cli("select", "tf", "--storage", storage, "--smoke-test", "--ensemble", "--cross-config",
               "--distill", "--output-dir", str(tmp_path / "selected"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    said = proc.stdout + proc.stderr
    assert "no distilled student: only fine-tuned classifiers train with a teacher" in said
    assert "| ensemble of the 2 seed models |" in said
    proc = cli("predict", str(tmp_path / "selected" / "model"), "wake me up at seven")
    assert proc.returncode == 0, proc.stderr[-3000:]
