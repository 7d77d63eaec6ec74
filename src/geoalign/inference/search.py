"""Top-k search of query embeddings against a gallery, with GeoCLIP's probabilities.

One component serves every model: exact batched matrix products for galleries up to
`EXACT_MAX` entries (the exact answer, and fastest there); beyond, a scan of 8-bit codes of every
entry (`int8_scan`) whose best candidates are re-scored exactly, or FAISS IVF on request. Probabilities are the softmax
of logit_scale · cosine over the (prior-masked) gallery, as GeoCLIP defines them. The approximate backends
do not score every entry exactly, so there the softmax denominator is the exact sum over the retrieved candidates plus an
unbiased estimate of the rest from a fixed random sample of the gallery.

The exact backend keeps its embeddings `feature_major` (one query's scores read them in the layout
a CPU matrix-vector product is fastest on). `precision="float16"` adds a half-precision copy for
small query batches: scoring one query is a pass over memory (100K x 512 float32 is 205 MB), so
half the bytes make the one-photo gallery stage faster still. A shortlist from the
half-precision scores is re-scored against the float32 embeddings, so the top-k are the exact ones
(unless more than 64 entries tie with them within ~1e-4 cosine); the rest of the softmax
denominator comes from the half-precision scores (~1e-4 relative error in the probabilities).
Batches of more than `HALF_MAX_QUERIES` use float32 (CPU half-precision GEMMs are slow). float32
alone is the default and what the conformance tests check.

Very large galleries (10M points: 20 GB as float32) are built with `GallerySearch.from_chunks`, which
streams embeddings into int8 codes (1 byte per dimension; `index="ivf"`: FAISS IVF-SQ8 instead)
and keeps only the denominator sample in float32. 8-bit codes alone cap recall@1 against exact
search near 0.75-0.95 on realistic queries (the quantisation error is larger than the gap between
near-duplicate gallery points), so by default the top `rerank` candidates are re-scored exactly,
as faiss's IndexRefine does, from float32 copies of the embeddings. Exactly: with float16 copies
4 of 256 realistic queries over 10M points (recall@1 0.984) returned a point 4e-6 cosine or less
below the exact top-1, a near-tie float16 cannot order. The copies live in an unlinked temporary
file read through a memory map rather than in an IndexRefine: they stay in the page cache
(reclaimable, never counted twice) or on disk, and a search reads only the rerank rows it needs.
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from geoalign.inference.int8_scan import Int8Codes
from geoalign.models.base import feature_major, is_feature_major

EXACT_MAX = 2_000_000
HALF_MAX_QUERIES = 4
_DENOM_SAMPLE = 16_384
DEFAULT_RERANK = 32  # 8-bit candidates re-scored exactly (recall: benchmarks/search_recall.py)
# lists probed by a streamed FAISS IVF index (from_chunks(index="ivf")): on realistic queries
# over 10M points (benchmarks/search_recall.py) the best recall within 50 ms/query on 2 CPU
# cores; 16, the earlier default, found the exact top-1 for 6 queries in 10
DEFAULT_NPROBE = 128
BACKENDS = ("exact", "int8", "faiss")
_RERANK_DTYPES = {"float16": np.float16, "float32": np.float32}


@dataclass
class SearchResult:
    indices: torch.Tensor  # [B, k] gallery row numbers
    probs: torch.Tensor  # [B, k] softmax probabilities over the searched gallery
    logits: torch.Tensor  # [B, k] logit_scale · cosine


class GallerySearch:
    """Searchable gallery embeddings. Embeddings are L2-normalised here once."""

    def __init__(
        self,
        embeddings: torch.Tensor,
        logit_scale: float,
        *,
        backend: str = "auto",
        faiss_nlist: int | None = None,
        faiss_nprobe: int = 32,
        precision: str = "float32",
        copy: bool = True,
    ) -> None:
        """`logit_scale`: the multiplier of cosines, `models.base.logit_scale` of the model (its
        temperature times any calibration factor), decided there and not here.
        `copy=False` normalises a float32 `embeddings` in place: no second gallery-sized
        buffer at start-up (205 MB for the 100K gallery), for callers that own the tensor."""
        if precision not in {"float32", "float16"}:
            raise ValueError(f"precision must be float32 or float16, got {precision!r}")
        n = embeddings.shape[0]
        self.backend = ("exact" if n <= EXACT_MAX else "int8") if backend == "auto" else backend
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be auto, {', '.join(BACKENDS)}, got {backend!r}")
        # exact scoring reads the embeddings feature-major (fastest for few queries); codes
        # and FAISS take them row by row
        layout = feature_major if self.backend == "exact" else torch.Tensor.contiguous
        in_layout = is_feature_major if self.backend == "exact" else torch.Tensor.is_contiguous
        if copy or embeddings.dtype != torch.float32 or not in_layout(embeddings):
            self.embeddings = layout(F.normalize(embeddings.float(), dim=-1))
        else:  # (an inference-mode tensor can only be updated in inference mode)
            with torch.inference_mode(embeddings.is_inference()):
                norms = torch.linalg.vector_norm(embeddings, dim=-1, keepdim=True)
                self.embeddings = embeddings.div_(norms.clamp_min_(1e-12))
        self.precision = precision
        # (half precision is fast row by row and ~10x slower feature-major on CPUs)
        self._half = (
            self.embeddings.to(torch.float16, memory_format=torch.contiguous_format)
            if precision == "float16"
            else None
        )
        self.scale = float(logit_scale)
        self._size = n
        self._faiss = None
        self._nlist = faiss_nlist or max(1, int(4 * math.sqrt(n)))
        self._nprobe = faiss_nprobe
        self._rerank = 0  # IVF-Flat over float32 scores exactly: nothing to re-score
        self._rerank_rows: np.ndarray | None = None
        self._codes: Int8Codes | None = None
        if self.backend == "int8":  # re-scored exactly from the float32 embeddings held here
            self._rerank, self._rerank_rows = DEFAULT_RERANK, self.embeddings.numpy()
            rng = np.random.default_rng(0)
            fit = rng.choice(n, size=min(n, 500_000), replace=False)
            self._codes = Int8Codes.fit(self.embeddings[np.sort(fit)], capacity=n)
            for part in self.embeddings.split(500_000):
                self._codes.add(part)
            self._set_sample(rng)

    def __len__(self) -> int:
        return self._size

    @classmethod
    def from_chunks(
        cls,
        chunks: Iterable[torch.Tensor],
        logit_scale: float,
        *,
        total: int,
        index: str = "int8",
        nlist: int | None = None,
        nprobe: int = DEFAULT_NPROBE,
        quantizer: str = "SQ8",
        seed: int = 0,
        rerank: int | None = None,
        rerank_dtype: str = "float32",
        rerank_dir: str | os.PathLike | None = None,
    ) -> GallerySearch:
        """A gallery streamed from embedding chunks of `total` rows, never held as float32.

        `index`: "int8" (default) scans int8 codes of every entry (1 byte/dim; the first chunk
        sets their ranges); "ivf" builds FAISS IVF`nlist`,`quantizer` (the first chunk trains
        the coarse quantiser), probing `nprobe` lists. Over 10M points on realistic queries the
        int8 scan was both more accurate and faster (benchmarks/search_recall.py).
        `quantizer` (IVF only): "SQ8" (1 byte/dim), "SQfp16" (2 bytes/dim) or "Flat" (4 bytes).
        `rerank`: how many of the top candidates per query are re-scored with exact inner
        products against `rerank_dtype` copies of the embeddings (kept in a temporary file in
        `rerank_dir`, default the system temp folder); None = `DEFAULT_RERANK` for quantised
        codes and 0 for IVF-Flat, whose scores are already exact; 0 = no rerank, no copies.
        float32 copies (4 bytes/dim, 20 GB at 10M x 512) make the rerank exact; "float16" halves
        the disk and scores within ~1e-5 cosine of float32, so near-ties can swap.
        """
        import faiss

        if index not in {"int8", "ivf"}:
            raise ValueError(f"index must be int8 or ivf, got {index!r}")
        if rerank is None:
            rerank = 0 if index == "ivf" and quantizer == "Flat" else DEFAULT_RERANK
        if rerank < 0:
            raise ValueError(f"rerank must be >= 0 (0 = off), got {rerank}")
        if rerank_dtype not in _RERANK_DTYPES:
            raise ValueError(f"rerank_dtype must be float16 or float32, got {rerank_dtype!r}")
        store = tempfile.TemporaryFile(dir=rerank_dir) if rerank else None  # unlinked at once
        self = cls.__new__(cls)
        self.scale = float(logit_scale)
        self.backend = "int8" if index == "int8" else "faiss"
        self._size = 0
        self._codes = None
        self._nprobe = nprobe
        self._nlist = nlist or max(1, int(math.sqrt(total) / 3))
        rng = np.random.default_rng(seed)
        sample_rate = min(1.0, _DENOM_SAMPLE / max(total, 1))
        samples: list[torch.Tensor] = []
        sample_idx: list[np.ndarray] = []
        ivf = None
        d = 0
        for chunk in chunks:
            x_t = F.normalize(chunk.float(), dim=-1).contiguous()
            x = x_t.numpy()
            if not d:
                d = x.shape[1]
                if index == "int8":
                    self._codes = Int8Codes.fit(x_t, capacity=total)
                else:
                    ivf = faiss.index_factory(
                        d, f"IVF{self._nlist},{quantizer}", faiss.METRIC_INNER_PRODUCT
                    )
                    pick = rng.choice(len(x), size=min(len(x), 50 * self._nlist), replace=False)
                    ivf.train(x[pick])
            if self._codes is not None:
                self._codes.add(x_t)
            else:
                ivf.add(x)
            if store is not None:  # plain writes: the copies never become resident here
                store.write(x.astype(_RERANK_DTYPES[rerank_dtype]).tobytes())
            pick = np.flatnonzero(rng.random(len(x)) < sample_rate)
            samples.append(torch.from_numpy(x[pick]))
            sample_idx.append(pick + self._size)
            self._size += len(x)
        if not d:
            raise ValueError("from_chunks: no embeddings given")
        if self._codes is not None:
            self._codes.trim()
        else:
            ivf.nprobe = nprobe
        self._faiss = ivf
        self._sample = torch.from_numpy(np.concatenate(sample_idx))
        self._sample_emb = torch.cat(samples)
        self.embeddings = None  # not kept: that is the point of streaming
        self._rerank = rerank
        self._rerank_file = store
        self._rerank_rows = None
        if store is not None:
            store.flush()
            self._rerank_rows = np.memmap(
                store, dtype=_RERANK_DTYPES[rerank_dtype], mode="r", shape=(self._size, d)
            )
        return self

    def tune(self, *, nprobe: int | None = None, rerank: int | None = None) -> None:
        """Change an approximate gallery's rerank depth, and a FAISS one's lists probed, without
        rebuilding it (the recall/latency curve of benchmarks/search_recall.py is measured so)."""
        if self.backend == "exact":
            raise ValueError("tune: an exact gallery has no nprobe or rerank depth")
        if nprobe is not None:
            if self.backend != "faiss":
                raise ValueError("tune: the int8 scan reads every code; nprobe is FAISS IVF's")
            if nprobe < 1:
                raise ValueError(f"nprobe must be >= 1, got {nprobe}")
            self._nprobe = nprobe
            if self._faiss is not None:
                self._faiss.nprobe = nprobe
        if rerank is not None:
            if rerank < 0:
                raise ValueError(f"rerank must be >= 0 (0 = off), got {rerank}")
            if rerank and self._rerank_rows is None:
                raise ValueError(
                    "tune: this gallery keeps no copies to rerank from: build it with "
                    "from_chunks(..., rerank=N)"
                )
            self._rerank = rerank

    # -- exact -----------------------------------------------------------------------------------
    def _exact(self, q: torch.Tensor, k: int, mask: torch.Tensor | None) -> SearchResult:
        half = self._half is not None and q.shape[0] <= HALF_MAX_QUERIES
        emb = (self._half if half else self.embeddings).to(q.device)
        logits = self.scale * (q.to(emb.dtype) @ emb.T).float()
        if mask is not None:
            logits = logits.masked_fill(~mask.to(logits.device), float("-inf"))
        if half:
            return self._rescored(q, k, logits)
        log_z = torch.logsumexp(logits, dim=-1, keepdim=True)
        top, idx = torch.topk(logits, k, dim=-1)
        return SearchResult(idx, torch.exp(top - log_z), top)

    def _rescored(self, q: torch.Tensor, k: int, logits: torch.Tensor) -> SearchResult:
        """Half-precision scores shortlist; the shortlist is scored again in float32."""
        n_short = min(logits.shape[-1], max(4 * k, 64))
        _, short = torch.topk(logits, n_short, dim=-1)  # [B, S]
        emb = self.embeddings.to(q.device)
        exact = self.scale * torch.einsum("bd,bsd->bs", q.float(), emb[short])
        exact = exact.masked_fill(torch.isinf(logits.gather(-1, short)), float("-inf"))
        logits = logits.scatter(-1, short, exact)
        log_z = torch.logsumexp(logits, dim=-1, keepdim=True)
        top, pos = torch.topk(exact, k, dim=-1)
        return SearchResult(short.gather(-1, pos), torch.exp(top - log_z), top)

    # -- FAISS -----------------------------------------------------------------------------------
    def _build_faiss(self):
        import faiss

        d = self.embeddings.shape[1]
        x = self.embeddings.numpy()
        quantizer = faiss.IndexFlatIP(d)
        index = faiss.IndexIVFFlat(quantizer, d, self._nlist, faiss.METRIC_INNER_PRODUCT)
        rng = np.random.default_rng(0)
        train = x[rng.choice(len(x), size=min(len(x), 64 * self._nlist), replace=False)]
        index.train(train)
        index.add(x)
        index.nprobe = self._nprobe
        self._faiss = index
        self._set_sample(rng)

    def _set_sample(self, rng: np.random.Generator) -> None:
        """The fixed random sample of the gallery that estimates the softmax denominator."""
        n = len(self.embeddings)
        sample = rng.choice(n, size=min(n, _DENOM_SAMPLE), replace=False)
        self._sample = torch.from_numpy(np.sort(sample))
        self._sample_emb = self.embeddings[self._sample]

    def _approx(self, q: torch.Tensor, k: int, mask: torch.Tensor | None) -> SearchResult:
        if mask is not None:
            raise ValueError(
                f"priors with a {self.backend} gallery: subset the gallery first (Gallery.subset)"
            )
        n_cand = max(k, 256)  # the local mass is summed exactly; only the far tail is estimated
        rerank = self._rerank
        if rerank:
            n_cand = max(n_cand, rerank)
        if self._codes is not None:
            sims_t, idx_t = self._codes.search(q.float().cpu(), n_cand)
        else:
            if self._faiss is None:
                self._build_faiss()
            sims, idx = self._faiss.search(q.float().cpu().numpy(), n_cand)
            sims_t, idx_t = torch.from_numpy(sims), torch.from_numpy(idx)
        if rerank:
            sims_t, idx_t = self._reranked(q, sims_t, idx_t, max(k, rerank))
        logits = self.scale * sims_t
        # Partition function: exact over the candidates + sample estimate of everything else.
        sample_logits = self.scale * (q.float().cpu() @ self._sample_emb.T)
        in_cand = self._sample_hits(idx_t)
        sample_logits = sample_logits.masked_fill(in_cand, float("-inf"))
        rest = max(len(self) - idx_t.shape[1], 0)  # (a small gallery: every entry a candidate)
        n_sample = (~in_cand).sum(-1, keepdim=True).clamp(min=1)
        log_rest = torch.logsumexp(sample_logits, -1, keepdim=True) + math.log(max(rest, 1e-300))
        log_rest = log_rest - torch.log(n_sample)
        log_z = torch.logaddexp(torch.logsumexp(logits, -1, keepdim=True), log_rest)
        top = logits[:, :k]
        return SearchResult(idx_t[:, :k], torch.exp(top - log_z), top)

    def _sample_hits(self, idx: torch.Tensor) -> torch.Tensor:
        """bool [B, S]: which denominator-sample entries are among each query's candidates.

        The sample's row numbers are sorted, so a binary search per candidate does it in
        O(B·C·log S) instead of a [B, S, C] comparison (268 MB for a batch of 64)."""
        sample = self._sample
        hits = torch.zeros(idx.shape[0], len(sample), dtype=torch.bool)
        if len(sample) == 0:
            return hits
        pos = torch.searchsorted(sample, idx).clamp_max(len(sample) - 1)
        found = sample[pos] == idx
        rows = torch.arange(idx.shape[0])[:, None].expand_as(pos)
        hits[rows[found], pos[found]] = True
        return hits

    def _reranked(
        self, q: torch.Tensor, sims: torch.Tensor, idx: torch.Tensor, depth: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The first `depth` candidates re-scored exactly and re-sorted (the rest keep FAISS's
        scores, which only enter the softmax denominator)."""
        head = idx[:, :depth]
        valid = head >= 0  # FAISS pads with -1 when the probed lists hold too few entries
        flat = head.clamp_min(0).reshape(-1).numpy()
        order = np.argsort(flat, kind="stable")  # sorted reads: sequential where rows are close
        rows = np.empty((len(flat), self._rerank_rows.shape[1]), dtype=np.float32)
        rows[order] = self._rerank_rows[flat[order]]
        rows_t = torch.from_numpy(rows).view(*head.shape, -1)
        exact = torch.einsum("bd,bsd->bs", q.float().cpu(), rows_t)
        exact = exact.masked_fill(~valid, float("-inf"))
        exact, pos = torch.sort(exact, dim=-1, descending=True)
        sims = torch.cat([exact, sims[:, depth:]], dim=-1)
        idx = torch.cat([head.gather(-1, pos), idx[:, depth:]], dim=-1)
        return sims, idx

    @torch.inference_mode()
    def topk(
        self,
        queries: torch.Tensor,
        k: int = 5,
        mask: torch.Tensor | None = None,
        *,
        normalized_queries: bool = False,
    ) -> SearchResult:
        """Top-k gallery entries per query; `mask` (bool [M]) restricts the gallery (a prior).

        `normalized_queries=True` uses the queries as given: for the mean of normalised crop
        embeddings this makes the logits the mean of the crops' logits (ten-crop).
        """
        if queries.ndim == 1:
            queries = queries[None]
        n_allowed = len(self) if mask is None else int(mask.sum())
        if n_allowed == 0:
            raise ValueError("the prior leaves no gallery entry to search")
        k = min(k, n_allowed)
        q = queries.float() if normalized_queries else F.normalize(queries.float(), dim=-1)
        if self.backend == "exact":
            return self._exact(q, k, mask)
        return self._approx(q, k, mask)
