"""Encoders from Hugging Face, pooled into a classification head.

``resolve_model`` turns an alias, a local folder or a hub id into something ``from_pretrained``
accepts, and turns the hub's offline failures into a message that says what to do.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from trainables.aliases import DEFAULT_MODEL, MODEL_ALIASES, resolve_model  # noqa: F401  (named here too)
from trainables.errors import ConfigError, ModelLoadError
from trainables.hparams import choices_of
from trainables.optim import _LAYER_RE, parameter_depth

POOLINGS = choices_of("pooling")  # declared in trainables.hparams
HEADS = choices_of("head")


def _load_failure(name: str, exc: Exception) -> ModelLoadError:
    looks_local = name.startswith((".", "/", "~")) or os.sep in name and Path(name).parent.exists()
    if looks_local and not Path(name).expanduser().exists():
        return ModelLoadError(
            f"model {name!r}: no such folder. Pass a folder holding config.json and the weights, "
            f"a Hugging Face hub id (e.g. bert-base-uncased), or an alias: {sorted(MODEL_ALIASES)}"
        )
    return ModelLoadError(
        f"could not load model {name!r}: it is not a local folder, and the Hugging Face hub did "
        f"not provide it ({type(exc).__name__}: {str(exc).splitlines()[0][:200]}). Check the id "
        f"and your network (or HF_HUB_OFFLINE / HF_HOME), or use a local folder or an offline "
        f"alias such as '{DEFAULT_MODEL}' (packaged all-MiniLM-L6-v2)."
    )


def _quiet_transformers() -> None:
    """Keep load reports and weight-loading bars out of sweep logs (errors still raise)."""
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def load_tokenizer(name: str):
    from transformers import AutoTokenizer

    _quiet_transformers()
    path = resolve_model(name)
    try:
        return AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as exc:
        raise _load_failure(name, exc) from exc


def load_encoder(name: str, *, hidden_dropout: float | None = None,
                 attention_dropout: float | None = None, num_layers: int = 0) -> nn.Module:
    """``AutoModel`` with optional overrides of the encoder's dropout probabilities.

    ``num_layers`` k > 0 keeps only the bottom k encoder layers (with the embeddings): the config
    says k layers, so ``from_pretrained`` builds k and loads the pretrained weights of layers
    0..k-1, leaving the upper layers' weights unread. ``save_pretrained`` then writes k into the
    folder's config.json, so a saved truncated encoder loads truncated. Raises ``ConfigError``
    when k exceeds the encoder's layers."""
    from transformers import AutoConfig, AutoModel

    _quiet_transformers()
    path = resolve_model(name)
    try:
        config = AutoConfig.from_pretrained(path)
    except (OSError, ValueError) as exc:
        raise _load_failure(name, exc) from exc
    if hidden_dropout is not None:
        config.hidden_dropout_prob = hidden_dropout
    if attention_dropout is not None:
        config.attention_probs_dropout_prob = attention_dropout
    if num_layers:
        attr = _layer_count_attribute(config, name)
        available = int(getattr(config, attr))
        if not 0 < num_layers <= available:
            raise ConfigError(f"`num_layers` is {num_layers} but model {name!r} has "
                              f"{available} encoder layers; use 1..{available}, or 0 for all")
        setattr(config, attr, num_layers)
    kwargs = {"add_pooling_layer": False} if config.model_type == "bert" else {}
    try:
        return AutoModel.from_pretrained(path, config=config, **kwargs)
    except (OSError, ValueError) as exc:
        raise _load_failure(name, exc) from exc


_LAYER_COUNT_ATTRIBUTES = ("num_hidden_layers", "n_layers", "num_layers")


def _layer_count_attribute(config, what: str) -> str:
    """The config attribute that holds the number of encoder layers (BERT's, DistilBERT's, ...)."""
    for attr in _LAYER_COUNT_ATTRIBUTES:
        if hasattr(config, attr):
            return attr
    raise ValueError(f"cannot tell how many layers {what} has")


def num_encoder_layers(encoder: nn.Module) -> int:
    config = encoder.config
    return int(getattr(config, _layer_count_attribute(config, type(encoder).__name__)))


def pool(hidden: torch.Tensor, mask: torch.Tensor, kind: str) -> torch.Tensor:
    """Pool token states into one vector per text.

    hidden: (batch, seq, dim); mask: (batch, seq) with 1 for real tokens. Returns (batch, dim).
    ``cls`` takes the first token, ``mean`` averages real tokens, ``max`` takes the element-wise
    maximum over real tokens (padding never wins).
    """
    if kind == "cls":
        return hidden[:, 0]
    m = mask.unsqueeze(-1).to(hidden.dtype)
    if kind == "mean":
        return (hidden * m).sum(1) / m.sum(1).clamp(min=1.0)
    if kind == "max":
        return hidden.masked_fill(m == 0, torch.finfo(hidden.dtype).min).max(1).values
    raise ValueError(f"pooling must be one of {POOLINGS}, got {kind!r}")


def build_head(dim: int, num_labels: int, *, kind: str, hidden: int, dropout: float) -> nn.Module:
    """``linear``: dropout → linear. ``mlp``: dropout → dim→hidden → tanh → dropout → hidden→labels
    (the study's 768 → 10 → 60 bottleneck with hidden=10). ``norm_gelu``: dropout → LayerNorm →
    GELU → linear (the multi-task report's head). Applied to (..., dim), so it serves sentence
    embeddings and token states alike."""
    if kind == "linear":
        return nn.Sequential(nn.Dropout(dropout), nn.Linear(dim, num_labels))
    if kind == "norm_gelu":
        return nn.Sequential(nn.Dropout(dropout), nn.LayerNorm(dim), nn.GELU(),
                             nn.Linear(dim, num_labels))
    if kind == "mlp":
        return nn.Sequential(
            nn.Dropout(dropout), nn.Linear(dim, hidden), nn.Tanh(),
            nn.Dropout(dropout), nn.Linear(hidden, num_labels),
        )
    raise ValueError(f"head must be one of {HEADS}, got {kind!r}")


class TextClassifier(nn.Module):
    """Encoder → pooling → head. Parameter names: ``encoder.*`` and ``head.*`` (see optim.py)."""

    def __init__(self, encoder: nn.Module, num_labels: int, *, pooling: str, head: str,
                 head_hidden: int, dropout: float):
        super().__init__()
        self.encoder = encoder
        self.pooling = pooling
        self.head = build_head(encoder.config.hidden_size, num_labels, kind=head,
                               hidden=head_hidden, dropout=dropout)

    def embed(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """(batch, seq) token ids → (batch, hidden) pooled text embeddings."""
        out = self.encoder(input_ids=input_ids, attention_mask=attention_mask)
        return pool(out.last_hidden_state, attention_mask, self.pooling)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """(batch, seq) → (batch, num_labels) logits."""
        return self.head(self.embed(input_ids, attention_mask))


def freeze_bottom(model: TextClassifier, *, embeddings: bool, layers: int) -> None:
    """Stop gradients into the embeddings and/or the bottom ``layers`` encoder layers."""
    n = num_encoder_layers(model.encoder)
    for name, param in model.encoder.named_parameters():
        depth = parameter_depth(name, n)
        if (embeddings and depth == 0) or (0 < depth <= layers):
            param.requires_grad_(False)


def reinit_top(model: TextClassifier, layers: int, *, seed: int) -> None:
    """Re-initialise the top ``layers`` encoder layers (Zhang et al. 2021, "Revisiting Few-sample
    BERT Fine-tuning"): linear weights ~ N(0, initializer_range), biases 0, LayerNorm to identity,
    as BERT's own initialisation does."""
    if layers <= 0:
        return
    encoder = model.encoder
    n = num_encoder_layers(encoder)
    if layers > n:
        raise ValueError(f"reinit_layers={layers} exceeds the encoder's {n} layers")
    std = float(getattr(encoder.config, "initializer_range", 0.02) or 0.02)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module_name, module in encoder.named_modules():
            match = _LAYER_RE.search(module_name + ".")
            if not match or int(match.group(1)) < n - layers:
                continue
            if isinstance(module, nn.Linear):
                module.weight.copy_(torch.randn(module.weight.shape, generator=generator) * std)
                if module.bias is not None:
                    module.bias.zero_()
            elif isinstance(module, nn.LayerNorm):
                module.weight.fill_(1.0)
                module.bias.zero_()


class Int8Classifier(nn.Module):
    """A classifier with every ``nn.Linear`` dynamically quantized to int8 for CPU inference
    (``torch.ao.quantization.quantize_dynamic``: int8 weights, activations quantized per batch
    at run time; embeddings and LayerNorm stay fp32). Built from an fp32 model, which it leaves
    untouched.

    PyTorch's dynamic int8 kernels exist for the CPU only, so the model pins itself there: moving
    it (``.to``, ``.cuda``, ``.half``) leaves it as it is, inputs on another device are computed
    on the CPU and the logits sent back, and autocast is off inside (the kernels take fp32). It is
    for prediction and measurement only; a model folder stores the fp32 weights and ``quantize``
    (``trainables.export``), and loading quantizes again.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        import copy
        import warnings

        from torch.ao.quantization import quantize_dynamic

        fp32 = copy.deepcopy(model).to("cpu").eval()
        with warnings.catch_warnings():
            # torch.ao.quantization announces its move to torchao on every call
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.filterwarnings("ignore", message=".*quantize_per_tensor.*")
            self.quantized = quantize_dynamic(fp32, {nn.Linear}, dtype=torch.qint8, inplace=True)

    def _apply(self, fn, recurse=True):  # the int8 kernels run on the CPU in fp32 only
        return self

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """(batch, seq) → (batch, num_labels) fp32 logits, on the inputs' device."""
        device = input_ids.device
        with torch.autocast("cpu", enabled=False):
            logits = self.quantized(input_ids.to("cpu"), attention_mask.to("cpu"))
        return logits.to(device)


def quantize_int8(model: nn.Module) -> Int8Classifier:
    """An int8 copy of ``model`` for CPU inference (see ``Int8Classifier``)."""
    return Int8Classifier(model)
