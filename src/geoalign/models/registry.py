"""One registry of methods and the one place that decides which method a checkpoint is.

Like open_clip's and torchgeo's registries: a method name maps to its model class; a checkpoint's
config.json names its method; `load_model` reads config.json and the weights once and hands the
`Checkpoint` to that class's `from_checkpoint`. Named weights (the official GeoCLIP) resolve
through `geoalign.models.weights`. Other code never reads "method" out of a config itself.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from geoalign.errors import WeightsNotFoundError
from geoalign.models.checkpoint import Checkpoint, find_checkpoint_dir, read_config, read_state
from geoalign.models.weights import NAMED_WEIGHTS, named_weights_dir

# method name -> "module:Class" (imported on first use, so reading a config imports no model)
_METHODS: dict[str, str] = {
    "geoclip": "geoalign.models.geoclip:GeoCLIP",
    "concept": "geoalign.models.concept:ConceptAwareGeoCLIP",
    "geosurge": "geoalign.models.geosurge:GeoSurge",
}


def register_method(name: str, target: str | type) -> None:
    """Plug a new method in: `target` is a class with `from_checkpoint(ckpt, **kwargs)` that
    implements `geoalign.models.base.Locator`, or its "module:Class" path."""
    if isinstance(target, type):
        target = f"{target.__module__}:{target.__qualname__}"
    _METHODS[name] = target


def methods() -> list[str]:
    return sorted(_METHODS)


def method_class(method: str) -> type:
    if method not in _METHODS:
        raise WeightsNotFoundError(
            f"unknown method {method!r} in the checkpoint's config.json (known: {methods()})"
        )
    module, _, name = _METHODS[method].partition(":")
    return getattr(importlib.import_module(module), name)


def resolve_checkpoint_dir(name_or_path: str | Path) -> Path:
    """The folder of a named checkpoint ('geoclip'), a checkpoint folder, or a run folder."""
    named = named_weights_dir(str(name_or_path)) if str(name_or_path) in NAMED_WEIGHTS else None
    return named if named is not None else find_checkpoint_dir(name_or_path)


def checkpoint_config(name_or_path: str | Path) -> dict[str, Any]:
    """config.json of a checkpoint (named, folder or run folder) without its weights."""
    return read_config(resolve_checkpoint_dir(name_or_path))


def checkpoint_method(name_or_path: str | Path | dict[str, Any]) -> str:
    """The method that made a checkpoint (or a config.json dict): the one place this is decided."""
    config = name_or_path if isinstance(name_or_path, dict) else checkpoint_config(name_or_path)
    method = str(config.get("method", "geoclip"))
    if method not in _METHODS:
        raise WeightsNotFoundError(f"unknown method {method!r} (known: {methods()})")
    return method


def checkpoint_reads(config: dict[str, Any]) -> str:
    """What a checkpoint's image side reads, from its config.json: "features" (precomputed
    backbone features, from a feature store) or its `visual` (GeoSURGE "backbone" or "fusion":
    photos through the backbone block it trained, which features cannot stand in for)."""
    return str(config.get(checkpoint_method(config), {}).get("visual", "features"))


def model_features(model: Any) -> str | None:
    """The backbone (or feature spec) a model's image side reads (None: not recorded), from a
    loaded Locator, a config.json dict, or a checkpoint name or path (its config.json alone: no
    weights are read)."""
    if hasattr(model, "backbone_spec"):
        return model.backbone_spec
    config = model if isinstance(model, dict) else checkpoint_config(model)
    features = config.get("geoclip", {}).get("features")
    return features or config.get("backbone")


DEFAULT_GALLERY = "geoclip-100k"


def checkpoint_gallery(name_or_path: str | Path, config: dict[str, Any] | None = None) -> str:
    """The gallery a checkpoint records (training writes the one its evaluation used; a file
    saved beside the weights is named relative to them), else geoclip-100k: the one default
    every command and the Python API share."""
    folder = resolve_checkpoint_dir(name_or_path)
    recorded = (read_config(folder) if config is None else config).get("gallery")
    if not recorded:
        return DEFAULT_GALLERY
    beside = folder / str(recorded)
    return str(beside) if not Path(str(recorded)).is_absolute() and beside.is_file() else recorded


def load_checkpoint(name_or_path: str | Path = "geoclip") -> Checkpoint:
    """config.json and tensors of a checkpoint, each read once."""
    folder = resolve_checkpoint_dir(name_or_path)
    config = read_config(folder)
    return Checkpoint(folder, config, read_state(folder), checkpoint_method(config))


def load_model(name_or_path: str | Path | Checkpoint = "geoclip", **kwargs: Any) -> Any:
    """The model a checkpoint holds, as its method's class, in eval mode.

    kwargs go to the class's `from_checkpoint` (e.g. `device`, `dtype`; GeoSURGE: `backbone`)."""
    ckpt = name_or_path if isinstance(name_or_path, Checkpoint) else load_checkpoint(name_or_path)
    return method_class(ckpt.method).from_checkpoint(ckpt, **kwargs).eval()


# --- single components (the downstream probes and `embed-locations` need only one) ----------------


def _component(name_or_path: str | Path, key: str, module: type, config: type, device, dtype):
    """One network component of a GeoCLIP-style checkpoint, built from its config section."""
    import torch

    ckpt = load_checkpoint(name_or_path)
    if key not in ckpt.config:
        raise WeightsNotFoundError(f"{ckpt.path}: a {ckpt.method!r} model has no {key}")
    net = module(config.from_dict(ckpt.config[key]))
    net.load_state_dict(ckpt.component(key), strict=True)
    return net.to(device=device, dtype=dtype or torch.float32).eval()


def load_location_encoder(name_or_path: str | Path = "geoclip", *, device="cpu", dtype=None):
    """The location encoder of a GeoCLIP-style checkpoint."""
    from geoalign.nn.location_encoder import LocationEncoder, LocationEncoderConfig

    return _component(
        name_or_path, "location_encoder", LocationEncoder, LocationEncoderConfig, device, dtype
    )


def load_image_head(name_or_path: str | Path = "geoclip", *, device="cpu", dtype=None):
    """The image head of a GeoCLIP-style checkpoint."""
    from geoalign.nn.image_head import ImageHead, ImageHeadConfig

    return _component(name_or_path, "image_head", ImageHead, ImageHeadConfig, device, dtype)


def load_logit_scale(name_or_path: str | Path = "geoclip"):
    """The learned log temperature of a GeoCLIP-style checkpoint (logits = exp(scale) * cos)."""
    return load_checkpoint(name_or_path).state["logit_scale"].reshape(())
