"""What a prediction is: ranked candidates for one input, its point estimate and confidence
regions, or why it could not be read.

`Prediction.to_dict()` is the one JSON record of a prediction (schema `SCHEMA`), shared by the
CLI, the Python API and the service.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
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
    localizability_km: float | None = None  # equivalent radius of the 90% region
    abstained: str | None = None  # why no answer is given (the photo is not localizable enough)
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
            if self.localizability_km is not None:
                record["localizability_km"] = self.localizability_km
            if self.abstained is not None:
                record["abstained"] = self.abstained
        if settings is not None:
            record["settings"] = dict(settings)
        return record


def record_settings(
    *,
    model: str,
    backbone: str | None,
    gallery: str | None,
    top_k: int,
    prior: str | None = None,
    ten_crop: bool = False,
    places: bool = True,
    bf16: bool = False,
    half_gallery: bool = False,
    estimate: str | None = None,
    regions: list[float] | None = None,
    abstain_above_km: float | None = None,
    min_separation_km: float,
    retrieval_k: int = 0,
    train: str | None = None,
) -> dict[str, Any]:
    """The `settings` field of a record: every option that shapes a prediction, key for key the
    same from the CLI and the service (JSONL resume compares it), with file paths made absolute
    so that a rerun from another folder names the same model, gallery and training features."""
    if gallery == "auto":
        gallery = resolved_gallery(model)
    options: dict[str, Any] = {"model": model, "backbone": backbone, "gallery": gallery}
    for key in ("model", "gallery", "backbone"):
        value = options[key]
        if value is None:
            continue
        spec = value.split(":", 1)[1] if key == "backbone" and ":" in value else value
        if Path(spec).exists():
            options[key] = value.replace(spec, str(Path(spec).resolve()))
    return {
        **options,
        "top_k": top_k,
        "prior": prior,
        "ten_crop": ten_crop,
        "places": places,
        "bf16": bf16,
        "half_gallery": half_gallery,
        "estimate": estimate,
        "regions": regions,
        "abstain_above_km": abstain_above_km,
        "min_separation_km": min_separation_km,
        "retrieval_k": retrieval_k,
        "train": str(Path(train).resolve()) if train and Path(train).exists() else train,
    }


def resolved_gallery(model: str) -> str:
    """The gallery "auto" stands for with `model` (`registry.checkpoint_gallery`: the one the
    checkpoint records, else geoclip-100k), so that a record names the gallery it was searched
    in and a resumed run notices when the checkpoint's gallery changed; "auto" when the model
    cannot be read here (loading it reports why)."""
    from geoalign.errors import GeoalignError
    from geoalign.models.registry import checkpoint_gallery

    try:
        return checkpoint_gallery(model)
    except (GeoalignError, OSError):
        return "auto"


LOCALIZABILITY_P = 0.9


def localizability_km(distribution: Any) -> float:
    """How localizable a photo is: the radius of a disc with the area of its 90% region (km)."""
    import math

    return math.sqrt(distribution.region(LOCALIZABILITY_P, countries=False).area_km2 / math.pi)


def describe(
    distribution: Any,
    estimate: str | None,
    regions: tuple[float, ...],
    abstain_above_km: float | None = None,
) -> dict[str, Any]:
    """The estimate, region and abstention fields of a prediction from its distribution."""
    out: dict[str, Any] = {}
    if abstain_above_km is not None:
        radius = localizability_km(distribution)
        out["localizability_km"] = radius
        if radius > abstain_above_km:
            out["abstained"] = (
                f"the 90% region is as large as a disc of radius {radius:,.0f} km "
                f"(more than --abstain-above-km {abstain_above_km:g})"
            )
    if estimate:
        lat, lon = distribution.estimate(estimate)
        out["estimate"] = {"kind": estimate, "lat": float(lat), "lon": float(lon)}
    out["regions"] = [
        {**r.to_dict(), "summary": r.summary()} for r in (distribution.region(p) for p in regions)
    ]
    return out


def attach(
    prediction: Prediction,
    distribution: Any,
    estimate: str | None,
    regions: tuple[float, ...],
    abstain_above_km: float | None = None,
) -> None:
    """Give `prediction` its distribution and the fields `describe` derives from it."""
    prediction.distribution = distribution
    for key, value in describe(distribution, estimate, regions, abstain_above_km).items():
        setattr(prediction, key, value)


def ranked_candidates(
    rows: list[tuple[Any, Any, Any]], places: Any = None
) -> list[list[Candidate]]:
    """Candidates from per-query (indices [k], coordinates [k, 2], probabilities [k]); with a
    place finder (`geoalign.geo.places.PlaceFinder`), each named offline in one lookup."""
    import numpy as np

    names: list[Any] = []
    if places is not None:
        coords = np.concatenate([c for _, c, _ in rows]) if rows else np.zeros((0, 2))
        names = [p._asdict() for p in places.nearest(coords)]
    out, at = [], 0
    for idx, coords, probs in rows:
        out.append(
            [
                Candidate(
                    lat=float(coords[j, 0]),
                    lon=float(coords[j, 1]),
                    prob=float(probs[j]),
                    gallery_index=int(idx[j]),
                    place=names[at + j] if names else None,
                )
                for j in range(len(idx))
            ]
        )
        at += len(idx)
    return out
