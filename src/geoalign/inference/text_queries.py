"""Text queries (GeoCLIP §4.4): a CLIP text embedding lives in the same space as CLIP image
features, so the image head maps it to the location space like a photo's features, and the
gallery ranks it. Only models whose image side reads CLIP features of a backbone with a text
tower can do this; anything else is a clear error."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from geoalign.errors import GeoalignError


def text_encoder_for(backbone_spec: str | None) -> str:
    """The text encoder spec that matches an image backbone spec (CLIP towers only)."""
    from geoalign.nn.text_encoders import CLIP_ALIASES

    spec = backbone_spec or ""
    if spec in CLIP_ALIASES:
        return spec
    if spec.startswith("hf:"):
        return "hf-clip:" + spec.split(":", 1)[1]
    raise GeoalignError(
        f"the model reads {spec or 'unrecorded'} features, which have no CLIP text tower to "
        "query with text; text queries need a CLIP-feature model (e.g. the official 'geoclip'), "
        "or name a matching CLIP text tower with --text-encoder hf-clip:<folder>"
    )


def text_queries(geo: Any, encoder: Any, texts: Sequence[str]) -> Any:
    """Queries for `texts` through the model's image head (Geolocator.embed_features)."""
    if getattr(encoder, "kind", "") != "clip":
        raise GeoalignError(
            f"{encoder.name}: a {encoder.kind} text encoder does not share CLIP's image space; "
            "text queries need CLIP's text tower"
        )
    want = geo.model.feature_dim
    if want is not None and encoder.dim != want:
        raise GeoalignError(
            f"{encoder.name} gives {encoder.dim}-d text embeddings, the model reads {want}-d "
            f"features ({geo.model.backbone_spec}): use the text tower of the same CLIP"
        )
    return geo.embed_features(encoder.encode(list(texts)).cpu())
