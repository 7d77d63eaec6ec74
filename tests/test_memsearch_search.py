"""The streamed galleries' exact rerank (int8 scan and FAISS IVF-SQ8): it recovers the exact
top-1 that quantisation loses."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from geoalign.inference.search import DEFAULT_RERANK, GallerySearch


def _near_duplicates(
    seed: int = 0, dups: int = 60, spread: float = 1e-2, dim: int = 64
) -> tuple[torch.Tensor, torch.Tensor]:
    """4,000 random points plus, for each of 16 queries, `dups` points `spread` away: their
    cosines differ by less than SQ8's step, so the quantised order among them is noise."""
    g = torch.Generator().manual_seed(seed)
    background = torch.randn(4_000, dim, generator=g)
    centres = F.normalize(torch.randn(16, dim, generator=g), dim=-1)
    clusters = centres[:, None] + spread * torch.randn(16, dups, dim, generator=g)
    gallery = torch.cat([background, clusters.reshape(-1, dim)])
    gallery = gallery[torch.randperm(len(gallery), generator=g)]
    queries = centres + 1e-3 * torch.randn(16, dim, generator=g)
    return gallery, queries


def _build(gallery: torch.Tensor, index: str = "ivf", **kw) -> GallerySearch:
    ivf = {"nlist": 8, "nprobe": 8} if index == "ivf" else {}
    return GallerySearch.from_chunks(
        gallery.split(1_500), 30.0, total=len(gallery), index=index, **ivf, **kw
    )


@pytest.mark.parametrize(("index", "fewest_lost"), [("ivf", 8), ("int8", 3)])
@pytest.mark.parametrize(("dtype", "seed", "dim"), [("float32", 0, 64), ("float16", 2, 512)])
def test_rerank_returns_the_exact_top1_where_codes_alone_do_not(
    index, fewest_lost, dtype, seed, dim
):
    # (float16 copies score within ~4e-5 cosine: exact at CLIP-like widths, not at 64-d)
    gallery, queries = _near_duplicates(seed, dim=dim)
    exact = GallerySearch(gallery, 30.0).topk(queries, 5)
    # every list probed / every code scanned: only the 8-bit codes are at fault
    plain = _build(gallery, index, rerank=0).topk(queries, 5)
    refined = _build(gallery, index, rerank=64, rerank_dtype=dtype).topk(queries, 5)
    assert (plain.indices[:, 0] != exact.indices[:, 0]).sum() >= fewest_lost
    assert torch.equal(refined.indices[:, 0], exact.indices[:, 0])  # (lower ranks may tie)
    tol = 30.0 * (1e-6 if dtype == "float32" else 1e-4)
    torch.testing.assert_close(refined.logits, exact.logits, rtol=0, atol=tol)
    # the partition function is still estimated (candidates + a sample); probabilities stay sane
    assert (refined.probs.sum(-1) <= 1.0 + 1e-6).all()
    assert (refined.probs[:, :-1] >= refined.probs[:, 1:]).all()


@pytest.mark.parametrize("index", ["ivf", "int8"])
def test_rerank_is_on_by_default_for_quantised_codes_and_tunable(index):
    gallery, queries = _near_duplicates(3, dups=DEFAULT_RERANK // 2)
    exact = GallerySearch(gallery, 30.0).topk(queries, 1).indices
    built = _build(gallery, index)
    assert built._rerank == DEFAULT_RERANK
    assert torch.equal(built.topk(queries, 1).indices, exact)
    built.tune(rerank=0)
    assert not torch.equal(built.topk(queries, 1).indices, exact)
    built.tune(rerank=64)
    assert torch.equal(built.topk(queries, 1).indices, exact)


def test_the_int8_scan_is_the_streamed_default_and_has_no_lists_to_probe():
    gallery, _ = _near_duplicates()
    built = GallerySearch.from_chunks(gallery.split(1_500), 30.0, total=len(gallery))
    assert built.backend == "int8" and built._faiss is None
    with pytest.raises(ValueError, match="nprobe is FAISS IVF's"):
        built.tune(nprobe=8)
    with pytest.raises(ValueError, match="index must be int8 or ivf"):
        GallerySearch.from_chunks(gallery.split(1_500), 30.0, total=len(gallery), index="hnsw")


def test_rerank_options_are_checked():
    gallery, _ = _near_duplicates()
    flat = _build(gallery, quantizer="Flat")  # exact scores already: no copies by default
    assert flat._rerank == 0 and flat._rerank_rows is None
    with pytest.raises(ValueError, match="from_chunks\\(..., rerank=N\\)"):
        flat.tune(rerank=16)
    with pytest.raises(ValueError, match="rerank must be >= 0"):
        _build(gallery, rerank=-1)
    with pytest.raises(ValueError, match="rerank_dtype"):
        _build(gallery, rerank_dtype="int8")
    with pytest.raises(ValueError, match="an exact gallery has no nprobe"):
        GallerySearch(gallery, 30.0).tune(nprobe=4)


def test_rerank_copies_live_in_an_unlinked_file_in_rerank_dir(tmp_path):
    gallery, queries = _near_duplicates()
    index = _build(gallery, rerank=16, rerank_dir=tmp_path)
    assert list(tmp_path.iterdir()) == []  # nothing left behind, even while in use
    assert index._rerank_rows.shape == gallery.shape
    torch.testing.assert_close(
        torch.from_numpy(index._rerank_rows[:5].astype("float32")),
        F.normalize(gallery[:5], dim=-1),
        rtol=0,
        atol=1e-3,
    )


def test_sample_hits_match_the_brute_force_comparison():
    gallery, _ = _near_duplicates()
    index = _build(gallery, rerank=0)
    g = torch.Generator().manual_seed(5)
    idx = torch.randint(-1, len(gallery), (8, 300), generator=g)
    idx[:, :50] = index._sample[torch.randint(0, len(index._sample), (8, 50), generator=g)]
    brute = (index._sample[None, :, None] == idx[:, None, :]).any(-1)
    assert brute.sum() >= 8 * 50 // 2
    assert torch.equal(index._sample_hits(idx), brute)
