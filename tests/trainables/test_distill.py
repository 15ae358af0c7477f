"""Knowledge distillation: a fine-tuning trial trained as the student of a teacher model folder
(a model or an ensemble). The teacher's probabilities are its softmax, in the student's label
order, computed once and cached in its folder; the student moves toward the teacher; with
``distill_alpha`` 0 it trains exactly as a plain trial; it composes with typo-robust training,
rounds and data-parallel workers; the config refuses what cannot work; and the student is a
normal model folder."""

import dataclasses
import json
import pickle
import shutil

import numpy as np
import pytest
import torch

from trainables import distill, registry
from trainables.encoding import EncodedSplit, collate
from trainables.errors import ConfigError, DataError, ModelLoadError
from trainables.export import load_model, save_ensemble_model, save_model
from trainables.finetune import build_classifier
from trainables.hparams import FinetuneConfig
from trainables.labels import LabelMap
from trainables.losses import soften
from trainables.models import load_tokenizer

CPU = torch.device("cpu")


def _teacher(folder, tiny_model_dir, names, *, seed, sharpness=8.0):
    """A teacher model folder: a random classifier whose head is scaled up, so its predictions
    are confident and unrelated to the labels (a student can only learn them from the teacher)."""
    cfg = FinetuneConfig(model=tiny_model_dir, max_length=64, seed=seed, precision="fp32")
    torch.manual_seed(seed)
    model = build_classifier(cfg, len(names)).eval()
    with torch.no_grad():
        model.head[-1].weight.mul_(sharpness)
    return save_model(folder, model, config=cfg.to_dict(), label_map=LabelMap(list(names), list(names)).to_dict(),
                      tokenizer=load_tokenizer(tiny_model_dir))


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory, tiny_model_dir, _demo_tokenized):
    names = _demo_tokenized.label_map.to_dict()["names"]
    return _teacher(tmp_path_factory.mktemp("teacher") / "model", tiny_model_dir, names, seed=7)


def _names(data):
    return data.label_map.to_dict()["names"]


def _probabilities(folder, data, **kwargs):
    return distill.teacher_probabilities(folder, data.splits["train"], pad_token_id=data.pad_token_id,
                                         label_names=_names(data), device=CPU, **kwargs)


@torch.no_grad()
def _direct_softmax(model, split, pad_token_id):
    ids, mask, _ = collate(split, np.arange(len(split)), pad_token_id)
    return torch.softmax(model.eval()(ids, mask).float(), dim=-1).numpy()


def _student(tiny_config, teacher_dir, **changes):
    return dataclasses.replace(tiny_config, distill_teacher=str(teacher_dir), perturb_eval=None,
                               deploy_metrics=False, **changes)


def _train(cfg, data):
    reports = []
    model = registry.fit_function("finetune")(cfg, data, device=CPU, report=lambda m, w: reports.append(m))
    return reports, model


# --------------------------------------------------------------------------- teacher probabilities


def test_teacher_probabilities_are_its_softmax_in_split_order_and_cached(tmp_path, tiny_model_dir, demo_data,
                                                                         monkeypatch):
    folder = _teacher(tmp_path / "teacher", tiny_model_dir, _names(demo_data), seed=1)
    train = demo_data.splits["train"]
    probs = _probabilities(folder, demo_data, batch_size=16, tokenizer=load_tokenizer(tiny_model_dir))
    assert probs.dtype == np.float32 and probs.shape == (len(train), demo_data.num_labels)
    assert np.allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    expected = _direct_softmax(load_model(folder).model, train, demo_data.pad_token_id)
    assert np.allclose(probs, expected, atol=1e-5)  # bucketed batches, put back in the split's order
    [cached] = list((folder / distill.CACHE_DIR).iterdir())
    assert cached.suffix == ".npy" and np.array_equal(np.load(cached), probs)

    def no_teacher(folder):
        raise AssertionError("the teacher ran again instead of its cached probabilities")

    monkeypatch.setattr(distill, "load_model", no_teacher)
    assert np.array_equal(_probabilities(folder, demo_data), probs)
    # another split (or another label order) is another key
    fewer = EncodedSplit(train.input_ids[:-1], train.labels[:-1])
    assert distill.cache_key(folder, fewer, _names(demo_data)) != cached.stem
    assert distill.cache_key(folder, train, _names(demo_data)[::-1]) != cached.stem
    assert distill.cache_key(folder, train, _names(demo_data)) == cached.stem
    with pytest.raises(AssertionError, match="ran again"):
        distill.teacher_probabilities(folder, fewer, pad_token_id=demo_data.pad_token_id,
                                      label_names=_names(demo_data), device=CPU)


def test_a_damaged_cache_is_computed_again(tmp_path, tiny_model_dir, demo_data):
    folder = _teacher(tmp_path / "teacher", tiny_model_dir, _names(demo_data), seed=1)
    probs = _probabilities(folder, demo_data)
    [cached] = list((folder / distill.CACHE_DIR).iterdir())
    cached.write_bytes(b"torn")
    assert np.array_equal(_probabilities(folder, demo_data), probs)
    assert np.array_equal(np.load(cached), probs)


def test_an_ensemble_teacher_gives_its_members_mean_probabilities(tmp_path, tiny_model_dir, demo_data):
    names = _names(demo_data)
    members = [_teacher(tmp_path / f"m{seed}", tiny_model_dir, names, seed=seed) for seed in (1, 2)]
    ensemble = save_ensemble_model(tmp_path / "ensemble", members)
    train = demo_data.splits["train"]
    mean = np.mean([_direct_softmax(load_model(m).model, train, demo_data.pad_token_id) for m in members], axis=0)
    assert np.allclose(_probabilities(ensemble, demo_data), mean, atol=1e-5)


def test_the_teachers_label_order_is_followed_and_another_label_set_refused(tmp_path, tiny_model_dir, demo_data):
    names = _names(demo_data)
    reordered = _teacher(tmp_path / "reordered", tiny_model_dir, names[::-1], seed=3)
    own = _direct_softmax(load_model(reordered).model, demo_data.splits["train"], demo_data.pad_token_id)
    assert np.allclose(_probabilities(reordered, demo_data), own[:, ::-1], atol=1e-5)

    other = _teacher(tmp_path / "other", tiny_model_dir, names[:-1] + ["reboot"], seed=3)
    with pytest.raises(DataError, match=r"other.*other labels.*'reboot'.*" + names[-1]):
        _probabilities(other, demo_data)


def test_a_teacher_with_another_tokenizer_or_no_folder_is_refused(tmp_path, teacher_dir, demo_data):
    class OtherTokenizer:
        def get_vocab(self):
            return {"[PAD]": 0, "hello": 1}

    with pytest.raises(ConfigError, match=r"another vocabulary.*\(2 pieces\)"):
        _probabilities(teacher_dir, demo_data, tokenizer=OtherTokenizer())
    with pytest.raises(ConfigError, match="`distill_teacher` .*missing.* does not exist"):
        _probabilities(tmp_path / "missing", demo_data)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match="`distill_teacher` .*empty.* cannot be loaded: .*not a model folder"):
        _probabilities(tmp_path / "empty", demo_data)


# --------------------------------------------------------------------------- config


@pytest.mark.parametrize("changes, message", [
    ({"rdrop_alpha": 1.0}, r"`distill_teacher` .* cannot be combined with `rdrop_alpha` \(1.0\)"),
    ({"supcon_lambda": 0.5}, r"cannot be combined .* `supcon_lambda` \(0.5\).*take no teacher"),
    ({"distill_alpha": 1.5}, r"`distill_alpha` must lie in \[0.0, 1.0\], but got 1.5"),
    ({"distill_temperature": 0.0}, r"`distill_temperature` must lie in \(0.0, 20.0\], but got 0.0"),
])
def test_the_config_refuses_what_cannot_work(tiny_config, changes, message):
    with pytest.raises(ConfigError, match=message):
        FinetuneConfig.from_dict({**tiny_config.to_dict(), "distill_teacher": "teacher", **changes})


def test_defaults_are_off_and_a_missing_teacher_fails_the_trial_naming_it(tiny_config, demo_data, tmp_path):
    assert (tiny_config.distill_teacher, tiny_config.distill_temperature, tiny_config.distill_alpha) == \
        (None, 2.0, 0.5)
    # a config naming a folder this machine lacks still builds: a student's saved config must load
    cfg = _student(tiny_config, tmp_path / "gone", epochs=1)
    with pytest.raises(ConfigError, match=r"`distill_teacher` '.*gone' does not exist"):
        _train(cfg, demo_data)
    from trainables.finetune import fit

    with pytest.raises(ConfigError, match="trainables.distill.fit"):
        fit(cfg, demo_data, device=CPU, report=lambda m, w: None)


# --------------------------------------------------------------------------- training


def _kl_to_teacher(model, teacher_probs, data, temperature):
    student = _direct_softmax(model, data.splits["train"], data.pad_token_id)
    target = soften(torch.from_numpy(teacher_probs), temperature)
    log_student = torch.log_softmax(torch.log(torch.from_numpy(student)) / temperature, dim=-1)
    return float((target * (torch.log(target.clamp_min(1e-30)) - log_student)).sum(-1).mean())


def test_the_student_moves_toward_the_teacher_and_alpha_zero_is_plain_cross_entropy(
        tiny_config, teacher_dir, demo_data):
    plain_reports, _ = _train(dataclasses.replace(tiny_config, perturb_eval=None, deploy_metrics=False),
                              demo_data)
    labels_only, model_0 = _train(_student(tiny_config, teacher_dir, distill_alpha=0.0), demo_data)
    # distillation changes training through the loss only: at alpha 0 every number is the plain run's
    for plain, student in zip(plain_reports, labels_only, strict=True):
        for key in ("train_loss", "val_loss", "val_accuracy"):
            assert student[key] == plain[key], key
    assert "distill_teacher_seconds" not in plain_reports[0]
    assert all(r["distill_teacher_seconds"] >= 0 for r in labels_only)

    teacher_only, model_1 = _train(_student(tiny_config, teacher_dir, distill_alpha=1.0), demo_data)
    probs = _probabilities(teacher_dir, demo_data)
    assert _kl_to_teacher(model_1, probs, demo_data, 2.0) < 0.8 * _kl_to_teacher(model_0, probs, demo_data, 2.0)
    assert np.isfinite(teacher_only[-1]["train_loss"])


def test_distillation_composes_with_typo_noise_and_rounds(tiny_config, teacher_dir, demo_data):
    noisy, _ = _train(_student(tiny_config, teacher_dir, epochs=1, perturb_train="typo:0.2",
                               perturb_train_prob=1.0), demo_data)
    clean, _ = _train(_student(tiny_config, teacher_dir, epochs=1), demo_data)
    assert len(noisy) == 1 and np.isfinite(noisy[0]["train_loss"])
    assert noisy[0]["train_loss"] != clean[0]["train_loss"]  # it trained on the perturbed texts
    rounds, _ = _train(_student(tiny_config, teacher_dir, epochs=1, eval_every="5"), demo_data)
    assert len(rounds) == 3 and all(np.isfinite(r["train_loss"]) for r in rounds)


def test_the_student_is_a_model_folder_that_loads_without_its_teacher(tmp_path, tiny_config, tiny_model_dir,
                                                                       demo_data):
    teacher = _teacher(tmp_path / "teacher", tiny_model_dir, _names(demo_data), seed=5)
    cfg = _student(tiny_config, teacher, epochs=1)
    _, model = _train(cfg, demo_data)
    folder = save_model(tmp_path / "student", model, config=cfg.to_dict(),
                        label_map=demo_data.label_map.to_dict(), tokenizer=load_tokenizer(tiny_model_dir))
    shutil.rmtree(teacher)
    loaded = load_model(folder)
    assert loaded.kind == "single" and loaded.config["distill_teacher"] == str(teacher)
    assert json.loads((folder / "tunebert.json").read_text())["config"]["distill_alpha"] == 0.5
    ids, mask, _ = collate(demo_data.splits["validation"], np.arange(8), demo_data.pad_token_id)
    with torch.no_grad():
        assert torch.allclose(loaded.model(ids, mask), model.eval()(ids, mask), atol=1e-5)


_WORKER = """
import json, pickle, sys
import torch
import torch.distributed as dist
from trainables import distill
from trainables.runtime import set_threads

rank, size, port, data_file, cfg_file, out = sys.argv[1:7]
rank, size = int(rank), int(size)
set_threads(1)
if size > 1:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=size)
data, cfg = pickle.load(open(data_file, "rb")), pickle.load(open(cfg_file, "rb"))
reports = []
distill.fit(cfg, data, device=torch.device("cpu"), report=lambda metrics, save: reports.append(metrics))
json.dump(reports, open(out, "w"))
if size > 1:
    dist.destroy_process_group()
"""


@pytest.mark.slow
def test_two_gloo_workers_distil_as_one_worker(tmp_path, tiny_config, teacher_dir, demo_data,
                                               gloo_workers):
    """Each worker trains on its part of every global batch with the rows of the teacher's
    probabilities its examples index: the loss curve is one worker's."""
    cfg = _student(tiny_config, teacher_dir, epochs=1, batch_size=16, classifier_dropout=0.0,
                   hidden_dropout=0.0, attention_dropout=0.0, distill_alpha=0.7)
    data_file, cfg_file = tmp_path / "data.pkl", tmp_path / "cfg.pkl"
    data_file.write_bytes(pickle.dumps(demo_data.without_test()))
    cfg_file.write_bytes(pickle.dumps(cfg))
    [one] = gloo_workers(_WORKER, 1, data_file, cfg_file)
    two = gloo_workers(_WORKER, 2, data_file, cfg_file)
    for key in ("train_loss", "val_loss"):
        for worker in two:
            assert [r[key] for r in worker] == pytest.approx([r[key] for r in one], rel=1e-4, abs=1e-5), key
