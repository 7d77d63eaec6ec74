"""Feature-width compatibility between a model and the backbone that feeds it, checked when a
`Geolocator` is built: a backbone of another width would otherwise fail deep inside the first
batch (`mat1 and mat2 shapes cannot be multiplied`), after the photos were already read."""

from __future__ import annotations

from typing import Any

from geoalign.errors import DataError


def check_backbone_width(model: Any, backbone: Any) -> None:
    """Refuse, in one line naming the backbone and both widths, a frozen backbone whose
    embeddings are not as wide as the features the model reads. Models that bring their own
    backbone block, and modules that do not say their width, are not checked."""
    if backbone is None or getattr(model, "reads", None) != "features":
        return
    want = getattr(model, "feature_dim", None)
    width = getattr(backbone, "embed_dim", None)
    if want is None or width is None or int(width) == int(want):
        return
    name = getattr(backbone, "name", None) or type(backbone).__name__
    trained = model.backbone_spec or "not recorded"
    raise DataError(
        f"--backbone {name} gives {int(width)}-d features, but the model reads {int(want)}-d "
        f"features (it was trained on {trained}): use the model's own backbone (--backbone "
        "auto) or a model trained on this backbone's features"
    )
