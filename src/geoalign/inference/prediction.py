"""What a prediction is: ranked candidates for one input, its point estimate and confidence
regions, or why it could not be read.

`Prediction.to_dict()` is the one JSON record of a prediction (schema `SCHEMA`), shared by the
CLI, the Python API and the service.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

SCHEMA = "geoalign.prediction/v1"


@dataclass
class Candidate:
    lat: float
    lon: float
    prob: float
    gallery_index: int  # gallery row, or finest-cell index for cell classifiers
    place: dict[str, Any] | None = None


@dataclass
class Prediction:
    """Top-k candidates for one input, or the reason it could not be read.

    With estimates or regions asked for, `estimate` is {"kind", "lat", "lon"}, `regions` one dict
    per p (area, mass, countries, summary) and `distribution` the full
    `geoalign.inference.distribution.Distribution` (Python only; not serialised)."""

    source: str
    candidates: list[Candidate] = field(default_factory=list)
    error: str | None = None
    estimate: dict[str, Any] | None = None
    regions: list[dict[str, Any]] = field(default_factory=list)
    distribution: Any = field(default=None, repr=False)

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_dict(self, settings: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The JSON record: schema, source, then the error or the ranked candidates (and the
        estimate and regions when computed), then the settings that shaped it."""
        record: dict[str, Any] = {"schema": SCHEMA, "source": self.source}
        if self.error is not None:
            record["error"] = self.error
        else:
            record["predictions"] = [
                {
                    "rank": rank,
                    "lat": float(c.lat),
                    "lon": float(c.lon),
                    "prob": float(c.prob),
                    "gallery_index": int(c.gallery_index),
                    **({"place": c.place} if c.place else {}),
                }
                for rank, c in enumerate(self.candidates, 1)
            ]
            if self.estimate is not None:
                record["estimate"] = self.estimate
            if self.regions:
                record["regions"] = self.regions
        if settings is not None:
            record["settings"] = dict(settings)
        return record


def describe(distribution: Any, estimate: str | None, regions: tuple[float, ...]) -> dict[str, Any]:
    """The estimate and region fields of a prediction from its distribution."""
    out: dict[str, Any] = {}
    if estimate:
        lat, lon = distribution.estimate(estimate)
        out["estimate"] = {"kind": estimate, "lat": float(lat), "lon": float(lon)}
    out["regions"] = [
        {**r.to_dict(), "summary": r.summary()} for r in (distribution.region(p) for p in regions)
    ]
    return out
