import pytest
import torch

from trainables.optim import build_optimizer, llrd_param_groups, parameter_depth


def test_parameter_depth():
    assert parameter_depth("encoder.embeddings.word_embeddings.weight", 12) == 0
    assert parameter_depth("encoder.encoder.layer.0.attention.self.query.weight", 12) == 1
    assert parameter_depth("encoder.encoder.layer.11.output.dense.bias", 12) == 12
    assert parameter_depth("transformer.layer.3.ffn.lin1.weight", 6) == 4  # DistilBERT
    assert parameter_depth("encoder.rel_embeddings.weight", 12) == 0
    assert parameter_depth("encoder.final_norm.weight", 12) == 12


def _groups(model, **kw):
    defaults = dict(num_layers=2, lr=1e-3, llrd_decay=0.5, head_lr_multiplier=10.0, weight_decay=0.01)
    return llrd_param_groups(model.named_parameters(), **{**defaults, **kw})


def test_llrd_exact_learning_rates(tiny_model_dir):
    from trainables.models import TextClassifier, load_encoder

    model = TextClassifier(load_encoder(tiny_model_dir), 5, pooling="mean", head="linear",
                           head_hidden=8, dropout=0.1)
    groups = _groups(model)
    lr_by_name = {}
    for g in groups:
        for name in g["param_names"]:
            lr_by_name[name] = g["lr"]
    # top layer (layer 1) at lr, layer 0 at lr*0.5, embeddings at lr*0.25, head at lr*10
    assert lr_by_name["encoder.encoder.layer.1.attention.self.query.weight"] == pytest.approx(1e-3)
    assert lr_by_name["encoder.encoder.layer.0.output.dense.weight"] == pytest.approx(5e-4)
    assert lr_by_name["encoder.embeddings.word_embeddings.weight"] == pytest.approx(2.5e-4)
    assert lr_by_name["head.1.weight"] == pytest.approx(1e-2)
    # every trainable parameter is in exactly one group
    names = [n for g in groups for n in g["param_names"]]
    assert sorted(names) == sorted(n for n, p in model.named_parameters() if p.requires_grad)
    assert len(names) == len(set(names))


def test_no_weight_decay_on_bias_and_layernorm(tiny_model_dir):
    from trainables.models import TextClassifier, load_encoder

    model = TextClassifier(load_encoder(tiny_model_dir), 3, pooling="cls", head="mlp",
                           head_hidden=4, dropout=0.0)
    wd = {n: g["weight_decay"] for g in _groups(model) for n in g["param_names"]}
    assert wd["encoder.encoder.layer.0.attention.output.LayerNorm.weight"] == 0.0
    assert wd["encoder.encoder.layer.0.attention.output.dense.bias"] == 0.0
    assert wd["head.4.bias"] == 0.0
    assert wd["encoder.encoder.layer.0.attention.output.dense.weight"] == 0.01
    assert wd["head.1.weight"] == 0.01


def test_frozen_parameters_are_left_out():
    lin = torch.nn.Linear(2, 2)
    lin.weight.requires_grad_(False)
    groups = llrd_param_groups([("head.w", lin.weight), ("head.b", lin.bias)], num_layers=1, lr=0.1,
                               llrd_decay=1.0, head_lr_multiplier=1.0, weight_decay=0.0)
    assert [n for g in groups for n in g["param_names"]] == ["head.b"]


def test_optimizer_keeps_group_learning_rates():
    p1, p2 = torch.nn.Parameter(torch.zeros(2, 2)), torch.nn.Parameter(torch.zeros(2))
    groups = [{"name": "a", "params": [p1], "lr": 0.5, "weight_decay": 0.1},
              {"name": "b", "params": [p2], "lr": 0.25, "weight_decay": 0.0}]
    opt = build_optimizer(groups, kind="sgd", lr=1.0, momentum=0.9, nesterov=True)
    assert [g["lr"] for g in opt.param_groups] == [0.5, 0.25]
    assert opt.param_groups[0]["nesterov"] is True
    with pytest.raises(ValueError):
        build_optimizer(groups, kind="lamb", lr=1.0, momentum=0.0, nesterov=False)


@pytest.mark.parametrize("kind", ["adamw", "sgd"])
def test_fused_kernels_and_the_same_step_as_the_reference(kind):
    """The fused optimizer is used on CPU and takes the same step as torch's default one."""
    torch.manual_seed(0)
    start, grad = torch.randn(8, 4), torch.randn(8, 4)
    params = []
    for _ in range(2):
        p = torch.nn.Parameter(start.clone())
        p.grad = grad.clone()
        params.append(p)
    group = lambda p: [{"params": [p], "lr": 0.1, "weight_decay": 0.01}]  # noqa: E731
    ours = build_optimizer(group(params[0]), kind=kind, lr=0.1, momentum=0.9, nesterov=False)
    assert ours.defaults.get("fused") is True
    reference = (torch.optim.AdamW(group(params[1]), lr=0.1) if kind == "adamw"
                 else torch.optim.SGD(group(params[1]), lr=0.1, momentum=0.9))
    for _ in range(3):
        ours.step()
        reference.step()
    assert torch.allclose(params[0], params[1], atol=1e-6)
    assert not torch.equal(params[0].detach(), start)
