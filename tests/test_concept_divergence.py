"""The concept-space divergence (paper eqs. 5-6) against direct evaluations of the formulas."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from geoalign.losses import concept_divergence
from geoalign.nn.concept_basis import ConceptBasis, ConceptHead, top_k_sparse


def log_k(x: np.ndarray, y: np.ndarray, sigma: float) -> float:
    """log of eq. 5, K(x, y) = exp(-||x - y||² / 2σ²), evaluated literally."""
    return math.log(math.exp(-float(((x - y) ** 2).sum()) / (2 * sigma**2)))


def eq6_direct(a: np.ndarray, b: np.ndarray, sigma: float) -> float:
    """Eq. 6 as printed: 1/N² Σ_ij [log K(ai, aj) + log K(bi, bj) - 2 log K(ai, bj)]."""
    n = len(a)
    total = 0.0
    for i in range(n):
        for j in range(n):
            total += (
                log_k(a[i], a[j], sigma) + log_k(b[i], b[j], sigma) - 2 * log_k(a[i], b[j], sigma)
            )
    return total / n**2


def cs_direct(a: np.ndarray, b: np.ndarray, sigma: float) -> float:
    """Kernel Cauchy-Schwarz divergence with the log outside the means, evaluated literally."""

    def mean_k(x, y):
        return np.mean(
            [[math.exp(-((xi - yj) ** 2).sum() / (2 * sigma**2)) for yj in y] for xi in x]
        )

    return math.log(mean_k(a, a)) + math.log(mean_k(b, b)) - 2 * math.log(mean_k(a, b))


@pytest.mark.parametrize("sigma", [0.5, 1.0, 3.0])
def test_paper_form_matches_direct_eq6(sigma):
    rng = np.random.default_rng(0)
    a = rng.normal(size=(7, 5)) * 0.3
    b = rng.normal(size=(7, 5)) * 0.3 + 0.2
    got = concept_divergence(torch.tensor(a), torch.tensor(b), sigma, "paper").item()
    assert got == pytest.approx(eq6_direct(a, b, sigma), rel=1e-9, abs=1e-12)
    assert got > 0


@pytest.mark.parametrize("sigma", [0.5, 1.0, 3.0])
def test_cauchy_schwarz_matches_direct(sigma):
    rng = np.random.default_rng(1)
    a = rng.normal(size=(6, 4)) * 0.5
    b = rng.normal(size=(6, 4)) * 0.5 + 0.3
    got = concept_divergence(torch.tensor(a), torch.tensor(b), sigma, "cauchy-schwarz").item()
    assert got == pytest.approx(cs_direct(a, b, sigma), rel=1e-9, abs=1e-12)
    assert got > 0


@pytest.mark.parametrize("form", ["paper", "cauchy-schwarz"])
def test_zero_when_distributions_coincide(form):
    z = torch.randn(16, 9, dtype=torch.float64)
    perm = torch.randperm(16)
    assert concept_divergence(z, z, 1.0, form).item() == pytest.approx(0.0, abs=1e-12)
    # the same empirical distribution in another order: still zero (distribution-level loss)
    assert concept_divergence(z, z[perm], 1.0, form).item() == pytest.approx(0.0, abs=1e-10)


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(2, 12),
    k=st.integers(1, 8),
    sigma=st.floats(0.2, 5.0),
    shift=st.floats(-2, 2),
    seed=st.integers(0, 2**16),
)
def test_both_forms_are_non_negative(n, k, sigma, shift, seed):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(n, k, generator=g, dtype=torch.float64)
    b = torch.randn(n, k, generator=g, dtype=torch.float64) + shift
    for form in ("paper", "cauchy-schwarz"):
        assert concept_divergence(a, b, sigma, form).item() >= -1e-10


def test_gradients_finite_at_coincident_points_and_bf16():
    z = torch.randn(8, 5, requires_grad=True)
    loss = concept_divergence(z, z.detach().clone(), 1.0, "cauchy-schwarz")
    loss.backward()
    assert torch.isfinite(z.grad).all()
    a, b = torch.randn(8, 5), torch.randn(8, 5)
    for form in ("paper", "cauchy-schwarz"):
        full = concept_divergence(a, b, 1.0, form)
        half = concept_divergence(a.bfloat16(), b.bfloat16(), 1.0, form)
        assert half.dtype == torch.float32
        assert half.item() == pytest.approx(full.item(), rel=0.05, abs=1e-3)


def test_bad_inputs_raise():
    with pytest.raises(ValueError):
        concept_divergence(torch.zeros(3, 2), torch.zeros(4, 2))
    with pytest.raises(ValueError):
        concept_divergence(torch.zeros(3, 2), torch.zeros(3, 2), sigma=0)
    with pytest.raises(ValueError):
        concept_divergence(torch.zeros(3, 2), torch.zeros(3, 2), form="kl")


def test_top_k_sparse_keeps_exactly_k_largest():
    scores = torch.randn(5, 30)
    out = top_k_sparse(scores, 20)
    assert ((out != 0).sum(1) == 20).all()
    kept = out != 0
    # every kept score is >= every dropped score, row by row
    for r in range(5):
        assert scores[r][kept[r]].min() >= scores[r][~kept[r]].max()
    assert torch.equal(out[kept], scores[kept])
    assert torch.equal(top_k_sparse(scores, None), scores)


def test_projection_basis_starts_isometric_and_scores_are_cosines():
    text = torch.nn.functional.normalize(torch.randn(12, 6), dim=-1)
    basis = ConceptBasis(text, 10, mapping="projection")
    e = basis.concept_embeddings()
    # a semi-orthogonal P preserves the text geometry: same Gram matrix
    assert torch.allclose(e @ e.T, text @ text.T, atol=1e-5)
    x = torch.randn(4, 10)
    z = basis(x)
    expected = torch.nn.functional.normalize(x, dim=-1) @ e.T
    assert torch.allclose(z, expected, atol=1e-6)
    assert z.abs().max() <= 1 + 1e-6


def test_residual_head_starts_as_the_basis_projection():
    text = torch.nn.functional.normalize(torch.randn(7, 10), dim=-1)
    basis = ConceptBasis(text, 10, mapping="fixed")
    head = ConceptHead(10, 7, (16,), residual=True)
    x = torch.randn(3, 10)
    assert torch.allclose(head(x, basis), basis(x), atol=1e-6)
    plain = ConceptHead(10, 7, (16,), residual=False)
    assert not torch.allclose(plain(x, basis), basis(x), atol=1e-3)
