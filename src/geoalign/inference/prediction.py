"""What a prediction is: ranked candidates for one input, or why it could not be read.

`Prediction.to_dict()` is the one JSON record of a prediction, shared by the CLI, the Python API
and (later) the service.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Candidate:
    lat: float
    lon: float
    prob: float
    gallery_index: int  # gallery row, or finest-cell index for cell classifiers
    place: dict[str, Any] | None = None


@dataclass
class Prediction:
    """Top-k candidates for one input, or the reason it could not be read."""

    source: str
    candidates: list[Candidate] = field(default_factory=list)
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_dict(self) -> dict[str, Any]:
        if self.error is not None:
            return {"source": self.source, "error": self.error}
        return {
            "source": self.source,
            "predictions": [
                {
                    "lat": c.lat,
                    "lon": c.lon,
                    "prob": c.prob,
                    **({"place": c.place} if c.place else {}),
                }
                for c in self.candidates
            ],
        }
