import math

import pytest
import torch
import torch.nn.functional as F

from trainables.errors import ConfigError
from trainables.losses import distillation_loss, ntxent_loss, soften, supcon_loss

TAU = 0.5


def _two_by_two() -> torch.Tensor:
    """2 texts x 2 views x 2 dims, deliberately not unit length (the losses normalise).

    Normalised: 0a = (1, 0), 0b = (0.6, 0.8), 1a = (0, 1), 1b = (-0.8, 0.6). Dot products:
    0a.0b = 0.6, 0a.1a = 0, 0a.1b = -0.8, 0b.1a = 0.8, 0b.1b = 0, 1a.1b = 0.6.
    With tau = 0.5 the logits are twice these.
    """
    return torch.tensor([[[2.0, 0.0], [3.0, 4.0]],
                         [[0.0, 0.5], [-8.0, 6.0]]])


def _nll(positive: float, others: list[float]) -> float:
    """-log(exp(positive) / sum(exp(a) for a in others)); ``others`` includes the positive."""
    return -math.log(math.exp(positive) / sum(math.exp(a) for a in others))


# NT-Xent by hand: each anchor's positive is its other view (logit 1.2); the denominator holds
# the other three embeddings.
NTXENT_2X2 = (
    _nll(1.2, [1.2, 0.0, -1.6])    # anchor 0a: 0b (pos), 1a, 1b
    + _nll(1.2, [1.2, 1.6, 0.0])   # anchor 0b: 0a (pos), 1a, 1b
    + _nll(1.2, [1.2, 0.0, 1.6])   # anchor 1a: 1b (pos), 0a, 0b
    + _nll(1.2, [1.2, -1.6, 0.0])  # anchor 1b: 1a (pos), 0a, 0b
) / 4


def test_ntxent_matches_hand_computation():
    loss = ntxent_loss(_two_by_two(), temperature=TAU)
    assert loss.item() == pytest.approx(NTXENT_2X2, rel=1e-6)


def test_supcon_distinct_labels_matches_hand_ntxent():
    loss = supcon_loss(_two_by_two(), torch.tensor([0, 1]), temperature=TAU)
    assert loss.item() == pytest.approx(NTXENT_2X2, rel=1e-6)


def test_supcon_all_labels_equal_matches_hand_computation():
    # Every other embedding is a positive: loss_i = log(sum_a exp(s_ia)) - mean_p s_ip.
    def anchor(others):
        return math.log(sum(math.exp(s) for s in others)) - sum(others) / len(others)

    expected = (
        anchor([1.2, 0.0, -1.6])   # 0a: 0b, 1a, 1b
        + anchor([1.2, 1.6, 0.0])  # 0b: 0a, 1a, 1b
        + anchor([0.0, 1.6, 1.2])  # 1a: 0a, 0b, 1b
        + anchor([-1.6, 0.0, 1.2])  # 1b: 0a, 0b, 1a
    ) / 4
    loss = supcon_loss(_two_by_two(), torch.tensor([3, 3]), temperature=TAU)
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_supcon_single_view_skips_anchors_without_positive():
    # z0 = (1, 0), z1 = (0.6, 0.8), z2 = (0, 1); labels 0, 0, 1: z2 has no positive and is left out.
    features = torch.tensor([[[1.0, 0.0]], [[0.6, 0.8]], [[0.0, 1.0]]])
    expected = (
        _nll(1.2, [1.2, 0.0])    # anchor z0: z1 (pos, 0.6 / 0.5), z2 (0)
        + _nll(1.2, [1.2, 1.6])  # anchor z1: z0 (pos), z2 (0.8 / 0.5)
    ) / 2
    loss = supcon_loss(features, torch.tensor([0, 0, 1]), temperature=TAU)
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_supcon_equals_ntxent_with_distinct_labels_and_two_views():
    # The identity is exact (no constant factor): P(i) is then just the other view.
    torch.manual_seed(0)
    features = torch.randn(6, 2, 16)
    for tau in (0.05, 0.1, 1.0):
        assert supcon_loss(features, torch.arange(6), tau).item() == pytest.approx(
            ntxent_loss(features, tau).item(), rel=1e-6)


def test_swapping_views_changes_nothing():
    torch.manual_seed(1)
    features = torch.randn(5, 2, 8)
    labels = torch.tensor([0, 1, 0, 2, 1])
    swapped = features[:, [1, 0]]
    assert supcon_loss(swapped, labels).item() == pytest.approx(
        supcon_loss(features, labels).item(), rel=1e-6)
    assert ntxent_loss(swapped).item() == pytest.approx(ntxent_loss(features).item(), rel=1e-6)


def test_permuting_the_batch_changes_nothing():
    torch.manual_seed(2)
    features = torch.randn(5, 3, 8)
    labels = torch.tensor([0, 1, 0, 2, 1])
    order = torch.tensor([3, 0, 4, 2, 1])
    assert supcon_loss(features[order], labels[order]).item() == pytest.approx(
        supcon_loss(features, labels).item(), rel=1e-6)


def test_single_example_batch_is_zero_not_nan():
    # Only the other view is in the denominator, and it is the positive: -log(1) = 0.
    features = torch.randn(1, 2, 4, requires_grad=True)
    for loss in (supcon_loss(features, torch.tensor([7])), ntxent_loss(features)):
        assert loss.item() == pytest.approx(0.0, abs=1e-6)
        (grad,) = torch.autograd.grad(loss, features)
        assert torch.isfinite(grad).all()


def test_gradients_flow_and_are_finite():
    torch.manual_seed(3)
    features = torch.randn(4, 2, 8, requires_grad=True)
    supcon_loss(features, torch.tensor([0, 1, 0, 1])).backward()
    assert torch.isfinite(features.grad).all() and features.grad.abs().sum() > 0
    features.grad = None
    ntxent_loss(features).backward()
    assert torch.isfinite(features.grad).all() and features.grad.abs().sum() > 0


@pytest.mark.parametrize("tau", [1e-4, 1e-2, 10.0])
def test_no_nan_for_degenerate_inputs(tau):
    zeros = torch.zeros(3, 2, 4, requires_grad=True)  # normalise cannot divide by zero
    same = torch.ones(3, 2, 4, requires_grad=True)  # all similarities equal 1
    for features in (zeros, same):
        losses = (supcon_loss(features, torch.tensor([0, 1, 1]), tau), ntxent_loss(features, tau))
        for loss in losses:
            loss.backward()
            assert torch.isfinite(loss)
            assert torch.isfinite(features.grad).all()
            features.grad = None


def test_tiny_temperature_stays_finite_and_near_hand_limit():
    # As tau -> 0 the softmax is a hard max; 0a's positive 0b (cos 0.6) is the closest, so its term
    # goes to 0, while 0b's closest is 1a (cos 0.8): -log softmax -> (0.8 - 0.6) / tau.
    tau = 1e-3
    loss = ntxent_loss(_two_by_two(), temperature=tau)
    assert torch.isfinite(loss)
    assert loss.item() == pytest.approx((0 + 0.2 / tau + 0.2 / tau + 0) / 4, rel=1e-3)


def test_low_precision_inputs_and_autocast_compute_in_float32():
    torch.manual_seed(4)
    features = torch.randn(4, 2, 8)
    labels = torch.tensor([0, 1, 0, 1])
    reference = supcon_loss(features, labels, 0.05)
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        under_autocast = supcon_loss(features, labels, 0.05)
    assert under_autocast.dtype == torch.float32
    assert under_autocast.item() == pytest.approx(reference.item(), rel=1e-6)
    half = ntxent_loss(features.half(), 0.05)
    assert half.dtype == torch.float32 and torch.isfinite(half)


@pytest.mark.parametrize("tau", [0, -0.1, float("nan"), float("inf")])
def test_temperature_must_be_positive(tau):
    features = torch.randn(2, 2, 4)
    with pytest.raises(ValueError, match="`temperature` must be a finite number > 0"):
        supcon_loss(features, torch.tensor([0, 1]), temperature=tau)
    with pytest.raises(ConfigError, match="temperature"):
        ntxent_loss(features, temperature=tau)


def test_supcon_without_any_positive_raises():
    with pytest.raises(ValueError, match="no anchor has a positive.*at least 2 views"):
        supcon_loss(torch.randn(3, 1, 4), torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="no anchor has a positive"):
        supcon_loss(torch.randn(1, 1, 4), torch.tensor([0]))


def test_ntxent_needs_two_views():
    for views in (1, 3):
        with pytest.raises(ValueError, match="exactly 2 views.*got {}".format(views)):
            ntxent_loss(torch.randn(2, views, 4))


def test_shape_errors_name_the_argument():
    with pytest.raises(ValueError, match="`features` must have shape"):
        supcon_loss(torch.randn(4, 8), torch.arange(4))
    with pytest.raises(ValueError, match="`labels` must have shape"):
        supcon_loss(torch.randn(4, 2, 8), torch.arange(3))
    with pytest.raises(ValueError, match="empty batch"):
        ntxent_loss(torch.randn(0, 2, 8))


def test_symmetric_kl_by_hand():
    import math

    from trainables.losses import symmetric_kl

    # p = (0.5, 0.5), q = (0.8, 0.2) as logits log p, log q
    p, q = torch.tensor([[0.5, 0.5]]), torch.tensor([[0.8, 0.2]])
    kl_pq = 0.5 * math.log(0.5 / 0.8) + 0.5 * math.log(0.5 / 0.2)
    kl_qp = 0.8 * math.log(0.8 / 0.5) + 0.2 * math.log(0.2 / 0.5)
    assert symmetric_kl(p.log(), q.log()).item() == pytest.approx(0.5 * (kl_pq + kl_qp), rel=1e-6)
    assert symmetric_kl(p.log(), p.log()).item() == pytest.approx(0.0, abs=1e-7)


def test_two_view_loss_is_ce_plus_weighted_terms():
    import torch.nn.functional as F

    from trainables.losses import supcon_loss, symmetric_kl, two_view_classification_loss

    torch.manual_seed(0)
    logits, pooled = torch.randn(6, 4), torch.randn(6, 5)
    labels = torch.tensor([0, 1, 1])
    ce = 0.5 * (F.cross_entropy(logits[:3], labels) + F.cross_entropy(logits[3:], labels))
    assert two_view_classification_loss(logits, pooled, labels).item() == pytest.approx(ce.item())
    both = two_view_classification_loss(logits, pooled, labels, rdrop_alpha=2.0, supcon_lambda=0.5,
                                        supcon_temperature=0.2)
    supcon = supcon_loss(torch.stack([pooled[:3], pooled[3:]], 1), labels, 0.2)
    expected = ce + 2.0 * symmetric_kl(logits[:3], logits[3:]) + 0.5 * supcon
    assert both.item() == pytest.approx(expected.item(), rel=1e-6)
    with pytest.raises(ValueError, match="2B rows"):
        two_view_classification_loss(logits[:5], pooled[:5], labels)


def test_distillation_loss_matches_hand_computation():
    """Two classes, one example: student logits (1, 0), teacher probabilities (0.8, 0.2), label 1,
    T = 2, alpha = 0.25, computed by hand."""
    t, alpha = 2.0, 0.25
    # the teacher at T: p^(1/2) renormalised
    a, b = math.sqrt(0.8), math.sqrt(0.2)
    q = (a / (a + b), b / (a + b))
    assert soften(torch.tensor([[0.8, 0.2]]), t)[0].tolist() == pytest.approx(q, rel=1e-6)
    # the student at T: softmax(0.5, 0)
    s1 = math.exp(0.5) / (math.exp(0.5) + 1.0)
    s = (s1, 1.0 - s1)
    kl = q[0] * math.log(q[0] / s[0]) + q[1] * math.log(q[1] / s[1])
    ce = -math.log(1.0 / (math.e + 1.0))  # softmax(1, 0) at the label 1
    expected = alpha * t * t * kl + (1 - alpha) * ce
    got = distillation_loss(torch.tensor([[1.0, 0.0]]), torch.tensor([[0.8, 0.2]]), torch.tensor([1]),
                            temperature=t, alpha=alpha)
    assert float(got) == pytest.approx(expected, rel=1e-6)


def test_distillation_loss_ends():
    """alpha 0 is plain cross-entropy; alpha 1 with the student equal to the teacher is zero; a
    zero teacher probability gives no NaN; a bad alpha or temperature is refused."""
    logits = torch.tensor([[2.0, -1.0, 0.5], [0.0, 0.3, -0.2]])
    labels = torch.tensor([0, 2])
    plain = F.cross_entropy(logits, labels)
    assert float(distillation_loss(logits, F.softmax(logits, -1), labels, alpha=0.0)) == pytest.approx(float(plain))
    assert float(distillation_loss(logits, F.softmax(logits, -1), labels, alpha=1.0, temperature=1.0)) \
        == pytest.approx(0.0, abs=1e-6)
    hard_teacher = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    value = distillation_loss(logits.requires_grad_(), hard_teacher, labels, alpha=0.7, temperature=3.0)
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(logits.grad).all()
    with pytest.raises(ConfigError, match="must lie in"):
        distillation_loss(logits, hard_teacher, labels, alpha=1.5)
    with pytest.raises(ConfigError, match="temperature"):
        distillation_loss(logits, hard_teacher, labels, temperature=0.0)
