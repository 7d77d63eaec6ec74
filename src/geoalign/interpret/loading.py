"""Find and load the model an analysis is about: a concept-aware checkpoint, or GeoCLIP for
comparison (concept maps, embedding plots). Loading and the method decision are the registry's."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from geoalign.errors import DataError


def analysis_model(
    name_or_path: str | Path, *, require_concepts: bool = True
) -> tuple[Any, Path | str]:
    """(model in eval mode, its folder). GeoCLIP checkpoints only when `require_concepts` is False."""
    from geoalign.models.registry import load_checkpoint, load_model

    ckpt = load_checkpoint(name_or_path)
    where: Path | str = "geoclip" if str(name_or_path) == "geoclip" else ckpt.path
    if ckpt.method != "concept" and require_concepts:
        raise DataError(
            f"{ckpt.path} is a {ckpt.method!r} model without concept scores; this needs a "
            "concept-aware model (trained with a configs/concept/*.yaml config)"
        )
    if ckpt.method not in {"concept", "geoclip"}:
        raise DataError(
            f"{ckpt.path} is a {ckpt.method!r} model; concept maps read GeoCLIP-style models"
        )
    return load_model(ckpt), where


def stored_calibration(model_dir: str | Path) -> Any:
    """The calibration `geoalign calibrate` stored in a checkpoint (None: none), so that an
    explanation's location probabilities are the ones `geoalign predict` gives."""
    from geoalign.inference.calibration import stored_calibration as from_config
    from geoalign.models.registry import checkpoint_config

    return from_config(checkpoint_config(model_dir))
