"""The BiLSTM baseline: token embeddings trained from scratch, a bidirectional LSTM and attention
pooling (the additive attention of Yang et al. 2016, "Hierarchical Attention Networks"; the
self-attentive pooling of Lin et al. 2017 with one head), then a linear head.

It embeds the token ids every trial receives (the sweep's tokenizer, ``model``: its vocabulary,
none of its weights), so it shows what a pretrained encoder buys over a recurrent model of the
same tokens. AdamW at a constant ``bilstm_lr``, cross-entropy, ``grad_clip``; it reports, keeps
its best epoch, checkpoints and resumes as a fine-tuning trial does (``trainables.baselines``).
"""

from __future__ import annotations

from typing import Callable, Optional

import numpy as np
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from trainables import baselines
from trainables.checkpointing import load_checkpoint, restore_rng_states
from trainables.data import TokenizedData
from trainables.deploy import PeakMemory
from trainables.finetune import Reporter, classification_loss, maybe_inject_failure
from trainables.hparams import BilstmConfig
from trainables.loops import train_epoch
from trainables.models import load_tokenizer
from trainables.runtime import seed_everything

MASKED_SCORE = -1e9  # the attention score of a padding position (finite: an empty row stays finite)


class BiLstmClassifier(nn.Module):
    """(batch, seq) ids and mask -> (batch, labels) logits: embeddings (vocab, dim), a BiLSTM of
    ``hidden`` units per direction, attention pooling over the unmasked positions, a linear head."""

    def __init__(self, vocab_size: int, num_labels: int, *, embedding_dim: int, hidden: int,
                 layers: int, dropout: float, pad_token_id: int):
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, embedding_dim, padding_idx=pad_token_id)
        self.lstm = nn.LSTM(embedding_dim, hidden, num_layers=layers, batch_first=True,
                            bidirectional=True, dropout=dropout if layers > 1 else 0.0)
        self.attention = nn.Linear(2 * hidden, 1)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(2 * hidden, num_labels)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=input_ids.device.type, enabled=False):  # fp32 throughout
            x = self.dropout(self.embedding(input_ids))  # (batch, seq, dim)
            lengths = attention_mask.sum(dim=1).clamp(min=1).cpu()
            packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
            out, _ = self.lstm(packed)
            out, _ = pad_packed_sequence(out, batch_first=True, total_length=input_ids.shape[1])
            scores = self.attention(out).squeeze(-1)  # (batch, seq)
            scores = scores.masked_fill(attention_mask == 0, MASKED_SCORE)
            weights = torch.softmax(scores, dim=-1)
            pooled = torch.einsum("bs,bsh->bh", weights, out)  # (batch, 2 * hidden)
            return self.head(self.dropout(pooled))


def build(cfg: BilstmConfig, vocab_size: int, num_labels: int, pad_token_id: int) -> BiLstmClassifier:
    return BiLstmClassifier(vocab_size, num_labels, embedding_dim=cfg.bilstm_embedding_dim,
                            hidden=cfg.bilstm_hidden, layers=cfg.bilstm_layers,
                            dropout=cfg.bilstm_dropout, pad_token_id=pad_token_id)


def restore(cfg: BilstmConfig, state: dict[str, torch.Tensor], num_labels: int,
            pad_token_id: int) -> BiLstmClassifier:
    """An untrained ``BiLstmClassifier`` of the shape of ``state`` (a model folder's or
    checkpoint's tensors), to load ``state`` into."""
    return build(cfg, state["embedding.weight"].shape[0], num_labels, pad_token_id)


def _resume(model, optimizer, scorer: baselines.EpochScorer, resume_dir: str) -> int:
    """Load a checkpoint's model, optimizer, best-epoch and RNG states; the first epoch left."""
    state = load_checkpoint(resume_dir)
    model.load_state_dict(state["model"])
    if state["optimizer"] is not None:  # None after the last epoch: nothing left to train
        optimizer.load_state_dict(state["optimizer"])
    scorer.best.restore(state["extra"].get("best"), state.get("best_model") or state["model"])
    restore_rng_states(state["rng"])
    return state["epoch"] + 1


def fit(cfg: BilstmConfig, data: TokenizedData, *, device: torch.device, report: Reporter,
        resume_dir: Optional[str] = None,
        progress: Optional[Callable[[int], None]] = None) -> BiLstmClassifier:
    """Train for ``cfg.last_epoch`` epochs, calling ``report`` after each one (validation scores,
    ``best_*``, ``train_loss``, ``lr``, timings, serving costs, as ``trainables.finetune.fit``
    reports), and return the model of the best validation epoch. With ``resume_dir`` training
    continues after the epoch that checkpoint saved."""
    seed_everything(cfg.seed)
    memory = PeakMemory(device)
    vocab_size = len(load_tokenizer(data.model))
    model = build(cfg, vocab_size, data.num_labels, data.pad_token_id).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.bilstm_lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)  # constant
    scorer = baselines.EpochScorer(cfg, data, device, memory,
                                   baselines.serving_costs(cfg, model, data), cfg.batch_size)
    first = _resume(model, optimizer, scorer, resume_dir) if resume_dir is not None else 1
    loss_fn = classification_loss(0.0)
    for epoch in range(first, cfg.last_epoch + 1):
        maybe_inject_failure(epoch)
        stats = train_epoch(model, data.splits["train"], batch_size=cfg.batch_size,
                            rng=np.random.default_rng([cfg.seed, epoch]), pad_token_id=data.pad_token_id,
                            optimizer=optimizer, scheduler=scheduler, loss_fn=loss_fn, device=device,
                            precision=baselines.PRECISION, grad_clip=cfg.grad_clip, progress=progress)
        metrics = scorer(model, epoch, stats, lr=cfg.bilstm_lr)
        report(metrics, baselines.checkpoint_writer(cfg, data, model, scorer.best, epoch,
                                                    cfg.last_epoch, optimizer, scheduler))
    if scorer.best.weights is not None:
        model.load_state_dict(scorer.best.weights)
    return model

