"""Brute-force search over 8-bit codes of gallery embeddings: the candidates an exact rerank sorts.

Why a full scan rather than FAISS IVF for galleries of millions of points: on realistic queries
(a trained model's embeddings of held-out photos, far from any gallery point --
benchmarks/search_recall.py) the coarse quantiser is the weak part. Over 10M points IVF1054-SQ8
found the exact top-1 in a list it probed for 97% of queries only at 256 lists (52 ms/query),
and ranking lists by sampled members instead of centroids did not close the gap; location
embeddings are also too high-rank to shrink first (the top 128 of 512 principal directions hold
72% of their variance). Scanning every code costs one int8 matrix product per chunk, which
`torch._int_mm` runs on the CPU's int8 dot-product instructions (VNNI/AMX where present): about
1.3x a bfloat16 and 6x a float32 product here, with a quarter of float32's memory. torch has no
public int8 matrix product and FAISS's flat SQ8 scan scores one query at a time, hence the
private op (checked once; a float32 product of the same codes when it is missing).

Codes: per dimension d, x_d ~ offset_d + step_d * c_d with c_d in [-127, 127] (the range of a
training sample, clamped beyond). A query q is folded into the steps, q'_d = q_d * step_d,
and quantised per query to p = round(q' / s); then q . x ~ s * (p . c) + q . offset. Each
chunk's best `depth` candidates come from group maxima: the top `depth` scores of a chunk all
lie in the `depth` groups of `GROUP` consecutive rows with the largest maxima, so only those
groups' scores are sorted (a top-k over all 10M scores per query would cost more than the scan).
"""

from __future__ import annotations

import torch

GROUP = 16  # rows per group maximum
SCAN_ROWS = 262_144  # codes scored per matrix product: int32 scores of 64 queries = 64 MB
_LEVELS = 127


def _int_mm_works() -> bool:
    try:
        a = torch.ones(2, 8, dtype=torch.int8)
        return bool(torch._int_mm(a, a.T).eq(8).all())
    except (RuntimeError, AttributeError):
        return False


class Int8Codes:
    """A gallery's embeddings as int8 codes [N, D] (one byte per dimension) and their scan."""

    def __init__(self, offset: torch.Tensor, step: torch.Tensor, capacity: int) -> None:
        self.offset = offset.float()
        self.step = step.float()
        self.codes = torch.empty(capacity, len(offset), dtype=torch.int8)
        self.size = 0
        self._int_mm = _int_mm_works()

    @classmethod
    def fit(cls, sample: torch.Tensor, capacity: int) -> Int8Codes:
        """Per-dimension ranges from a sample of the (normalised) embeddings."""
        lo, hi = sample.float().aminmax(dim=0)
        step = ((hi - lo) / (2 * _LEVELS)).clamp_min(1e-8)
        return cls((lo + hi) / 2, step, capacity)

    def add(self, x: torch.Tensor) -> None:
        """Append the codes of embeddings `x` [n, D] (float)."""
        end = self.size + len(x)
        if end > len(self.codes):
            raise ValueError(f"more embeddings than the {len(self.codes):,} announced (total=)")
        codes = ((x.float() - self.offset) / self.step).round_().clamp_(-_LEVELS, _LEVELS)
        self.codes[self.size : end] = codes.to(torch.int8)
        self.size = end

    def trim(self) -> None:
        """Release the capacity not filled (a stream shorter than announced)."""
        if self.size < len(self.codes):
            self.codes = self.codes[: self.size].clone()

    def _quantised_queries(self, q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        folded = q.float() * self.step
        scale = (folded.abs().amax(dim=1, keepdim=True) / _LEVELS).clamp_min(1e-12)
        return (folded / scale).round_().to(torch.int8), scale

    def _scores(self, p: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        codes = self.codes[start:stop]
        if self._int_mm:
            return torch._int_mm(p, codes.T)
        return (p.float() @ codes.T.float()).round_().int()  # exact in float32: |sum| < 2^24

    def search(self, q: torch.Tensor, depth: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(approximate cosines [B, depth] in descending order, row numbers [B, depth]) of each
        query's best `depth` codes (fewer where the gallery holds fewer)."""
        depth = min(depth, self.size)
        p, scale = self._quantised_queries(q)
        b = len(q)
        kept_scores, kept_rows = [], []
        for start in range(0, self.size, SCAN_ROWS):
            stop = min(start + SCAN_ROWS, self.size)
            scores = self._scores(p, start, stop)
            n = stop - start
            n_groups = n // GROUP
            parts = []
            if n_groups:
                maxima = scores[:, : n_groups * GROUP].view(b, n_groups, GROUP).amax(dim=-1)
                best = torch.topk(maxima, min(depth, n_groups), dim=1).indices
                parts.append((best[:, :, None] * GROUP + torch.arange(GROUP)).reshape(b, -1))
            if n > n_groups * GROUP:  # the rows after the last whole group
                parts.append(torch.arange(n_groups * GROUP, n).expand(b, -1))
            rows = torch.cat(parts, dim=1)
            values, pos = torch.topk(scores.gather(1, rows), min(depth, rows.shape[1]), dim=1)
            kept_scores.append(values)
            kept_rows.append(rows.gather(1, pos) + start)
        values = torch.cat(kept_scores, dim=1)
        rows = torch.cat(kept_rows, dim=1)
        values, pos = torch.topk(values, depth, dim=1)
        cosines = scale * values.float() + q.float() @ self.offset[:, None]
        return cosines, rows.gather(1, pos)
