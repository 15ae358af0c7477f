import pytest
import torch

from trainables.errors import ModelLoadError
from trainables.models import (TextClassifier, freeze_bottom, load_encoder, load_tokenizer, pool,
                               reinit_top, resolve_model)


def test_pooling_by_hand():
    hidden = torch.tensor([[[1.0, 10.0], [3.0, -2.0], [100.0, 100.0]]])  # (1, 3, 2)
    mask = torch.tensor([[1, 1, 0]])  # third token is padding
    assert pool(hidden, mask, "cls").tolist() == [[1.0, 10.0]]
    assert pool(hidden, mask, "mean").tolist() == [[2.0, 4.0]]
    assert pool(hidden, mask, "max").tolist() == [[3.0, 10.0]]  # padding (100) never wins
    with pytest.raises(ValueError, match="pooling"):
        pool(hidden, mask, "sum")


def test_default_alias_points_at_packaged_minilm():
    path = resolve_model("minilm-l6")
    assert path.endswith("model")
    tok = load_tokenizer("minilm-l6")
    assert tok.vocab_size == 30522


def test_missing_local_folder_is_a_clear_error(tmp_path):
    with pytest.raises(ModelLoadError, match="no such folder"):
        load_encoder(str(tmp_path / "nope"))


def test_unknown_hub_id_offline_is_a_clear_error(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # read at import time; set it as if the user had exported it before starting
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ModelLoadError, match="hub did not provide it.*minilm-l6"):
        load_tokenizer("no-such-org/no-such-model-xyz")


def test_classifier_shapes_and_heads(tiny_model_dir):
    enc = load_encoder(tiny_model_dir, hidden_dropout=0.3, attention_dropout=0.2)
    assert enc.config.hidden_dropout_prob == 0.3 and enc.config.attention_probs_dropout_prob == 0.2
    model = TextClassifier(enc, 7, pooling="mean", head="mlp", head_hidden=10, dropout=0.5)
    ids = torch.randint(1000, 2000, (3, 5))
    mask = torch.ones(3, 5, dtype=torch.long)
    assert model(ids, mask).shape == (3, 7)
    assert model.head[1].out_features == 10  # hidden -> 10 -> classes bottleneck


def test_freeze_and_reinit(tiny_model_dir):
    model = TextClassifier(load_encoder(tiny_model_dir), 3, pooling="cls", head="linear",
                           head_hidden=4, dropout=0.0)
    before_top = model.encoder.encoder.layer[1].output.dense.weight.detach().clone()
    before_bottom = model.encoder.encoder.layer[0].output.dense.weight.detach().clone()
    reinit_top(model, 1, seed=123)
    assert not torch.equal(before_top, model.encoder.encoder.layer[1].output.dense.weight)
    assert torch.equal(before_bottom, model.encoder.encoder.layer[0].output.dense.weight)
    freeze_bottom(model, embeddings=True, layers=1)
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert "encoder.embeddings.word_embeddings.weight" in frozen
    assert "encoder.encoder.layer.0.output.dense.weight" in frozen
    assert "encoder.encoder.layer.1.output.dense.weight" not in frozen
    assert "head.1.weight" not in frozen
