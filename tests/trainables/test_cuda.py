"""What only a GPU can show: the training paths on CUDA at each precision, the automatic
precision choice, and a model trained on the GPU that loads and predicts the same on the CPU.

Marked ``cuda`` and skipped without a CUDA device: `tunebert bench --parts gpu` runs them on a
lent GPU machine. They import neither Ray, MLflow nor the packaged model (such a machine may lack
them): the tiny BERT is built from a ``BertConfig`` with a 100-token vocabulary and fed token ids.
``TUNEBERT_CUDA_TESTS_ON_CPU=1`` runs them on the CPU instead, to check the tests themselves.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

ON_CPU = os.environ.get("TUNEBERT_CUDA_TESTS_ON_CPU") == "1"
pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not (torch.cuda.is_available() or ON_CPU), reason="needs a CUDA device")]

VOCAB, LABELS, TAGS = 100, 3, 5


@pytest.fixture
def device():
    return torch.device("cpu") if ON_CPU else torch.device("cuda", 0)


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory) -> str:
    from transformers import BertConfig, BertModel

    folder = tmp_path_factory.mktemp("tiny-cuda-bert")
    config = BertConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64)
    torch.manual_seed(0)
    BertModel(config, add_pooling_layer=False).save_pretrained(folder)
    return str(folder)


def _data(model: str, n: int = 64):
    """Token ids whose label is set by their first word: learnable in a few dozen steps."""
    from trainables.encoding import EncodedSplit, TokenizedData
    from trainables.labels import LabelMap

    rng = np.random.default_rng(0)
    labels = np.arange(n) % LABELS
    ids = [np.concatenate([[1, 10 + 10 * y], rng.integers(40, VOCAB, rng.integers(3, 12)), [2]]).astype(np.int32)
           for y in labels]
    split = EncodedSplit(ids, labels)
    return TokenizedData({"train": split, "validation": split, "test": split},
                         LabelMap.from_labels([f"l{i}" for i in range(LABELS)]), model, 64, 0)


def _config(model: str, **changes):
    from trainables.hparams import FinetuneConfig

    settings = dict(model=model, epochs=6, lr=3e-3, batch_size=16, max_length=64, warmup_ratio=0.0,
                    perturb_eval=None)
    return FinetuneConfig(**{**settings, **changes})


def test_auto_precision_is_the_fastest_safe_one(device):
    from trainables.runtime import resolve_precision, supports_precision

    chosen = resolve_precision(device, "auto")
    if device.type == "cuda":
        major, _ = torch.cuda.get_device_capability(device)
        assert chosen == ("bf16" if major >= 8 else "fp16" if major >= 7 else "fp32")
    assert supports_precision(device, chosen)


@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_fine_tuning_learns_at_each_precision(tiny_bert, device, precision):
    from trainables.finetune import fit
    from trainables.runtime import supports_precision

    if not supports_precision(device, precision):
        pytest.skip(f"{device} has no {precision}")
    reports = []
    model = fit(_config(tiny_bert, precision=precision), _data(tiny_bert), device=device,
                report=lambda metrics, save: reports.append(metrics))
    assert len(reports) == 6
    assert all(np.isfinite(r["train_loss"]) for r in reports)
    assert reports[-1]["train_loss"] < 0.5 * reports[0]["train_loss"]
    assert max(r["val_accuracy"] for r in reports) >= 0.9
    assert next(model.parameters()).device.type == device.type


def test_fp16_on_cuda_scales_the_loss(tiny_bert, device):
    """fp16 training uses a GradScaler on CUDA (its scale moves off the initial 2**16 only when
    it steps), and the loop still learns."""
    from trainables.finetune import build_classifier, build_optimization, classification_loss
    from trainables.loops import train_epoch

    if device.type != "cuda":
        pytest.skip("loss scaling is a CUDA path")
    cfg = _config(tiny_bert, precision="fp16")
    data = _data(tiny_bert)
    model = build_classifier(cfg, LABELS).to(device)
    optimizer, scheduler = build_optimization(model, cfg, total_steps=40)
    scaler = torch.amp.GradScaler("cuda")
    losses = [train_epoch(model, data.splits["train"], batch_size=16, rng=np.random.default_rng(e),
                          pad_token_id=0, optimizer=optimizer, scheduler=scheduler,
                          loss_fn=classification_loss(0.0), device=device, precision="fp16",
                          grad_clip=1.0, scaler=scaler).loss for e in range(8)]
    assert scaler.is_enabled() and scaler.get_scale() > 0
    assert losses[-1] < 0.5 * losses[0]


def test_a_model_trained_on_the_gpu_predicts_the_same_on_the_cpu(tiny_bert, device, tmp_path):
    from trainables.finetune import build_classifier, fit
    from trainables.models import TextClassifier

    data = _data(tiny_bert)
    model = fit(_config(tiny_bert, epochs=2), data, device=device, report=lambda m, s: None)
    model.eval()
    ids = torch.tensor(np.stack([x[:5] for x in data.splits["test"].input_ids[:8]]), dtype=torch.long)
    mask = torch.ones_like(ids)
    with torch.no_grad():
        on_device = model(ids.to(device), mask.to(device)).float().cpu()
    torch.save(model.state_dict(), tmp_path / "weights.pt")
    cpu_model = build_classifier(_config(tiny_bert), LABELS)
    assert isinstance(cpu_model, TextClassifier)
    cpu_model.load_state_dict(torch.load(tmp_path / "weights.pt", map_location="cpu"))
    cpu_model.eval()
    with torch.no_grad():
        on_cpu = cpu_model(ids, mask)
    assert torch.allclose(on_device, on_cpu, atol=1e-3)


def test_joint_model_trains_on_the_gpu(tiny_bert, device):
    """The multi-task model on CUDA under automatic precision: both heads learn."""
    import torch.nn.functional as F

    from trainables.joint_model import MultitaskModel
    from trainables.loops import autocast_context
    from trainables.models import load_encoder
    from trainables.multitask import joint_loss

    torch.manual_seed(0)
    model = MultitaskModel(load_encoder(tiny_bert), num_labels=LABELS, num_tags=TAGS, pooling="mean",
                           head="linear", slot_head="linear", head_hidden=16, dropout=0.0,
                           sentence_norm="none").to(device)
    ids = torch.randint(40, VOCAB, (16, 10), device=device)
    intents = torch.arange(16, device=device) % LABELS
    ids[:, 1] = intents * 10 + 10
    mask = torch.ones_like(ids)
    tags = ids % TAGS
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(40):
        with autocast_context(device, "auto"):
            intent_logits, tag_logits = model(ids, mask)
        loss = joint_loss(F.cross_entropy(intent_logits.float(), intents),
                          F.cross_entropy(tag_logits.float().reshape(-1, TAGS), tags.reshape(-1)),
                          intent_weight=1.0, slot_weight=1.0)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    assert np.isfinite(losses).all() and losses[-1] < 0.5 * losses[0]
