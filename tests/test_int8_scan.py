"""The int8 scan: its candidates are exactly the best of its own integer scores (the group-maxima
shortcut loses none), its cosines are within the codes' error, and the in-memory backend built on
it ranks as exact search does."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from geoalign.inference import int8_scan
from geoalign.inference.int8_scan import Int8Codes
from geoalign.inference.search import GallerySearch


def _codes(x: torch.Tensor) -> Int8Codes:
    codes = Int8Codes.fit(x, capacity=len(x))
    codes.add(x)
    return codes


def _brute_force(codes: Int8Codes, q: torch.Tensor, depth: int) -> torch.Tensor:
    p, _ = codes._quantised_queries(q)
    scores = p.long() @ codes.codes[: codes.size].long().T
    return torch.topk(scores, depth, dim=1).values


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(1, 700),
    depth=st.integers(1, 40),
    scan_rows=st.sampled_from([16, 48, 100, 1_000]),
    seed=st.integers(0, 2**16),
)
def test_candidates_are_the_best_integer_scores(n, depth, scan_rows, seed):
    # any gallery size (groups cut short, chunks cut short), any depth: nothing is lost
    g = torch.Generator().manual_seed(seed)
    x = F.normalize(torch.randn(n, 24, generator=g), dim=-1)
    q = F.normalize(torch.randn(3, 24, generator=g), dim=-1)
    codes = _codes(x)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(int8_scan, "SCAN_ROWS", scan_rows)
        _, rows = codes.search(q, depth)
    want = _brute_force(codes, q, min(depth, n))
    p, _ = codes._quantised_queries(q)
    got = (p.long()[:, None, :] * codes.codes[rows].long()).sum(-1)
    assert rows.shape == (3, min(depth, n))
    assert torch.equal(got, want)  # the same scores, in descending order
    assert all(len(set(r.tolist())) == len(r) for r in rows)  # no row twice


def test_cosines_are_within_the_codes_error():
    g = torch.Generator().manual_seed(0)
    x = F.normalize(torch.randn(5_000, 512, generator=g), dim=-1)
    q = F.normalize(torch.randn(8, 512, generator=g), dim=-1)
    codes = _codes(x)
    cos, rows = codes.search(q, 50)
    true = (q[:, None, :] * x[rows]).sum(-1)
    # half a step per dimension on each side, summed in quadrature: ~1e-3 at 512-d
    assert (cos - true).abs().max() < 2e-3
    assert (cos[:, :-1] >= cos[:, 1:] - 1e-6).all()


def test_the_float_fallback_gives_the_same_candidates(monkeypatch):
    g = torch.Generator().manual_seed(1)
    x = F.normalize(torch.randn(3_000, 64, generator=g), dim=-1)
    q = F.normalize(torch.randn(5, 64, generator=g), dim=-1)
    codes = _codes(x)
    assert codes._int_mm  # this CPU's torch has the int8 product
    fast = codes.search(q, 20)
    codes._int_mm = False
    slow = codes.search(q, 20)
    assert torch.equal(fast[1], slow[1]) and torch.equal(fast[0], slow[0])


def test_capacity_is_enforced_and_trimmed():
    x = F.normalize(torch.randn(10, 8), dim=-1)
    codes = Int8Codes.fit(x, capacity=15)
    codes.add(x)
    with pytest.raises(ValueError, match="more embeddings than the 15 announced"):
        codes.add(x)
    codes.trim()
    assert codes.codes.shape == (10, 8)


def test_the_in_memory_int8_backend_ranks_as_exact_search_does():
    # (auto picks it beyond EXACT_MAX entries: 2M x 512 is too big for a unit test)
    g = torch.Generator().manual_seed(2)
    gallery = torch.randn(20_000, 128, generator=g)
    queries = gallery[:32] + 0.5 * torch.randn(32, 128, generator=g)
    exact = GallerySearch(gallery, 30.0).topk(queries, 5)
    scan = GallerySearch(gallery, 30.0, backend="int8")
    got = scan.topk(queries, 5)
    assert scan._rerank_rows is not None and scan._rerank_rows.dtype.name == "float32"
    assert torch.equal(got.indices, exact.indices)
    torch.testing.assert_close(got.logits, exact.logits, rtol=0, atol=1e-4)
    torch.testing.assert_close(got.probs, exact.probs, rtol=0.05, atol=1e-6)
    with pytest.raises(ValueError, match="subset the gallery first"):
        scan.topk(queries, 5, mask=torch.ones(20_000, dtype=torch.bool))
