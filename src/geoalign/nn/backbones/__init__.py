"""Image backbones behind one interface (`ImageBackbone`), built from a spec string.

Specs accepted by `load_backbone`:

- ``clip-vit-l14`` (default): openai/clip-vit-large-patch14, vision tower + projection (768-d);
- ``clip-vit-l14-336``: openai/clip-vit-large-patch14-336 (GeoSURGE's backbone);
- ``hf:<repo id or local folder>``: any transformers CLIP checkpoint;
- ``open_clip:<model>@<checkpoint file or pretrained tag>`` (needs open_clip_torch);
- ``timm:<model>[@<weights file>]`` (needs timm);
- ``torchvision:<model>[@<weights file or enum name>]``, e.g. ``torchvision:mobilenet_v2``.

Nothing is downloaded at import; `load_backbone` downloads only when online and not offline.
"""

from __future__ import annotations

import torch

from geoalign.errors import GeoalignError
from geoalign.nn.backbones.base import BackboneOutput, ImageBackbone, tokens_from_features
from geoalign.nn.backbones.hf_clip import ClipBackbone

DEFAULT_BACKBONE = "clip-vit-l14"

ALIASES: dict[str, str] = {
    "clip-vit-l14": "hf:openai/clip-vit-large-patch14",
    "clip-vit-l14-336": "hf:openai/clip-vit-large-patch14-336",
}

SPEC_FORMS = (
    "clip-vit-l14",
    "clip-vit-l14-336",
    "hf:<repo id or local folder>",
    "open_clip:<model>@<checkpoint file or tag>",
    "timm:<model>[@<weights file>]",
    "torchvision:<model>[@<weights file or enum name>]",
)

__all__ = [
    "ALIASES",
    "DEFAULT_BACKBONE",
    "BackboneOutput",
    "ClipBackbone",
    "ImageBackbone",
    "load_backbone",
    "parse_spec",
    "tokens_from_features",
]


def parse_spec(spec: str) -> tuple[str, str, str | None]:
    """'timm:resnet50@/w.safetensors' -> ('timm', 'resnet50', '/w.safetensors')."""
    spec = ALIASES.get(spec.strip(), spec.strip())
    kind, sep, rest = spec.partition(":")
    if not sep or kind not in {"hf", "open_clip", "timm", "torchvision"} or not rest:
        raise GeoalignError(f"unknown backbone spec {spec!r}; use one of: {', '.join(SPEC_FORMS)}")
    if kind == "hf":
        return kind, rest, None
    name, at, weights = rest.partition("@")
    return kind, name, (weights or None) if at else None


def load_backbone(
    spec: str = DEFAULT_BACKBONE,
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    frozen: bool = True,
    local_files_only: bool | None = None,
) -> ImageBackbone:
    """Build a pretrained backbone from its spec (see the module docstring).

    `local_files_only`: None follows HF_HUB_OFFLINE; True never downloads. Missing weights raise
    `WeightsNotFoundError` naming every place searched and how to provide the weights.
    """
    kind, name, weights = parse_spec(spec)
    common = dict(device=device, dtype=dtype, frozen=frozen, local_files_only=local_files_only)
    if kind == "hf":
        backbone = ClipBackbone.from_pretrained(name, name=spec, **common)
    elif kind == "torchvision":
        from geoalign.nn.backbones.torchvision_models import load_torchvision_backbone

        backbone = load_torchvision_backbone(name, weights, **common)
    elif kind == "timm":
        from geoalign.nn.backbones.timm_models import load_timm_backbone

        backbone = load_timm_backbone(name, weights, **common)
    else:
        from geoalign.nn.backbones.openclip import load_open_clip_backbone

        backbone = load_open_clip_backbone(name, weights, **common)
    return backbone
