"""Find and load the model an analysis is about: a concept-aware checkpoint, or GeoCLIP for
comparison (concept maps, embedding plots)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from geoalign.errors import DataError, WeightsNotFoundError

# where training runs put the exported model, in order of preference
_RUN_SUBDIRS = ("model", "last", "best")


def resolve_model_dir(name_or_path: str | Path) -> Path | str:
    """A checkpoint folder, a run folder holding one (model/, last/ or best/), or "geoclip"."""
    if str(name_or_path) == "geoclip":
        return "geoclip"
    path = Path(name_or_path).expanduser()
    if (path / "config.json").is_file() and (path / "model.safetensors").is_file():
        return path
    for sub in _RUN_SUBDIRS:
        if (path / sub / "config.json").is_file():
            return path / sub
    raise WeightsNotFoundError(
        f"no geoalign checkpoint at {path} (looked for config.json + model.safetensors there and "
        f"in {', '.join(s + '/' for s in _RUN_SUBDIRS)}); train one with "
        "`geoalign train configs/concept/quickstart.yaml`"
    )


def checkpoint_method(path: Path | str) -> str:
    if str(path) == "geoclip":
        return "geoclip"
    return json.loads((Path(path) / "config.json").read_text()).get("method", "geoclip")


def load_model(
    name_or_path: str | Path, *, require_concepts: bool = True
) -> tuple[Any, Path | str]:
    """(model in eval mode, its folder). GeoCLIP checkpoints only when `require_concepts` is False."""
    path = resolve_model_dir(name_or_path)
    method = checkpoint_method(path)
    if method == "concept":
        from geoalign.models.concept import ConceptAwareGeoCLIP

        return ConceptAwareGeoCLIP.load(path).eval(), path
    if require_concepts:
        raise DataError(
            f"{path} is a {method!r} model without concept scores; this needs a concept-aware model "
            "(trained with a configs/concept/*.yaml config)"
        )
    if method != "geoclip":
        raise DataError(f"{path} is a {method!r} model; concept maps read GeoCLIP-style models")
    from geoalign.models.geoclip import GeoCLIP

    return GeoCLIP.load(path).eval(), path


def model_features(model: Any) -> str | None:
    """The features the model's image head reads (a backbone spec or the scene-label name)."""
    return getattr(model.config, "features", None)
