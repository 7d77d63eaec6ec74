import pytest
import torch

from geoalign.inference.search import GallerySearch


def _clustered(n: int, d: int = 32, n_centres: int = 200, seed: int = 0) -> torch.Tensor:
    """Embeddings with geographic-like structure: tight clusters around many centres."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(n_centres, d, generator=g)
    assign = torch.randint(0, n_centres, (n,), generator=g)
    return centres[assign] + 0.15 * torch.randn(n, d, generator=g)


def _softmax_reference(gallery, queries, scale, mask=None):
    g = torch.nn.functional.normalize(gallery, dim=-1)
    q = torch.nn.functional.normalize(queries, dim=-1)
    logits = scale * q @ g.T
    if mask is not None:
        logits[:, ~mask] = -torch.inf
    return logits.softmax(-1)


def test_exact_topk_matches_full_softmax():
    gallery, queries = _clustered(3000), _clustered(10, seed=1)
    probs = _softmax_reference(gallery, queries, 30.0)
    res = GallerySearch(gallery, 30.0).topk(queries, 5)
    top, idx = probs.topk(5, dim=-1)
    torch.testing.assert_close(res.indices, idx)
    torch.testing.assert_close(res.probs, top, rtol=1e-5, atol=1e-7)


def test_mask_restricts_and_renormalises():
    gallery, queries = _clustered(1000), _clustered(4, seed=2)
    mask = torch.zeros(1000, dtype=torch.bool)
    mask[::7] = True
    res = GallerySearch(gallery, 20.0).topk(queries, 3, mask=mask)
    assert mask[res.indices].all()
    ref = _softmax_reference(gallery, queries, 20.0, mask)
    torch.testing.assert_close(res.probs, ref.topk(3, dim=-1).values, rtol=1e-5, atol=1e-7)
    with pytest.raises(ValueError, match="no gallery entry"):
        GallerySearch(gallery, 20.0).topk(queries, 3, mask=torch.zeros(1000, dtype=torch.bool))


def test_normalized_queries_average_logits():
    gallery = _clustered(500)
    crops = torch.nn.functional.normalize(_clustered(10, seed=3), dim=-1)
    s = GallerySearch(gallery, 25.0)
    mean_logits = (25.0 * crops @ torch.nn.functional.normalize(gallery, dim=-1).T).mean(0)
    res = s.topk(crops.mean(0, keepdim=True), 3, normalized_queries=True)
    torch.testing.assert_close(res.indices[0], mean_logits.topk(3).indices)
    torch.testing.assert_close(
        res.probs[0], mean_logits.softmax(-1).topk(3).values, rtol=1e-5, atol=1e-7
    )


@pytest.mark.parametrize(("index", "quantizer"), [("ivf", "Flat"), ("ivf", "SQ8"), ("int8", "")])
def test_streamed_from_chunks_agrees_with_exact(index, quantizer):
    gallery = _clustered(40_000)
    queries = gallery[torch.randperm(40_000, generator=torch.Generator().manual_seed(4))[:32]]
    queries = queries + 0.05 * torch.randn(queries.shape)
    exact = GallerySearch(gallery, 30.0).topk(queries, 5)
    approx = GallerySearch.from_chunks(
        gallery.split(7_000),
        30.0,
        total=40_000,
        index=index,
        **({"nlist": 64, "nprobe": 16, "quantizer": quantizer} if index == "ivf" else {}),
    ).topk(queries, 5)
    recall = (approx.indices[:, 0] == exact.indices[:, 0]).float().mean().item()
    assert recall >= 0.9
    same = approx.indices[:, 0] == exact.indices[:, 0]
    rel = ((approx.probs[same, 0] - exact.probs[same, 0]).abs() / exact.probs[same, 0]).max()
    assert rel < 0.1  # estimated partition function + quantised similarities
    assert (approx.probs.sum(-1) <= 1.0 + 1e-6).all()
    assert (approx.probs[:, :-1] >= approx.probs[:, 1:]).all()


def test_half_precision_copy_gives_the_same_topk_for_single_queries():
    torch.manual_seed(3)
    emb = torch.randn(20_000, 64)
    queries = emb[:32] + 0.3 * torch.randn(32, 64)
    full = GallerySearch(emb, 30.0)
    half = GallerySearch(emb, 30.0, precision="float16")
    mask = torch.rand(20_000) < 0.5
    for m in (None, mask):
        for i in range(len(queries)):
            a, b = full.topk(queries[i], 5, mask=m), half.topk(queries[i], 5, mask=m)
            assert torch.equal(a.indices, b.indices)
            torch.testing.assert_close(b.probs, a.probs, rtol=1e-3, atol=1e-7)
            torch.testing.assert_close(b.logits, a.logits, rtol=1e-5, atol=1e-5)
    # batches use float32 alone: identical results
    a, b = full.topk(queries, 5), half.topk(queries, 5)
    assert torch.equal(a.indices, b.indices) and torch.equal(a.probs, b.probs)
    with pytest.raises(ValueError, match="precision"):
        GallerySearch(emb, 30.0, precision="int8")
