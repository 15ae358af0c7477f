"""Deployment metrics (``trainables.deploy``) and the size/speed trade-offs a sweep can search:
``num_layers`` (a truncated encoder), ``quantize`` (dynamic int8), reported by every fine-tuning
trial and kept by the model folder. Behaviour only: no test asserts how fast anything is."""

import json

import pytest
import torch
from torch import nn

from trainables.deploy import (PeakMemory, deployment_metrics, latency_ms, parameter_count,
                               probe_batch, serialized_bytes, throughput)
from trainables.errors import ConfigError
from trainables.hparams import HPARAMS, FinetuneConfig
from trainables.models import (Int8Classifier, TextClassifier, load_encoder, load_tokenizer,
                               num_encoder_layers, quantize_int8)

DEPLOY_METRICS = {"params_m", "size_mb", "latency_ms_p50", "latency_ms_p95", "throughput_b32",
                  "latency_threads"}


def _classifier(tiny_model_dir, num_labels=3, **kwargs) -> TextClassifier:
    torch.manual_seed(0)
    return TextClassifier(load_encoder(tiny_model_dir, **kwargs), num_labels, pooling="mean",
                          head="linear", head_hidden=8, dropout=0.1).eval()


def _tiny_bert_parameters(layers: int, num_labels: int) -> int:
    """By hand, from conftest's BertConfig: vocab 30522, hidden 32, intermediate 64, 128
    positions, 2 token types; no pooler."""
    vocab, hidden, inner, positions = 30522, 32, 64, 128
    embeddings = (vocab + positions + 2) * hidden + 2 * hidden            # + LayerNorm
    attention = 4 * (hidden * hidden + hidden) + 2 * hidden               # q, k, v, out + LN
    feed_forward = (hidden * inner + inner) + (inner * hidden + hidden) + 2 * hidden
    head = hidden * num_labels + num_labels
    return embeddings + layers * (attention + feed_forward) + head


# --------------------------------------------------------------------------- sizes


def test_parameter_count_is_every_element_of_every_parameter(tiny_model_dir):
    model = _classifier(tiny_model_dir)
    model.encoder.embeddings.word_embeddings.weight.requires_grad_(False)  # frozen ones count too
    assert parameter_count(model) == _tiny_bert_parameters(2, 3)
    metrics = deployment_metrics(model, parameters=parameter_count(model))
    assert metrics["params_m"] == pytest.approx(_tiny_bert_parameters(2, 3) / 1e6)
    assert set(metrics) == {"params_m", "size_mb"}  # no probe: nothing timed


def test_size_is_the_saved_state_dicts_bytes(tiny_model_dir, tmp_path):
    model = _classifier(tiny_model_dir)
    path = tmp_path / "model.pt"
    with open(path, "wb") as f:  # a file object, like the in-memory buffer: same archive name
        torch.save(model.state_dict(), f)
    assert serialized_bytes(model) == path.stat().st_size
    size_mb = deployment_metrics(model, parameters=1)["size_mb"]
    assert size_mb == path.stat().st_size / 1e6
    assert size_mb > parameter_count(model) * 4 / 1e6  # fp32: at least 4 bytes a parameter


# --------------------------------------------------------------------------- timings


def test_probe_batch_is_fixed_texts_padded_to_max_length(tiny_model_dir):
    tokenizer = load_tokenizer(tiny_model_dir)
    ids, mask = probe_batch(tokenizer, 24)
    assert ids.shape == mask.shape == (32, 24)
    assert mask[:, -1].sum() == 0 and mask[:, 0].all()  # short texts: padded to the end
    again, _ = probe_batch(tokenizer, 24)
    assert torch.equal(ids, again)
    assert torch.equal(ids[0], ids[8])  # the texts repeat to fill the batch


def test_latency_and_throughput_are_sane(tiny_model_dir):
    model = _classifier(tiny_model_dir)
    ids, mask = probe_batch(load_tokenizer(tiny_model_dir), 16)
    latency = latency_ms(model, ids, mask, runs=7, warmup=1)
    assert 0 < latency["latency_ms_p50"] <= latency["latency_ms_p95"]
    assert throughput(model, ids, mask, batches=2) > 0
    with pytest.raises(ValueError, match="`runs` must be at least 1, but got 0"):
        latency_ms(model, ids, mask, runs=0)
    metrics = deployment_metrics(model, parameters=parameter_count(model), probe=(ids, mask))
    assert set(metrics) == DEPLOY_METRICS
    assert metrics["latency_ms_p95"] >= metrics["latency_ms_p50"] > 0
    assert metrics["throughput_b32"] > 0 and metrics["latency_threads"] == torch.get_num_threads()
    assert torch.is_grad_enabled()  # the timings leave autograd as they found it


def test_peak_memory_is_non_negative_and_never_falls():
    memory = PeakMemory(torch.device("cpu"))
    first = memory.mb()
    block = torch.ones(4_000_000)  # 16 MB touched
    second = memory.mb()
    del block
    assert 0 <= first <= second <= memory.mb()


# --------------------------------------------------------------------------- num_layers


def test_num_layers_keeps_exactly_the_bottom_k_pretrained_layers(tiny_model_dir):
    full = load_encoder(tiny_model_dir)
    kept = load_encoder(tiny_model_dir, num_layers=1)
    assert num_encoder_layers(kept) == 1 and len(kept.encoder.layer) == 1
    reference = full.state_dict()
    weights = kept.state_dict()
    assert set(weights) == {k for k in reference if not k.startswith("encoder.layer.1.")}
    for name, value in weights.items():
        assert torch.equal(value, reference[name]), name
    assert parameter_count(_classifier(tiny_model_dir, num_layers=1)) == _tiny_bert_parameters(1, 3)
    assert num_encoder_layers(load_encoder(tiny_model_dir, num_layers=0)) == 2  # 0: all


def test_num_layers_beyond_the_encoder_is_refused_at_build_time(tiny_model_dir):
    from trainables.finetune import build_classifier

    with pytest.raises(ConfigError, match=r"`num_layers` is 3 but model .* has 2 encoder layers; "
                                          r"use 1\.\.2, or 0 for all"):
        build_classifier(FinetuneConfig(model=tiny_model_dir, num_layers=3), 3)
    # freezing and re-initialising count the layers that are kept
    with pytest.raises(ConfigError, match="`freeze_layers` is 2 but model .* has only 1 layers"):
        build_classifier(FinetuneConfig(model=tiny_model_dir, num_layers=1, freeze_layers=2), 3)


# --------------------------------------------------------------------------- quantize


def test_quantize_makes_every_linear_dynamic_int8_and_predicts_close(tiny_model_dir):
    from torch.ao.nn.quantized.dynamic import Linear as DynamicInt8Linear

    model = _classifier(tiny_model_dir)
    linears = sum(type(m) is nn.Linear for m in model.modules())
    int8 = quantize_int8(model)
    assert sum(type(m) is DynamicInt8Linear for m in int8.modules()) == linears
    assert not any(type(m) is nn.Linear for m in int8.modules())
    assert sum(type(m) is nn.Linear for m in model.modules()) == linears  # a copy: fp32 untouched
    ids, mask = probe_batch(load_tokenizer(tiny_model_dir), 16, batch_size=8)
    with torch.no_grad():
        expected = model(ids, mask)
        got = int8(ids, mask)
        # autocast around it (a predictor's bf16 path) is switched off inside: fp32 logits
        with torch.autocast("cpu", dtype=torch.bfloat16):
            under_autocast = int8(ids, mask)
    assert got.dtype == under_autocast.dtype == torch.float32
    assert torch.equal(got, under_autocast)
    assert torch.allclose(got, expected, atol=0.05), (got - expected).abs().max()
    assert int8.to("cuda" if torch.cuda.is_available() else "meta") is int8  # pinned to the CPU
    assert int8(ids, mask).device.type == "cpu"
    assert serialized_bytes(int8) < serialized_bytes(model)


# --------------------------------------------------------------------------- model folder


@pytest.mark.parametrize("quantize", [True, False])
def test_model_folder_keeps_num_layers_and_quantize(tiny_model_dir, tmp_path, quantize):
    from trainables.data import LabelMap
    from trainables.export import load_model, save_model
    from trainables.finetune import build_classifier

    cfg = FinetuneConfig(model=tiny_model_dir, num_layers=1, quantize=quantize, max_length=16,
                         precision="fp32")
    labels = LabelMap.from_labels(["a", "b", "c"])
    torch.manual_seed(0)
    model = build_classifier(cfg, 3).eval()
    folder = save_model(tmp_path / "model", model, config=cfg.to_dict(),
                        label_map=labels.to_dict(), tokenizer=load_tokenizer(tiny_model_dir))
    assert json.loads((folder / "config.json").read_text())["num_hidden_layers"] == 1
    meta = json.loads((folder / "tunebert.json").read_text())
    assert meta["num_layers"] == 1 and meta["quantize"] is quantize
    loaded = load_model(folder)
    assert isinstance(loaded.model, Int8Classifier) is quantize
    classifier = loaded.model.quantized if quantize else loaded.model
    assert num_encoder_layers(classifier.encoder) == 1
    ids, mask = probe_batch(load_tokenizer(tiny_model_dir), 16, batch_size=4)
    expected = quantize_int8(model) if quantize else model
    with torch.no_grad():
        assert torch.allclose(loaded.model(ids, mask), expected(ids, mask), atol=1e-6)
    # `tunebert predict` serves it as it is, bf16 autocast asked for or not
    from tuning.serve.predict import Predictor

    texts = ["wake me up at seven", "play some jazz"]
    proba = Predictor(loaded, device="cpu").predict_proba(texts)
    loaded.config["precision"] = "bf16"
    assert proba.shape == (2, 3) and proba.sum(1) == pytest.approx(1.0, abs=1e-5)
    if quantize:
        assert Predictor(loaded, device="cpu").predict_proba(texts) == pytest.approx(proba)


def test_a_folder_whose_layer_count_disagrees_is_refused(tiny_model_dir, tmp_path):
    from trainables.data import LabelMap
    from trainables.errors import ModelLoadError
    from trainables.export import load_model, save_model
    from trainables.finetune import build_classifier

    cfg = FinetuneConfig(model=tiny_model_dir, max_length=16)
    folder = save_model(tmp_path / "model", build_classifier(cfg, 2), config=cfg.to_dict(),
                        label_map=LabelMap.from_labels(["a", "b"]).to_dict(),
                        tokenizer=load_tokenizer(tiny_model_dir))
    meta = json.loads((folder / "tunebert.json").read_text())
    (folder / "tunebert.json").write_text(json.dumps({**meta, "num_layers": 1}))
    with pytest.raises(ModelLoadError, match="2 layers, but tunebert.json records 1"):
        load_model(folder)


# --------------------------------------------------------------------------- the trainable


def test_finetune_reports_deployment_metrics_with_every_epoch(tiny_config, demo_data, run_trainable):
    """Every epoch carries the model's size and timings (the int8 model's with ``quantize``),
    measured once, and its time and memory; the last epoch adds the int8 model's validation
    scores; ``val_accuracy`` and the best epoch are the fp32 model's, exactly as without either
    setting."""
    from trainables.loops import evaluate

    cfg = tiny_config.replace(epochs=2, quantize=True, precision="fp32")
    reports, model = run_trainable(cfg, demo_data)
    plain, _ = run_trainable(cfg.replace(quantize=False, deploy_metrics=False), demo_data)
    first, last = reports[0], reports[-1]
    for r in reports:
        assert r["epoch_seconds"] > 0 and r["peak_memory_mb"] >= 0
        assert {k: r[k] for k in DEPLOY_METRICS} == {k: first[k] for k in DEPLOY_METRICS}
    assert "val_accuracy_int8" not in first
    assert first["params_m"] == pytest.approx(parameter_count(model) / 1e6)
    assert 0 < first["latency_ms_p50"] <= first["latency_ms_p95"] and first["throughput_b32"] > 0
    assert first["size_mb"] == serialized_bytes(quantize_int8(model)) / 1e6
    assert plain[0]["size_mb"] == serialized_bytes(model) / 1e6 > first["size_mb"]
    int8 = evaluate(quantize_int8(model), demo_data.splits["validation"], batch_size=64,
                    pad_token_id=demo_data.pad_token_id, num_labels=demo_data.num_labels,
                    device=torch.device("cpu"))
    assert last["val_accuracy_int8"] == int8.accuracy
    assert {"val_loss_int8", "val_macro_f1_int8"} <= set(last)
    # ranking and the best epoch do not move
    for key in ("val_accuracy", "val_loss", "best_epoch", "best_val_accuracy"):
        assert [r[key] for r in reports] == [r[key] for r in plain], key
    # deploy_metrics=False: sizes yes, timings no; no int8 scores without quantize
    for r in plain:
        assert {"params_m", "size_mb"} <= set(r)
        assert not {"latency_ms_p50", "throughput_b32", "val_accuracy_int8"} & set(r)


# --------------------------------------------------------------------------- the registry


def test_trade_offs_are_off_by_default_and_searchable_from_a_space_file(tmp_path):
    from search_spaces.finetune import SWEEP_LEVEL, finetune_space
    from search_spaces.overrides import load_space
    from tuning.sweep.search import preview_configs

    assert (HPARAMS["num_layers"].default, HPARAMS["quantize"].default) == (0, False)
    assert HPARAMS["deploy_metrics"].default is True
    assert all(HPARAMS[n].search is None for n in ("num_layers", "quantize", "deploy_metrics"))
    with pytest.raises(ConfigError, match=r"`num_layers` must lie in \[0, 1000\], but got -1"):
        FinetuneConfig(num_layers=-1)
    with pytest.raises(ConfigError, match="`quantize` must be true or false, but got 'yes'"):
        FinetuneConfig.from_dict({"quantize": "yes"})
    path = tmp_path / "space.yaml"
    path.write_text("num_layers: {low: 1, high: 2}\nquantize: [false, true]\n"
                    "deploy_metrics: false\n")
    space = load_space(path, finetune_space(model="m", epochs=2), config_cls=FinetuneConfig,
                       fixed_by_sweep=SWEEP_LEVEL)
    configs = preview_configs(space, n=12, seed=0, presets=[])
    assert {c["num_layers"] for c in configs} == {1, 2}
    assert {c["quantize"] for c in configs} == {False, True}
    assert {c["deploy_metrics"] for c in configs} == {False}


def test_deployment_costs_are_measured_once_per_architecture(tiny_config, demo_data, monkeypatch):
    """A worker Ray reuses for trial after trial times each architecture once: the costs depend
    on the architecture and the threads, not on the weights."""
    from trainables import finetune

    calls = []
    real = finetune.deployment_metrics
    monkeypatch.setattr(finetune, "deployment_metrics", lambda *a, **k: calls.append(1) or real(*a, **k))
    monkeypatch.setattr(finetune, "_COSTS", {})
    cfg = tiny_config.replace(precision="fp32")
    model = finetune.build_classifier(cfg, demo_data.num_labels)
    first = finetune.deployment_costs(cfg, model, demo_data)
    again = finetune.deployment_costs(cfg.replace(seed=7, lr=1e-3), model, demo_data)  # same shape
    assert again == first and len(calls) == 1
    finetune.deployment_costs(cfg.replace(quantize=True), model, demo_data)  # another architecture
    finetune.deployment_costs(cfg.replace(head="mlp", head_hidden=8), model, demo_data)
    assert len(calls) == 3
