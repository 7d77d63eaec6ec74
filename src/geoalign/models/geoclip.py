"""GeoCLIP (Vivanco Cepeda et al., NeurIPS 2023): an image head and a location encoder aligned by
a contrastive loss with a learnable temperature and a dynamic queue of GPS negatives.

The model works on backbone features (the backbone is frozen in the paper, so features are
computed once and cached); any feature width works, so the same model trains on CLIP ViT-L/14
embeddings, other backbones, or the scene-label descriptors of the quickstart. It starts from the
official weights (`GeoCLIP.from_official`) or from scratch (`GeoCLIP(config)`), and saves/loads the
geoalign checkpoint format (safetensors + config.json, see `geoalign.models.checkpoint`).

It implements `geoalign.models.base.Locator`: queries are unit image embeddings, candidates a GPS
gallery with its unit location embeddings, logits exp(scale) * cosine with the clamped scale.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, Self

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from geoalign._version import __version__
from geoalign.geo.distance import EARTH_RADIUS_KM
from geoalign.losses import logits_from_embeddings
from geoalign.models.base import Candidates, feature_major
from geoalign.nn.image_head import ImageHead, ImageHeadConfig
from geoalign.nn.location_encoder import LocationEncoder, LocationEncoderConfig

METRES_PER_DEGREE = EARTH_RADIUS_KM * 1000.0 * math.pi / 180.0
QueueInit = Literal["sphere", "latlon"]


# --- GPS noise and the queue -------------------------------------------------------------------


def perturb_gps(latlon: Tensor, sigma_m: float, generator: torch.Generator | None = None) -> Tensor:
    """Add isotropic Gaussian noise of `sigma_m` metres (north and east) to [..., 2] lat/lon.

    The paper gives σ_η = 150 and σ_η' = 1000 without a unit; reading them as metres is ours
    (degrees would move a photo by up to half the globe). A step across a pole is
    reflected (lat -> ±180 - lat, lon + 180) and longitudes are wrapped to [-180, 180).
    """
    if sigma_m <= 0:
        return latlon
    work = torch.promote_types(latlon.dtype, torch.float32)
    x = latlon.to(work)
    noise = torch.randn(x.shape, generator=generator, dtype=work, device="cpu").to(x.device)
    noise = noise * (sigma_m / METRES_PER_DEGREE)
    lat = x[..., 0] + noise[..., 0]
    coslat = torch.cos(torch.deg2rad(x[..., 0])).clamp(min=1e-3)
    lon = x[..., 1] + noise[..., 1] / coslat
    over = lat.abs() > 90
    lat = torch.where(over, torch.sign(lat) * 180 - lat, lat)
    lon = torch.where(over, lon + 180, lon)
    lon = torch.remainder(lon + 180, 360) - 180
    return torch.stack([lat, lon], dim=-1).to(latlon.dtype)


def random_locations(
    n: int, kind: QueueInit = "sphere", generator: torch.Generator | None = None
) -> Tensor:
    """n random lat/lon: uniform over the sphere's area ("sphere"), or uniform in the
    latitude x longitude box ("latlon", the paper's literal wording for the queue init)."""
    u = torch.rand(n, 2, generator=generator, dtype=torch.float64)
    lon = u[:, 1] * 360 - 180
    if kind == "sphere":
        lat = torch.rad2deg(torch.asin(u[:, 0] * 2 - 1))
    elif kind == "latlon":
        lat = u[:, 0] * 180 - 90
    else:
        raise ValueError(f"queue init must be 'sphere' or 'latlon', got {kind!r}")
    return torch.stack([lat, lon], dim=1).float()


class GPSQueue(nn.Module):
    """A FIFO of S coordinates used as extra negatives (the paper's "dynamic queue").

    Buffers, so the queue is saved with the model and restored on resume. `enqueue` replaces the
    oldest entries with the newest batch; a batch longer than the queue keeps its last S rows.
    """

    def __init__(self, size: int, init: QueueInit = "sphere", seed: int = 0) -> None:
        super().__init__()
        if size < 0:
            raise ValueError(f"queue size must be >= 0, got {size}")
        self.size = int(size)
        generator = torch.Generator().manual_seed(seed)
        self.register_buffer("coords", random_locations(self.size, init, generator))
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))

    def __len__(self) -> int:
        return self.size

    @torch.no_grad()
    def enqueue(self, latlon: Tensor) -> None:
        if self.size == 0:
            return
        latlon = latlon.detach().reshape(-1, 2).to(self.coords.device, self.coords.dtype)
        n = latlon.shape[0]
        if n >= self.size:
            self.coords.copy_(latlon[-self.size :])
            self.ptr.zero_()
            return
        start = int(self.ptr)
        idx = (torch.arange(n, device=self.coords.device) + start) % self.size
        self.coords[idx] = latlon
        self.ptr.fill_((start + n) % self.size)


# --- the model ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class GeoCLIPConfig:
    location_encoder: LocationEncoderConfig = field(default_factory=LocationEncoderConfig)
    image_head: ImageHeadConfig = field(default_factory=ImageHeadConfig)
    queue_size: int = 4096
    queue_init: QueueInit = "sphere"
    temperature_init: float = 0.07  # τ; the logit scale starts at ln(1/τ)
    learn_temperature: bool = True
    max_logit_scale: float = math.log(100.0)  # CLIP's clamp, keeps exp(scale) finite
    features: str | None = None  # which image features the head expects, e.g. "clip-vit-l14"
    seed: int = 0  # queue initialisation

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["location_encoder"] = self.location_encoder.to_dict()
        d["image_head"] = self.image_head.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> GeoCLIPConfig:
        d = dict(d)
        if "location_encoder" in d:
            d["location_encoder"] = LocationEncoderConfig.from_dict(d["location_encoder"])
        if "image_head" in d:
            d["image_head"] = ImageHeadConfig.from_dict(d["image_head"])
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown GeoCLIP config keys: {sorted(unknown)}")
        return cls(**d)


class GeoCLIP(nn.Module):
    """Image head + location encoder + learnable logit scale + GPS queue."""

    method = "geoclip"

    def __init__(self, config: GeoCLIPConfig | None = None) -> None:
        super().__init__()
        self.config = config or GeoCLIPConfig()
        c = self.config
        self.image_head = ImageHead(c.image_head)
        self.location_encoder = LocationEncoder(c.location_encoder)
        self.logit_scale = nn.Parameter(
            torch.tensor(math.log(1.0 / c.temperature_init)), requires_grad=c.learn_temperature
        )
        self.queue = GPSQueue(c.queue_size, c.queue_init, seed=c.seed)

    # -- the Locator interface ------------------------------------------------------------------
    ranks = "gallery"
    reads = "features"

    @property
    def feature_dim(self) -> int:
        return self.config.image_head.in_dim

    @property
    def backbone_spec(self) -> str | None:
        return self.config.features

    def encode_features(self, features: Tensor) -> Tensor:
        """Backbone features [B, D] -> unit image embeddings (the queries)."""
        param = next(self.image_head.parameters())
        return F.normalize(self.image_head(features.to(param)).float(), dim=-1)

    def encode_pixels(self, pixels: Tensor, segmentation: Tensor | None = None) -> Tensor:
        raise TypeError(
            f"a {self.method} model reads features of a frozen backbone: encode the pixels with "
            f"the backbone ({self.config.features or 'not recorded'}) and call encode_features"
        )

    def candidates(
        self, gallery: np.ndarray | None = None, keys: Tensor | None = None
    ) -> Candidates:
        """A GPS gallery [M, 2] with its unit location embeddings (`keys` if already known, e.g.
        from the gallery cache; computed otherwise).

        Given float32 `keys` are handed over: normalised in place (the same values as a copy),
        so the gallery is never held twice (205 MB more peak memory for the 100K gallery); they
        are kept `feature_major`, the layout one-query scoring is fastest on."""
        if gallery is None:
            raise ValueError(f"a {self.method} model ranks a GPS gallery: give its coordinates")
        latlon = np.asarray(gallery, dtype=np.float64).reshape(-1, 2)
        if keys is None:
            param = next(self.location_encoder.parameters())
            keys = self.embed_gallery(
                torch.as_tensor(latlon, dtype=torch.float32, device=param.device)
            )
        keys = feature_major(keys.detach().float())  # (the gallery cache's keys already are)
        with torch.inference_mode(keys.is_inference()):  # (inference tensors change only there)
            unit = F.normalize(keys, dim=-1, out=keys)
        return Candidates(latlon, "gallery", unit, f"{len(latlon)} GPS points")

    def temperature(self) -> float:
        """The logit multiplier exp(scale) with the clamp applied (as in training)."""
        return float(self.scale().detach().exp())

    def similarities(self, queries: Tensor, candidates: Candidates) -> Tensor:
        """Cosines of unit queries with the candidates' unit location keys."""
        keys = candidates.keys.to(queries.device)
        return queries.float() @ keys.T

    # -- training interface -----------------------------------------------------------------------
    @property
    def embed_dim(self) -> int:
        return self.location_encoder.embed_dim

    def encode_images(self, features: Tensor) -> Tensor:
        """Backbone features [..., in_dim] -> image embeddings [..., embed_dim] (unnormalised)."""
        return self.image_head(features)

    def encode_locations(self, latlon: Tensor) -> Tensor:
        """Lat/lon in degrees [N, 2] -> location embeddings [N, embed_dim] (unnormalised)."""
        return self.location_encoder(latlon)

    def scale(self) -> Tensor:
        """The logit scale actually used: clamped like CLIP's."""
        return self.logit_scale.clamp(max=self.config.max_logit_scale)

    def scores(self, image_emb: Tensor, location_emb: Tensor) -> Tensor:
        """Logits exp(scale) · cos between image and location embeddings: [N, M]."""
        return logits_from_embeddings(image_emb, location_emb, self.scale())

    def forward(self, features: Tensor, latlon: Tensor) -> Tensor:
        return self.scores(self.encode_images(features), self.encode_locations(latlon))

    # -- construction -----------------------------------------------------------------------------
    @classmethod
    def from_official(cls, **overrides: Any) -> GeoCLIP:
        """The released GeoCLIP weights (from the `geoclip` wheel), with a fresh queue.

        `overrides` change GeoCLIPConfig fields other than the architecture (queue size, seed...).
        """
        return cls.load("geoclip", **overrides)

    @classmethod
    def load(cls, name_or_path: str | Path, **overrides: Any) -> Self:
        """A geoalign checkpoint folder (or "geoclip" for the official weights)."""
        from geoalign.models.registry import load_checkpoint

        return cls.from_checkpoint(load_checkpoint(name_or_path), **overrides)

    @classmethod
    def from_checkpoint(
        cls, ckpt: Any, *, device: Any = None, dtype: Any = None, **overrides: Any
    ) -> Self:
        """The model a `Checkpoint` holds (config and tensors already read, see the registry).

        Subclasses load through the same steps and add their own parts with the two hooks
        `_from_checkpoint` (build the model) and `_load_extra_state` (fill their tensors)."""
        from geoalign.errors import WeightsNotFoundError

        if ckpt.method != cls.method:
            raise WeightsNotFoundError(
                f"{ckpt.path} is a {ckpt.method!r} checkpoint, not a {cls.method!r} one"
            )
        try:
            config = cls.config_from_checkpoint(ckpt.config, **overrides)
        except (KeyError, TypeError, ValueError) as err:
            raise WeightsNotFoundError(
                f"{ckpt.path}/config.json: not a complete {cls.method} config ({err!r} missing "
                "or malformed): re-export the checkpoint"
            ) from err
        model = cls._from_checkpoint(ckpt, config)
        try:
            model._load_extra_state(ckpt)
            model.location_encoder.load_state_dict(ckpt.component("location_encoder"), strict=True)
            model.image_head.load_state_dict(ckpt.component("image_head"), strict=True)
        except (RuntimeError, KeyError) as err:
            raise WeightsNotFoundError(
                f"{ckpt.path}: the weights do not match the config.json's architecture "
                f"({str(err).splitlines()[0]})"
            ) from err
        with torch.no_grad():
            model.logit_scale.copy_(ckpt.state["logit_scale"].reshape(()))
        queue = ckpt.component("queue")
        if queue and queue["coords"].shape[0] == model.config.queue_size:
            model.queue.load_state_dict(queue)
        model.source = str(ckpt.path)
        if device is not None or dtype is not None:
            model = model.to(device=device, dtype=dtype)
        return model

    @staticmethod
    def config_from_checkpoint(cfg: dict[str, Any], **overrides: Any) -> GeoCLIPConfig:
        """The GeoCLIPConfig a checkpoint's config.json records, with field overrides."""
        base = dict(cfg.get("geoclip", {}))
        base["location_encoder"] = cfg["location_encoder"]
        base["image_head"] = cfg["image_head"]
        base.setdefault("features", cfg.get("backbone"))
        return replace(GeoCLIPConfig.from_dict(base), **overrides)

    @classmethod
    def _from_checkpoint(cls, ckpt: Any, config: GeoCLIPConfig) -> Self:
        """Hook: the empty model a checkpoint describes (a subclass checks and reads its parts)."""
        return cls(config)

    def _load_extra_state(self, ckpt: Any) -> None:
        """Hook: load a subclass's own tensors from the checkpoint (GeoCLIP has none)."""

    def _extra_state(self) -> dict[str, Tensor]:
        """Hook: a subclass's own tensors, keys prefixed by component (GeoCLIP has none)."""
        return {}

    def _extra_config(self) -> dict[str, Any]:
        """Hook: a subclass's own config.json sections (GeoCLIP has none)."""
        return {}

    def checkpoint_state(self) -> dict[str, Tensor]:
        """Tensors in the geoalign checkpoint layout (component-prefixed keys)."""
        state = {f"location_encoder.{k}": v for k, v in self.location_encoder.state_dict().items()}
        state.update({f"image_head.{k}": v for k, v in self.image_head.state_dict().items()})
        state["logit_scale"] = self.logit_scale.detach().reshape(())
        state.update({f"queue.{k}": v for k, v in self.queue.state_dict().items()})
        state.update(self._extra_state())
        return {k: v.detach().float() if v.is_floating_point() else v for k, v in state.items()}

    def save(self, out_dir: str | Path, provenance: dict[str, Any] | None = None) -> Path:
        """Write a geoalign checkpoint folder readable by `load` and the registry."""
        from geoalign.models.checkpoint import save_checkpoint

        config = {
            "method": self.method,
            "location_encoder": self.config.location_encoder.to_dict(),
            "image_head": self.config.image_head.to_dict(),
            "backbone": self.config.features,
            "geoclip": {
                k: v
                for k, v in self.config.to_dict().items()
                if k not in {"location_encoder", "image_head"}
            },
            **self._extra_config(),
            "provenance": {"saved_by": f"geoalign {__version__}", **(provenance or {})},
        }
        return save_checkpoint(Path(out_dir), self.checkpoint_state(), config)

    # -- conveniences for evaluation --------------------------------------------------------------
    @torch.inference_mode()
    def embed_gallery(self, latlon: Tensor, batch_size: int = 4096) -> Tensor:
        """Location embeddings of a (large) gallery, in chunks, without autograd."""
        return self.location_encoder.encode(latlon, batch_size=batch_size)

    @torch.inference_mode()
    def embed_queries(self, features: Tensor, batch_size: int = 8192) -> Tensor:
        """Image embeddings of [N, D] or [N, crops, D] features (crops kept)."""
        param = next(self.image_head.parameters())
        out = [
            self.image_head(chunk.to(param.device)) for chunk in features.split(batch_size, dim=0)
        ]
        return torch.cat(out) if out else features.new_zeros(0, self.embed_dim)
