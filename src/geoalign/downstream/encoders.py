"""Location encoders to compare, behind one small interface: latlon [N, 2] (degrees) -> emb [N, D].

Anything that maps coordinates to features plugs in: a registered name, a geoalign checkpoint folder
(our training runs; loaded through `geoalign.models.registry`), or any Python callable wrapped with
`CallableEmbedder`. Each embedder carries a fingerprint, so cached embeddings are reused only for the
same encoder weights and the same points.

Built-in baselines (what each one shows):
- `geoclip`: the official GeoCLIP location encoder (512-d).
- `raw-latlon`: the two numbers themselves; the probe standardises them.
- `untrained`: GeoCLIP's architecture with GeoCLIP's (never trained) RFF matrices and randomly
  initialised MLPs (seeded): the same function class with no training, to show what training adds.
- `rff-only`: the Fourier features GeoCLIP's MLPs see: Equal Earth projection, then the three
  official RFF scales (σ = 1, 16, 256) concatenated, 3 × 512 = 1536-d, no MLP.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import torch

from geoalign.errors import GeoalignError
from geoalign.io_atomic import atomic_output


@runtime_checkable
class LocationEmbedder(Protocol):
    """What the benchmark needs from an encoder."""

    name: str
    fingerprint: str

    def __call__(self, latlon: np.ndarray) -> np.ndarray: ...


@dataclass
class CallableEmbedder:
    """Wrap any `fn(latlon [N, 2] float64 degrees) -> [N, D]` array-like (numpy or torch)."""

    name: str
    fn: Callable
    fingerprint: str = ""

    def __post_init__(self) -> None:
        if not self.fingerprint:
            self.fingerprint = f"callable:{self.name}"

    def __call__(self, latlon: np.ndarray) -> np.ndarray:
        out = self.fn(np.asarray(latlon, dtype=np.float64))
        return _to_numpy(out, self.name, len(latlon))


def _to_numpy(out, name: str, n: int) -> np.ndarray:
    if isinstance(out, torch.Tensor):
        out = out.detach().to("cpu", torch.float32).numpy()
    arr = np.asarray(out, dtype=np.float32)
    if arr.ndim != 2 or arr.shape[0] != n:
        raise GeoalignError(f"encoder {name!r} returned shape {arr.shape}; expected ({n}, D)")
    if not np.isfinite(arr).all():
        bad = int(np.flatnonzero(~np.isfinite(arr).all(axis=1))[0])
        raise GeoalignError(f"encoder {name!r} returned a non-finite embedding at row {bad}")
    return arr


class TorchModuleEmbedder:
    """A torch module mapping (N, 2) degrees to (N, D), run batched under inference mode."""

    def __init__(self, name: str, module, fingerprint: str, batch_size: int = 4096) -> None:
        self.name = name
        self.module = module.eval()
        self.fingerprint = fingerprint
        self.batch_size = batch_size

    def __call__(self, latlon: np.ndarray) -> np.ndarray:
        param = next(self.module.parameters(), None)
        buffer = next(self.module.buffers(), None)
        ref = param if param is not None else buffer
        device = ref.device if ref is not None else torch.device("cpu")
        x = torch.as_tensor(np.asarray(latlon, dtype=np.float64), dtype=torch.float32)
        chunks = []
        with torch.inference_mode():
            for start in range(0, len(x), self.batch_size):
                out = self.module(x[start : start + self.batch_size].to(device))
                chunks.append(out.to("cpu", torch.float32))
        emb = torch.cat(chunks) if chunks else torch.empty(0, 0)
        return _to_numpy(emb, self.name, len(latlon))


class FourierFeatures(torch.nn.Module):
    """Equal Earth + the encoder's RFF branches, concatenated (no MLP): `rff-only`."""

    def __init__(self, encoder) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, latlon: torch.Tensor) -> torch.Tensor:
        xy = self.encoder.project(latlon)
        return torch.cat([branch.rff(xy) for branch in self.encoder.branches], dim=-1)


def _sha_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@lru_cache(maxsize=1)
def _official_fingerprint() -> str:
    from geoalign.models.weights import official_geoclip_dir

    return "geoclip:" + _sha_file(official_geoclip_dir() / "model.safetensors")[:16]


def _geoclip() -> LocationEmbedder:
    from geoalign.models.registry import load_location_encoder

    return TorchModuleEmbedder("geoclip", load_location_encoder("geoclip"), _official_fingerprint())


def _raw_latlon() -> LocationEmbedder:
    return CallableEmbedder("raw-latlon", lambda ll: ll.astype(np.float32), "raw-latlon:v1")


UNTRAINED_SEED = 0


@lru_cache(maxsize=1)
def _official_rff_source():
    """The official encoder, loaded once per process: its RFF matrices feed `untrained`/`rff-only`.

    Read-only use: callers copy the RFF buffers (untrained) or only run it (rff-only).
    """
    from geoalign.models.registry import load_location_encoder

    return load_location_encoder("geoclip")


def untrained_encoder(seed: int = UNTRAINED_SEED):
    """GeoCLIP's architecture, official RFF matrices, MLP weights from PyTorch's default init."""
    from geoalign.nn.location_encoder import LocationEncoder, LocationEncoderConfig

    official = _official_rff_source()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        enc = LocationEncoder(LocationEncoderConfig(**_config_fields(official.config)))
    for mine, theirs in zip(enc.branches, official.branches, strict=True):
        mine.rff.load_state_dict(theirs.rff.state_dict())  # RFF matrices are fixed, never trained
    return enc.eval()


def _config_fields(config) -> dict:
    from dataclasses import fields

    return {f.name: getattr(config, f.name) for f in fields(config)}


def _untrained() -> LocationEmbedder:
    fp = f"untrained:seed{UNTRAINED_SEED}:{_official_fingerprint()}"
    return TorchModuleEmbedder("untrained", untrained_encoder(), fp)


def _rff_only() -> LocationEmbedder:

    feats = FourierFeatures(_official_rff_source())
    return TorchModuleEmbedder("rff-only", feats, f"rff-only:{_official_fingerprint()}")


ENCODERS: dict[str, Callable[[], LocationEmbedder]] = {
    "geoclip": _geoclip,
    "raw-latlon": _raw_latlon,
    "untrained": _untrained,
    "rff-only": _rff_only,
}

ENCODER_DESCRIPTIONS: dict[str, str] = {
    "geoclip": "official GeoCLIP location encoder (geoclip 1.3.0 weights)",
    "raw-latlon": "latitude and longitude in degrees (standardised by the probe)",
    "untrained": "GeoCLIP architecture, official RFF matrices, randomly initialised MLPs "
    f"(torch seed {UNTRAINED_SEED})",
    "rff-only": "Equal Earth + GeoCLIP's three RFF scales (sigma 1, 16, 256) concatenated, no MLP",
}


def register_encoder(
    name: str, factory: Callable[[], LocationEmbedder], description: str = ""
) -> None:
    """Add a named encoder (a zero-argument factory returning a LocationEmbedder)."""
    ENCODERS[name] = factory
    ENCODER_DESCRIPTIONS[name] = description or name


def _checkpoint(path: Path, label: str) -> LocationEmbedder:
    from geoalign.models.registry import load_location_encoder, resolve_checkpoint_dir

    folder = resolve_checkpoint_dir(path)
    fp = f"checkpoint:{_sha_file(folder / 'model.safetensors')[:16]}"
    return TorchModuleEmbedder(label, load_location_encoder(folder), fp)


def get_encoder(name_or_path: str | Path) -> LocationEmbedder:
    """A registered encoder name, or a path to a geoalign checkpoint folder (a training run)."""
    key = str(name_or_path)
    if key in ENCODERS:
        return ENCODERS[key]()
    path = Path(key).expanduser()
    if path.exists():
        return _checkpoint(path, key)
    raise GeoalignError(
        f"unknown encoder {key!r}: not one of {sorted(ENCODERS)} and no such path "
        "(give a checkpoint folder with model.safetensors and config.json)"
    )


def describe_encoder(name_or_path: str) -> str:
    return ENCODER_DESCRIPTIONS.get(
        name_or_path, f"location encoder from checkpoint {name_or_path}"
    )


def parse_encoder_list(spec: str | list[str]) -> list[str]:
    names = spec if isinstance(spec, list) else [s.strip() for s in spec.split(",")]
    names = [n for n in names if n]
    if not names:
        raise GeoalignError("no encoders given")
    for name in names:  # fail before any work, not after the tasks are built
        if name not in ENCODERS and not Path(name).expanduser().exists():
            raise GeoalignError(
                f"unknown encoder {name!r}: not one of {sorted(ENCODERS)} and no such path "
                "(give a checkpoint folder with model.safetensors and config.json)"
            )
    return names


# --- embedding cache ---------------------------------------------------------------------------


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_")[:60] or "encoder"


def embed(
    encoder: LocationEmbedder, latlon: np.ndarray, cache_dir: Path | None = None
) -> np.ndarray:
    """Embeddings of `latlon` by `encoder`, cached on disk per (encoder fingerprint, points)."""
    latlon = np.ascontiguousarray(latlon, dtype=np.float64)
    if cache_dir is None:
        return encoder(latlon)
    key = hashlib.sha256(encoder.fingerprint.encode() + latlon.tobytes()).hexdigest()[:20]
    path = Path(cache_dir) / f"{_safe(encoder.name)}-{key}.npy"
    if path.is_file():
        return np.load(path)
    emb = encoder(latlon)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(path) as tmp:
        np.save(tmp, emb)
    return emb
