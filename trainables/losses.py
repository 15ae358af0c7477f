"""Losses as pure tensor functions: contrastive (embeddings and labels in), R-Drop, and
knowledge distillation (``distillation_loss``: student logits, teacher probabilities, labels).

The two contrastive losses take the embeddings of every view of every text, shaped ``(batch, views, dim)``, and
L2-normalise them inside, so the logits are cosine similarities divided by the temperature.

Notation shared by the docstrings: the ``batch * views`` embeddings are flattened into one set
``I``; ``z_i`` is the normalised embedding of element ``i``; ``A(i) = I \\ {i}``;
``s_ia = z_i . z_a / tau``.

Numerics: similarities are computed in float32 with autocast turned off (bf16 logits of
``cos / 0.05`` would be off by several hundredths); the self-similarity is masked with the most
negative finite float, never ``-inf``, and positives are picked with ``torch.where`` rather than
multiplied by a 0/1 mask, so no ``-inf * 0`` can turn into NaN.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from trainables.errors import ConfigError


def _check_temperature(temperature: float) -> float:
    value = float(temperature)
    if not (math.isfinite(value) and value > 0):
        raise ConfigError(f"`temperature` must be a finite number > 0, but got {temperature!r}")
    return value


def _check_features(features: torch.Tensor) -> None:
    if features.dim() != 3:
        raise ValueError(
            "`features` must have shape (batch, views, dim), but got shape "
            f"{tuple(features.shape)}; stack the views of each text on dim 1."
        )
    if features.shape[0] == 0:
        raise ValueError("`features` is an empty batch (batch = 0); pass at least one text.")


def _masked_log_softmax(features: torch.Tensor, temperature: float) -> torch.Tensor:
    """Row-wise ``log softmax`` of ``s_ia`` over ``a in A(i)``, for the flattened set ``I``.

    ``features``: (batch, views, dim), flattened sample-major, so row ``b * views + v`` is view
    ``v`` of text ``b``. Returns (batch * views, batch * views); the diagonal holds a huge negative
    number (not ``-inf``) and must never be selected.
    """
    with torch.autocast(device_type=features.device.type, enabled=False):
        z = F.normalize(features.float().reshape(-1, features.shape[-1]), dim=-1)  # (n, dim)
        logits = z @ z.T / temperature  # (n, n)
        self_mask = torch.eye(logits.shape[0], dtype=torch.bool, device=logits.device)
        logits = logits.masked_fill(self_mask, torch.finfo(logits.dtype).min)
        # log_softmax subtracts the row max before exponentiating (stable for tiny temperatures)
        return torch.log_softmax(logits, dim=1)


def supcon_loss(
    features: torch.Tensor, labels: torch.Tensor, temperature: float = 0.1
) -> torch.Tensor:
    """Supervised contrastive loss ``L^sup_out`` (Khosla et al. 2020, "Supervised Contrastive
    Learning", eq. 2)::

        L = mean over i in I with |P(i)| > 0 of
            -1/|P(i)| * sum_{p in P(i)} log( exp(s_ip) / sum_{a in A(i)} exp(s_ia) )

    where ``P(i) = {p in A(i) : label_p = label_i}``: the other views of the same text and every
    view of the other texts with the same label. Unlike the paper's sum over anchors this is a mean,
    and there is no ``tau / base_tau`` rescaling (as in the authors' code), so with all-distinct
    labels and 2 views it equals ``ntxent_loss`` exactly.

    Args:
        features: (batch, views, dim) embeddings, any scale (normalised here).
        labels: (batch,) integer class of each text.
        temperature: ``tau`` > 0.

    Returns:
        A scalar tensor (float32). Anchors without a positive are left out of the mean. A batch of
        one text with 2+ views is defined (the other views are positives; the loss is 0).

    Raises:
        ConfigError (a ValueError): ``temperature`` is not a finite number > 0; or no anchor has a
            positive, which happens only with 1 view and all-distinct labels.
        ValueError: the shapes of ``features`` and ``labels`` do not fit.
    """
    tau = _check_temperature(temperature)
    _check_features(features)
    batch, views = features.shape[0], features.shape[1]
    if labels.shape != (batch,):
        raise ValueError(
            f"`labels` must have shape (batch,) = ({batch},) to match `features` of shape "
            f"{tuple(features.shape)}, but got shape {tuple(labels.shape)}"
        )
    labels = labels.to(features.device).repeat_interleave(views)  # (batch * views,)
    log_prob = _masked_log_softmax(features, tau)  # (n, n)
    n = log_prob.shape[0]
    eye = torch.eye(n, dtype=torch.bool, device=log_prob.device)
    positive = (labels[:, None] == labels[None, :]) & ~eye  # (n, n)
    num_positives = positive.sum(dim=1)  # (n,)
    # With 2+ views every anchor has its own other views as positives; only 1 view can leave
    # anchors (or all of them) without one. Checking only then avoids a device sync per step.
    if views == 1 and not bool((num_positives > 0).any()):
        raise ConfigError(
            f"supcon_loss: no anchor has a positive: the batch of {batch} texts has 1 view each "
            "and no two texts share a label, so the loss is undefined; use at least 2 views "
            "(augmentations or dropout) or batches with repeated labels."
        )
    positive_log_prob = torch.where(positive, log_prob, torch.zeros_like(log_prob)).sum(dim=1)
    has_positive = num_positives > 0
    per_anchor = -positive_log_prob / num_positives.clamp(min=1)  # (n,)
    per_anchor = torch.where(has_positive, per_anchor, torch.zeros_like(per_anchor))
    return per_anchor.sum() / has_positive.sum()


def ntxent_loss(features: torch.Tensor, temperature: float = 0.1) -> torch.Tensor:
    """NT-Xent, the normalised temperature-scaled cross-entropy of SimCLR (Chen et al. 2020,
    "A Simple Framework for Contrastive Learning of Visual Representations", eq. 1), as used by
    unsupervised SimCSE (Gao et al. 2021) with two dropout views of each sentence::

        L = mean over the 2N anchors i of  -log( exp(s_ij) / sum_{a in A(i)} exp(s_ia) )

    where ``j`` is the other view of the same text and every other embedding of the ``2N`` set
    is a negative (SimCSE's in-batch negatives plus the other views).

    Args:
        features: (batch, 2, dim) embeddings, any scale (normalised here).
        temperature: ``tau`` > 0.

    Returns:
        A scalar tensor (float32). A batch of one text gives 0: the denominator holds only the
        positive.

    Raises:
        ConfigError (a ValueError): ``temperature`` is not a finite number > 0.
        ValueError: ``features`` is not (batch, 2, dim).
    """
    tau = _check_temperature(temperature)
    _check_features(features)
    batch, views = features.shape[0], features.shape[1]
    if views != 2:
        raise ValueError(
            f"ntxent_loss needs exactly 2 views per text (features of shape (batch, 2, dim)), "
            f"but got {views} views (shape {tuple(features.shape)}); use supcon_loss for other "
            "view counts."
        )
    log_prob = _masked_log_softmax(features, tau)  # (2N, 2N), row b*2 + v is view v of text b
    anchors = torch.arange(2 * batch, device=log_prob.device)
    partner = anchors ^ 1  # the other view of the same text: 2b <-> 2b + 1
    return -log_prob[anchors, partner].mean()


def symmetric_kl(logits_a: torch.Tensor, logits_b: torch.Tensor) -> torch.Tensor:
    """``(KL(p_a || p_b) + KL(p_b || p_a)) / 2`` per example, averaged over the batch, where
    ``p = softmax(logits)`` (the R-Drop regulariser, Liang et al. 2021, eq. 2).

    logits_a, logits_b: (batch, classes). Computed in float32 from log-probabilities, so a
    probability that underflows to 0 in one pass cannot make the loss infinite.
    """
    if logits_a.shape != logits_b.shape:
        raise ValueError(f"symmetric_kl needs logits of one shape, got {tuple(logits_a.shape)} "
                         f"and {tuple(logits_b.shape)}")
    log_a = F.log_softmax(logits_a.float(), dim=-1)
    log_b = F.log_softmax(logits_b.float(), dim=-1)
    kl_ab = (log_a.exp() * (log_a - log_b)).sum(-1)  # (batch,)
    kl_ba = (log_b.exp() * (log_b - log_a)).sum(-1)
    return (0.5 * (kl_ab + kl_ba)).mean()


def two_view_classification_loss(logits: torch.Tensor, pooled: torch.Tensor, labels: torch.Tensor, *,
                                 label_smoothing: float = 0.0, rdrop_alpha: float = 0.0,
                                 supcon_lambda: float = 0.0,
                                 supcon_temperature: float = 0.1) -> torch.Tensor:
    """Cross-entropy over two dropout passes of one batch, plus R-Drop and/or joint SupCon.

    ``logits``: (2B, classes) and ``pooled``: (2B, hidden), rows ``0..B-1`` the first pass and
    ``B..2B-1`` the second pass of the same ``B`` texts; ``labels``: (B,). Returns::

        (CE(l1) + CE(l2)) / 2  +  rdrop_alpha * symmetric_kl(l1, l2)
                               +  supcon_lambda * SupCon([z1, z2], labels, supcon_temperature)

    R-Drop: Liang et al., NeurIPS 2021, eq. 3 (the mean of the two NLL terms rather than their
    sum, so ``rdrop_alpha = 0`` is plain cross-entropy averaged over two passes). Joint SupCon:
    Gunel et al., ICLR 2021, eq. 1-2, on the pooled embeddings (no projection head), with the two
    passes as the views.
    """
    half = logits.shape[0] // 2
    if logits.shape[0] != 2 * half or labels.shape != (half,):
        raise ValueError(f"expected 2B rows of logits for B labels, got {logits.shape[0]} rows and "
                         f"labels of shape {tuple(labels.shape)}")
    l1, l2 = logits.float()[:half], logits.float()[half:]
    loss = 0.5 * (F.cross_entropy(l1, labels, label_smoothing=label_smoothing)
                  + F.cross_entropy(l2, labels, label_smoothing=label_smoothing))
    if rdrop_alpha:
        loss = loss + rdrop_alpha * symmetric_kl(l1, l2)
    if supcon_lambda:
        views = torch.stack([pooled[:half], pooled[half:]], dim=1)  # (B, 2, hidden)
        loss = loss + supcon_lambda * supcon_loss(views, labels, supcon_temperature)
    return loss


def soften(probs: torch.Tensor, temperature: float) -> torch.Tensor:
    """A teacher's probabilities at ``temperature``: ``softmax(log p / T)``, i.e. ``p^(1/T)``
    renormalised (what ``softmax(z / T)`` gives for logits z whose softmax is p). An ensemble's
    teacher is the mean of its members' probabilities, so probabilities, not logits, are what the
    cache holds. A zero probability stays zero (its log is clamped, never ``-inf``)."""
    t = _check_temperature(temperature)
    logp = torch.log(probs.float().clamp_min(torch.finfo(torch.float32).tiny))
    return F.softmax(logp / t, dim=-1)


def distillation_loss(student_logits: torch.Tensor, teacher_probs: torch.Tensor, labels: torch.Tensor,
                      *, temperature: float = 2.0, alpha: float = 0.5,
                      label_smoothing: float = 0.0) -> torch.Tensor:
    """Knowledge distillation (Hinton et al. 2015, section 2)::

        alpha * T^2 * KL(soften(teacher, T) || softmax(student / T))  +  (1 - alpha) * CE(student, labels)

    averaged over the batch. The ``T^2`` keeps the soft term's gradients on the scale of the hard
    term's as T changes (their eq. 2 and the remark after it); ``alpha = 0`` is plain
    cross-entropy, ``alpha = 1`` the teacher alone. ``student_logits``: (batch, classes);
    ``teacher_probs``: (batch, classes), rows summing to 1; ``labels``: (batch,). Float32 throughout.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ConfigError(f"`alpha` (the distillation weight) must lie in [0, 1], but got {alpha}")
    if student_logits.shape != teacher_probs.shape:
        raise ValueError(f"distillation_loss needs student logits and teacher probabilities of one "
                         f"shape, got {tuple(student_logits.shape)} and {tuple(teacher_probs.shape)}")
    t = _check_temperature(temperature)
    logits = student_logits.float()
    target = soften(teacher_probs, t)
    log_student = F.log_softmax(logits / t, dim=-1)
    kl = (target * (torch.log(target.clamp_min(torch.finfo(torch.float32).tiny)) - log_student)).sum(-1).mean()
    hard = F.cross_entropy(logits, labels, label_smoothing=label_smoothing)
    return alpha * t * t * kl + (1.0 - alpha) * hard
