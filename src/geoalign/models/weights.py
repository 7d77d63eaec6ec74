"""Named pretrained weights, pinned like torchgeo's weight enums: where they come from, the sha256
of every source file, the backbone and preprocessing they expect.

Today one entry: the official GeoCLIP release, read from the `geoclip` wheel (MIT) and converted
once into the geoalign checkpoint format in the cache. Nothing here touches the network.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import torch

from geoalign._version import __version__
from geoalign.errors import WeightsNotFoundError
from geoalign.models.checkpoint import (
    flush_subnormals_,
    is_checkpoint_dir,
    read_config,
    save_checkpoint,
)
from geoalign.nn.image_head import ImageHeadConfig
from geoalign.nn.location_encoder import LocationEncoderConfig
from geoalign.paths import GEOCLIP_WHEEL_VERSION, cache_dir, geoclip_package_dir


@dataclass(frozen=True)
class NamedWeights:
    name: str
    method: str
    source: str
    files: dict[str, str]  # component -> file inside the source package
    sha256: dict[str, str]  # component -> pinned sha256 of that file
    backbone: str
    preprocessing: str
    notes: dict[str, str] = field(default_factory=dict)


GEOCLIP = NamedWeights(
    name="geoclip",
    method="geoclip",
    source=f"geoclip=={GEOCLIP_WHEEL_VERSION} (PyPI, MIT licence), model/weights/*.pth",
    files={
        "location_encoder": "model/weights/location_encoder_weights.pth",
        "image_head": "model/weights/image_encoder_mlp_weights.pth",
        "logit_scale": "model/weights/logit_scale_weights.pth",
    },
    sha256={
        "location_encoder": "94b80ae3af89fca78539e129dd2929d321247f5ceeeb0a31bc2c31041a253394",
        "image_head": "5342c391eec961796d04d02f2bd670bfa97b34ce32c656d0e0676581103c2c14",
        "logit_scale": "9568e2e09dd19083082bf285b2c0c126867e40dbd275a8ee8c621888b861904e",
    },
    backbone="clip-vit-l14",
    preprocessing="CLIP: resize 224 (bicubic), centre crop 224, CLIP mean/std",
    notes={"gallery": "geoclip-100k"},
)
NAMED_WEIGHTS: dict[str, NamedWeights] = {GEOCLIP.name: GEOCLIP}


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _official_key(key: str) -> str:
    """Map the geoclip package's location-encoder keys to ours."""
    m = re.fullmatch(r"LocEnc(\d+)\.capsule\.0\.b", key)
    if m:
        return f"branches.{m[1]}.rff.b"
    m = re.fullmatch(r"LocEnc(\d+)\.capsule\.(\d+)\.(weight|bias)", key)
    if m:  # capsule = [rff, Linear, ReLU, Linear, ReLU, Linear, ReLU]: Linear k -> mlp index k-1
        return f"branches.{m[1]}.mlp.{int(m[2]) - 1}.{m[3]}"
    m = re.fullmatch(r"LocEnc(\d+)\.head\.0\.(weight|bias)", key)
    if m:
        return f"branches.{m[1]}.head.{m[2]}"
    raise KeyError(f"unexpected key in the official location encoder weights: {key}")


def _source_paths(entry: NamedWeights) -> dict[str, Path]:
    root = geoclip_package_dir()
    paths = {k: root / f for k, f in entry.files.items()}
    for p in paths.values():
        if not p.is_file():
            raise WeightsNotFoundError(f"missing {p}: reinstall geoclip=={GEOCLIP_WHEEL_VERSION}")
    return paths


def convert_official_geoclip(out_dir: Path) -> Path:
    """Convert the geoclip wheel's .pth files to a geoalign checkpoint folder; returns it."""
    paths = _source_paths(GEOCLIP)
    loc, head, scale = (
        torch.load(paths[k], map_location="cpu", weights_only=True)
        for k in ("location_encoder", "image_head", "logit_scale")
    )
    state: dict[str, torch.Tensor] = {}
    state.update({f"location_encoder.{_official_key(k)}": v for k, v in loc.items()})
    state.update({f"image_head.net.{k}": v for k, v in head.items()})
    state["logit_scale"] = scale.reshape(())
    state = {k: v.detach().clone().contiguous() for k, v in state.items()}
    n_flushed = flush_subnormals_(state)
    sigmas = [float(state[f"location_encoder.branches.{i}.rff.b"].std()) for i in range(3)]
    config = {
        "method": GEOCLIP.method,
        "location_encoder": LocationEncoderConfig().to_dict(),
        "image_head": ImageHeadConfig().to_dict(),
        "backbone": GEOCLIP.backbone,
        "gallery": GEOCLIP.notes["gallery"],
        "provenance": {
            "weights": GEOCLIP.name,
            "source": GEOCLIP.source,
            "source_sha256": {k: _sha256(p) for k, p in paths.items()},
            "subnormals_flushed": n_flushed,
            "rff_b_std_per_scale": sigmas,
            "converted_by": f"geoalign {__version__}",
            "converted_at": datetime.now(UTC).isoformat(timespec="seconds"),
        },
    }
    return save_checkpoint(out_dir, state, config)


def official_geoclip_dir() -> Path:
    """The converted official checkpoint, converting on first use (or after the wheel changed)."""
    out = cache_dir() / "zoo" / "geoclip-official"
    current = {k: _sha256(p) for k, p in _source_paths(GEOCLIP).items()}
    if current != GEOCLIP.sha256:
        changed = sorted(k for k in current if current[k] != GEOCLIP.sha256[k])
        raise WeightsNotFoundError(
            f"the installed geoclip wheel's weights ({', '.join(changed)}) do not match the pinned "
            f"sha256 of geoclip=={GEOCLIP_WHEEL_VERSION}: reinstall that version"
        )
    if is_checkpoint_dir(out):
        try:
            if read_config(out)["provenance"]["source_sha256"] == current:
                return out
        except (WeightsNotFoundError, KeyError, TypeError):
            pass  # an unreadable conversion is redone
    return convert_official_geoclip(out)


def named_weights_dir(name: str) -> Path | None:
    """The checkpoint folder of a named entry (converted on first use), None for other names."""
    if name == GEOCLIP.name:
        return official_geoclip_dir()
    return None
