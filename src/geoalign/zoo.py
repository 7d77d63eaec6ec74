"""Named checkpoints: the official GeoCLIP weights (from the `geoclip` wheel) and our own runs.

A geoalign checkpoint is a folder with `model.safetensors` (keys prefixed by component:
`location_encoder.`, `image_head.`, `logit_scale`) and `config.json` (component configs plus
provenance). The official weights are converted to that format once, into the geoalign cache, and read
from there afterwards; nothing here touches the network.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from geoalign._version import __version__
from geoalign.errors import WeightsNotFoundError
from geoalign.nn.image_head import ImageHead, ImageHeadConfig
from geoalign.nn.location_encoder import LocationEncoder, LocationEncoderConfig
from geoalign.paths import GEOCLIP_WHEEL_VERSION, cache_dir, geoclip_package_dir

FORMAT = "geoalign-checkpoint"
FORMAT_VERSION = 1
OFFICIAL = "geoclip"


def flush_subnormals_(state: dict[str, torch.Tensor]) -> int:
    """Zero subnormal floats in place; returns how many there were.

    About 1% of the released location-encoder weights are subnormal; x86 CPUs take a slow microcode
    path on them (up to ~3× slower matmuls on some chips), while their value is below 1.2e-38 and
    changes no output.
    """
    flushed = 0
    for t in state.values():
        if t.is_floating_point():
            mask = (t != 0) & (t.abs() < torch.finfo(t.dtype).tiny)
            flushed += int(mask.sum())
            t[mask] = 0
    return flushed


# --- the official GeoCLIP release ------------------------------------------------------------

_OFFICIAL_FILES = {
    "location_encoder": "location_encoder_weights.pth",
    "image_head": "image_encoder_mlp_weights.pth",
    "logit_scale": "logit_scale_weights.pth",
}


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


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def convert_official_geoclip(out_dir: Path) -> Path:
    """Convert the geoclip wheel's .pth files to a geoalign checkpoint folder; returns it."""
    weights = geoclip_package_dir() / "model" / "weights"
    paths = {k: weights / f for k, f in _OFFICIAL_FILES.items()}
    for p in paths.values():
        if not p.is_file():
            raise WeightsNotFoundError(f"missing {p}: reinstall geoclip=={GEOCLIP_WHEEL_VERSION}")
    loc = torch.load(paths["location_encoder"], map_location="cpu", weights_only=True)
    head = torch.load(paths["image_head"], map_location="cpu", weights_only=True)
    scale = torch.load(paths["logit_scale"], map_location="cpu", weights_only=True)
    state: dict[str, torch.Tensor] = {}
    state.update({f"location_encoder.{_official_key(k)}": v for k, v in loc.items()})
    state.update({f"image_head.net.{k}": v for k, v in head.items()})
    state["logit_scale"] = scale.reshape(())
    state = {k: v.detach().clone().contiguous() for k, v in state.items()}
    n_flushed = flush_subnormals_(state)
    sigmas = [float(state[f"location_encoder.branches.{i}.rff.b"].std()) for i in range(3)]
    config = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "method": "geoclip",
        "location_encoder": LocationEncoderConfig().to_dict(),
        "image_head": ImageHeadConfig().to_dict(),
        "backbone": "clip-vit-l14",
        "provenance": {
            "source": f"geoclip=={GEOCLIP_WHEEL_VERSION} (PyPI, MIT licence), model/weights/*.pth",
            "source_sha256": {k: _sha256(p) for k, p in paths.items()},
            "subnormals_flushed": n_flushed,
            "rff_b_std_per_scale": sigmas,
            "converted_by": f"geoalign {__version__}",
            "converted_at": datetime.now(UTC).isoformat(timespec="seconds"),
        },
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out_dir / "model.safetensors.tmp"
    save_file(state, str(tmp), metadata={"format": FORMAT})
    os.replace(tmp, out_dir / "model.safetensors")
    (out_dir / "config.json").write_text(json.dumps(config, indent=2))
    return out_dir


def official_geoclip_dir() -> Path:
    """The converted official checkpoint, converting on first use (or after the wheel changed)."""
    out = cache_dir() / "zoo" / "geoclip-official"
    cfg = out / "config.json"
    if cfg.is_file() and (out / "model.safetensors").is_file():
        recorded = json.loads(cfg.read_text())["provenance"]["source_sha256"]
        weights = geoclip_package_dir() / "model" / "weights"
        current = {k: _sha256(weights / f) for k, f in _OFFICIAL_FILES.items()}
        if recorded == current:
            return out
    return convert_official_geoclip(out)


# --- loading -----------------------------------------------------------------------------------


@dataclass
class Checkpoint:
    path: Path
    config: dict[str, Any]
    state: dict[str, torch.Tensor]

    def component(self, prefix: str) -> dict[str, torch.Tensor]:
        p = prefix + "."
        return {k[len(p) :]: v for k, v in self.state.items() if k.startswith(p)}


def resolve_checkpoint_dir(name_or_path: str | Path) -> Path:
    if str(name_or_path) == OFFICIAL:
        return official_geoclip_dir()
    path = Path(name_or_path).expanduser()
    if path.is_file() and path.name == "model.safetensors":
        path = path.parent
    if not (path / "model.safetensors").is_file() or not (path / "config.json").is_file():
        raise WeightsNotFoundError(
            f"no geoalign checkpoint at {path}: expected model.safetensors and config.json there "
            f"(known names: {OFFICIAL!r})"
        )
    return path


def load_checkpoint(name_or_path: str | Path = OFFICIAL) -> Checkpoint:
    path = resolve_checkpoint_dir(name_or_path)
    config = json.loads((path / "config.json").read_text())
    if config.get("format") != FORMAT:
        raise WeightsNotFoundError(f"{path / 'config.json'} is not a {FORMAT} config")
    state = load_file(str(path / "model.safetensors"), device="cpu")
    flush_subnormals_(state)
    return Checkpoint(path, config, state)


def save_checkpoint(out_dir: Path, state: dict[str, torch.Tensor], config: dict[str, Any]) -> Path:
    """Write a checkpoint folder atomically (safetensors + config JSON)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    config = {"format": FORMAT, "format_version": FORMAT_VERSION, **config}
    state = {k: v.detach().to("cpu").contiguous() for k, v in state.items()}
    tmp = out_dir / "model.safetensors.tmp"
    save_file(state, str(tmp), metadata={"format": FORMAT})
    os.replace(tmp, out_dir / "model.safetensors")
    tmpc = out_dir / "config.json.tmp"
    tmpc.write_text(json.dumps(config, indent=2))
    os.replace(tmpc, out_dir / "config.json")
    return out_dir


def load_location_encoder(
    name_or_path: str | Path = OFFICIAL, *, device: str | torch.device = "cpu", dtype=torch.float32
) -> LocationEncoder:
    ckpt = load_checkpoint(name_or_path)
    enc = LocationEncoder(LocationEncoderConfig.from_dict(ckpt.config["location_encoder"]))
    enc.load_state_dict(ckpt.component("location_encoder"), strict=True)
    return enc.to(device=device, dtype=dtype).eval()


def load_image_head(
    name_or_path: str | Path = OFFICIAL, *, device: str | torch.device = "cpu", dtype=torch.float32
) -> ImageHead:
    ckpt = load_checkpoint(name_or_path)
    head = ImageHead(ImageHeadConfig.from_dict(ckpt.config["image_head"]))
    head.load_state_dict(ckpt.component("image_head"), strict=True)
    return head.to(device=device, dtype=dtype).eval()


def load_logit_scale(name_or_path: str | Path = OFFICIAL) -> torch.Tensor:
    """The learned log temperature (logits = exp(scale) · cosine)."""
    return load_checkpoint(name_or_path).state["logit_scale"].reshape(())
