"""InfoNCE with a GPS queue: against a direct transcription of GeoCLIP's eq. 4."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from geoalign.losses import info_nce, info_nce_with_queue, logits_from_embeddings


def _eq4(img, loc, queue, log_scale, offset=0):
    """Eq. 4 written out with numpy: -sum_j log(exp(s V_ij.L_ij) / sum over batch and queue)."""
    img, loc = np.asarray(img, np.float64), np.asarray(loc, np.float64)
    s = math.exp(log_scale)
    unit = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)  # noqa: E731
    total = 0.0
    for j in range(img.shape[0]):
        cand = (
            unit(loc[j])
            if queue is None
            else np.vstack([unit(loc[j]), unit(np.asarray(queue, np.float64))])
        )
        for i in range(img.shape[1]):
            z = s * unit(img[j, i]) @ cand.T
            total += -(z[offset + i] - np.log(np.exp(z - z.max()).sum()) - z.max())
    return total / img.shape[1]  # views summed, images averaged


@pytest.mark.parametrize("views", [1, 3])
def test_matches_equation_4(views):
    g = torch.Generator().manual_seed(1)
    img = torch.randn(views, 6, 8, generator=g)
    loc = torch.randn(views, 6, 8, generator=g)
    queue = torch.randn(10, 8, generator=g)
    scale = torch.tensor(math.log(1 / 0.07))
    got = info_nce_with_queue(img, loc, scale, queue)
    assert got.item() == pytest.approx(_eq4(img, loc, queue, scale.item()), rel=1e-5)


def test_target_offset_splits_a_global_batch():
    """Two processes holding halves of a batch (with offsets) average to the one-process loss."""
    g = torch.Generator().manual_seed(2)
    img, loc, queue = (
        torch.randn(8, 16, generator=g),
        torch.randn(8, 16, generator=g),
        torch.randn(5, 16, generator=g),
    )
    scale = torch.tensor(2.0)
    full = info_nce_with_queue(img, loc, scale, queue)
    halves = [
        info_nce_with_queue(img[r * 4 : (r + 1) * 4], loc, scale, queue, target_offset=r * 4)
        for r in (0, 1)
    ]
    assert (sum(halves) / 2).item() == pytest.approx(full.item(), rel=1e-6)
    assert info_nce_with_queue(img[4:], loc, scale, queue, target_offset=4).item() == pytest.approx(
        _eq4(img[None, 4:], loc[None], queue, 2.0, offset=4), rel=1e-5
    )


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 6), st.integers(1, 12), st.floats(0.0, 4.0))
def test_more_negatives_never_lower_the_loss(b, s, log_scale):
    g = torch.Generator().manual_seed(b * 100 + s)
    img, loc, queue = (
        torch.randn(b, 4, generator=g),
        torch.randn(b, 4, generator=g),
        torch.randn(s, 4, generator=g),
    )
    scale = torch.tensor(log_scale)
    assert (
        info_nce_with_queue(img, loc, scale, queue)
        >= info_nce_with_queue(img, loc, scale, None) - 1e-6
    )


def test_info_nce_is_cross_entropy_of_scaled_cosines():
    g = torch.Generator().manual_seed(3)
    img, loc = torch.randn(5, 7, generator=g), torch.randn(9, 7, generator=g)
    targets = torch.tensor([0, 3, 8, 2, 2])
    logits = 3.0 * F.normalize(img, dim=-1) @ F.normalize(loc, dim=-1).T
    expected = F.cross_entropy(logits, targets)
    assert info_nce(img, loc, torch.tensor(math.log(3.0)), targets).item() == pytest.approx(
        expected.item(), rel=1e-6
    )


def test_bf16_inputs_are_scored_in_float32():
    g = torch.Generator().manual_seed(4)
    img, loc, queue = (
        torch.randn(16, 32, generator=g),
        torch.randn(16, 32, generator=g),
        torch.randn(64, 32, generator=g),
    )
    scale = torch.tensor(math.log(1 / 0.07))
    ref = info_nce_with_queue(img, loc, scale, queue)
    low = info_nce_with_queue(img.bfloat16(), loc.bfloat16(), scale, queue.bfloat16())
    assert low.dtype == torch.float32
    assert low.item() == pytest.approx(ref.item(), rel=0.02)
    assert logits_from_embeddings(img.bfloat16(), loc.bfloat16(), scale).dtype == torch.float32


def test_gradient_flows_to_queue_and_temperature():
    g = torch.Generator().manual_seed(5)
    img = torch.randn(4, 8, generator=g, requires_grad=True)
    loc = torch.randn(4, 8, generator=g, requires_grad=True)
    queue = torch.randn(6, 8, generator=g, requires_grad=True)
    scale = torch.tensor(1.0, requires_grad=True)
    info_nce_with_queue(img, loc, scale, queue).backward()
    for t in (img, loc, queue, scale):
        assert t.grad is not None and torch.isfinite(t.grad).all() and t.grad.abs().sum() > 0


def test_shape_errors_are_explained():
    with pytest.raises(ValueError, match="views"):
        info_nce_with_queue(torch.randn(2, 3, 4), torch.randn(1, 3, 4), torch.tensor(1.0))
    with pytest.raises(ValueError, match="target_offset"):
        info_nce_with_queue(
            torch.randn(3, 4), torch.randn(3, 4), torch.tensor(1.0), target_offset=2
        )
