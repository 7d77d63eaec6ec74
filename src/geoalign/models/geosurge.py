"""GeoSURGE (Daruna et al.): a hierarchy of learned geocell embeddings matched against a visual
feature, trained with one InfoNCE per partition level and read out by hierarchical inference.

Geographic representation (Sec. III-A). One embedding table per partition level of an S2
`CellHierarchy` (coarse to fine), `embed_dim` = 768 by default, and one learnable temperature per
level (initialised to 0.07). The levels share nothing: each is trained by its own loss term.

Loss (Sec. III-C, eq. 1; defined in `geoalign.losses`). For level k, image i must pick the
embedding g of its own cell among candidates, with logits cos(v, g) / tau_k; the total is the sum
over levels of the per-level mean.
`negatives="batch"` (the paper): the candidates are the cells present in the batch -- each distinct
cell once, so two photos of the same cell are not each other's negatives (eq. 1 literally lists
g_j for every j != i, which would count a duplicate of the positive as a negative).
`negatives="all"`: every cell of the level (a full softmax). Images whose cell at a level is
missing (-1 from `CellHierarchy.assign`: a region dropped at that level) are ignored at that level.
`objective="classifier"` replaces the embeddings by a plain linear classifier per level with cross
entropy over all cells (the "no geographic embeddings" row of Table VI).

Hierarchical inference (Sec. III-D). For every finest cell, the product over levels of the
softmax-normalised similarity of the cell containing it: log p(r) = sum_k log softmax_k(s_k)[
parent_k(r)], gathered with the hierarchy's parent index arrays (no loop over cells). A finest cell
without a parent at some level (possible only for hierarchies that do not nest, e.g. imported
files) takes the uniform probability 1/n_k there. Reported probabilities are these products
renormalised over the finest cells a prior leaves (like GeoCLIP's gallery softmax).

Coordinates. The predicted location of a cell is by default the mean training coordinate of the
cell (`coordinates="mean"`, stored with the hierarchy). With `coordinates="gallery"` a GPS gallery
refines it: among gallery points inside the predicted cell, the one with the highest provided
location score (e.g. GeoCLIP's image-to-GPS logits) or, without scores, the one nearest to the
cell's mean; a cell with no gallery point keeps its mean.

Visual representation: precomputed backbone features through an optional head (`visual=
"features"`, frozen backbone), the pooled output of a backbone whose last block trains
(`"backbone"`, Table VIII's "no fusion"), or the semantic fusion module over CLIP tokens and a
segmentation map (`"fusion"`). `GeoSurgeLocator` wraps a trained model in the same prediction API as
`geoalign.geolocator.Geolocator` (priors, place names, ten-crop, batching, JSONL resume).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from geoalign._version import __version__
from geoalign.errors import GeoalignError, WeightsNotFoundError
from geoalign.geo.cells import CellHierarchy
from geoalign.geolocator import Candidate, Geolocator
from geoalign.losses import (
    LevelLosses,
    Negatives,
    hierarchical_classification_loss,
    hierarchical_info_nce,
)
from geoalign.nn.semantic_fusion import SemanticFusion, SemanticFusionConfig

Objective = Literal["embeddings", "classifier"]
Visual = Literal["features", "backbone", "fusion"]
Head = Literal["identity", "linear", "mlp"]
Coordinates = Literal["mean", "gallery"]
METHOD = "geosurge"
CELLS_DIR = "cells"


# --- hierarchical inference ------------------------------------------------------------------


def hierarchical_log_scores(level_logits: list[Tensor], fine_parents: Tensor) -> Tensor:
    """log of the product over levels of softmax probabilities, for every finest cell: [B, n_fine].

    level_logits[k] [B, n_k] (coarse to fine); fine_parents [n_fine, L-1] class index of each
    finest cell's containing cell at the coarser levels (-1: none -> uniform 1/n_k).
    """
    n_levels = len(level_logits)
    if fine_parents.dim() != 2 or fine_parents.shape[1] != n_levels - 1:
        raise ValueError(
            f"fine_parents must be [n_fine, {n_levels - 1}], got {tuple(fine_parents.shape)}"
        )
    out = torch.log_softmax(level_logits[-1].float(), dim=-1)
    if fine_parents.shape[0] != out.shape[1]:
        raise ValueError(f"{fine_parents.shape[0]} parent rows for {out.shape[1]} finest cells")
    parents = fine_parents.to(out.device)
    for k in range(n_levels - 1):  # a loop over levels; each gather covers every cell at once
        logp = torch.log_softmax(level_logits[k].float(), dim=-1)
        idx = parents[:, k]
        gathered = logp.index_select(1, idx.clamp(min=0))
        out = out + torch.where(idx >= 0, gathered, -math.log(logp.shape[1]))
    return out


# --- geographic representation -------------------------------------------------------------------


class GeographicEmbeddings(nn.Module):
    """One embedding table and one learnable temperature per level; logits = cos / tau_k."""

    def __init__(
        self,
        level_sizes: tuple[int, ...],
        dim: int,
        temperature_init: float = 0.07,
        learn_temperature: bool = True,
        max_logit_scale: float = math.log(100.0),
    ) -> None:
        super().__init__()
        self.tables = nn.ModuleList(nn.Embedding(n, dim) for n in level_sizes)
        self.logit_scales = nn.Parameter(
            torch.full((len(level_sizes),), math.log(1.0 / temperature_init)),
            requires_grad=learn_temperature,
        )
        self.max_logit_scale = max_logit_scale
        self.sizes = tuple(level_sizes)
        self._unit_cache: tuple[tuple, Tensor] | None = None

    def unit_tables(self) -> Tensor:
        """Every level's unit-norm embeddings, concatenated: [sum of cells, dim], float32.

        Without autograd (inference, validation) the result is cached until a weight changes:
        normalising ~60K x 768 embeddings per query batch would cost more than the matmul."""
        weights = [t.weight for t in self.tables]
        if torch.is_grad_enabled():
            return torch.cat([F.normalize(w.float(), dim=-1) for w in weights])
        key = tuple((w.data_ptr(), w._version, w.device, w.dtype) for w in weights)
        if self._unit_cache is None or self._unit_cache[0] != key:
            unit = torch.cat([F.normalize(w.detach().float(), dim=-1) for w in weights])
            self._unit_cache = (key, unit)
        return self._unit_cache[1]

    def scales(self) -> Tensor:
        """Log logit scales in use, clamped like CLIP's (tau >= 0.01)."""
        return self.logit_scales.clamp(max=self.max_logit_scale)

    def queries(self, visual: Tensor) -> Tensor:
        return F.normalize(visual.float(), dim=-1)

    def logits(self, queries: Tensor) -> list[Tensor]:
        """exp(scale_k) * cosine for each level; `queries` are normalised (see `queries`)."""
        scales = self.scales().float().exp()
        sims = queries.float() @ self.unit_tables().T  # one matmul for all levels
        return [scales[k] * part for k, part in enumerate(sims.split(self.sizes, dim=-1))]

    def loss(
        self,
        visual: Tensor,
        labels: Tensor,
        *,
        negatives: Negatives = "batch",
        candidate_labels: Tensor | None = None,
    ) -> LevelLosses:
        return hierarchical_info_nce(
            visual,
            [t.weight for t in self.tables],
            self.scales(),
            labels,
            negatives=negatives,
            candidate_labels=candidate_labels,
        )


class LevelClassifiers(nn.Module):
    """A linear classifier per level (no geographic embeddings, no temperature)."""

    def __init__(self, level_sizes: tuple[int, ...], dim: int) -> None:
        super().__init__()
        self.heads = nn.ModuleList(nn.Linear(dim, n) for n in level_sizes)

    def queries(self, visual: Tensor) -> Tensor:
        return visual.float()

    def logits(self, queries: Tensor) -> list[Tensor]:
        return [F.linear(queries.float(), h.weight.float(), h.bias.float()) for h in self.heads]

    def loss(self, visual: Tensor, labels: Tensor, **_: Any) -> LevelLosses:
        return hierarchical_classification_loss(self.logits(self.queries(visual)), labels)


# --- the model ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class GeoSurgeConfig:
    level_sizes: tuple[int, ...]  # cells per partition level, coarse to fine
    embed_dim: int = 768
    objective: Objective = "embeddings"
    negatives: Negatives = "batch"
    temperature_init: float = 0.07
    learn_temperature: bool = True
    max_logit_scale: float = math.log(100.0)
    visual: Visual = "features"
    feature_dim: int | None = None  # width of the features/backbone output the head reads
    feature_head: Head = "identity"
    backbone: str | None = None  # backbone spec (features: the model the features came from)
    image_size: int | None = None  # the backbone's input size (checked when loading it)
    trainable_blocks: int = 1  # last backbone blocks that train (visual backbone/fusion)
    fusion: SemanticFusionConfig | None = None
    segmenter: str | None = None  # segmenter spec the maps came from (visual fusion)
    coordinates: Coordinates = "mean"
    extra: dict[str, Any] = field(default_factory=dict)  # free-form provenance (not used)

    def __post_init__(self) -> None:
        object.__setattr__(self, "level_sizes", tuple(int(n) for n in self.level_sizes))
        if not self.level_sizes or min(self.level_sizes) < 1:
            raise ValueError(f"every level needs >= 1 cell, got {self.level_sizes}")
        if self.visual == "fusion" and self.fusion is None:
            raise ValueError("visual 'fusion' needs a fusion config")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["level_sizes"] = list(self.level_sizes)
        d["fusion"] = self.fusion.to_dict() if self.fusion is not None else None
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> GeoSurgeConfig:
        d = dict(d)
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown GeoSURGE config keys: {sorted(unknown)}")
        if d.get("fusion") is not None:
            d["fusion"] = SemanticFusionConfig.from_dict(d["fusion"])
        return cls(**d)


def _build_head(kind: Head, in_dim: int | None, out_dim: int) -> nn.Module:
    if kind == "identity":
        if in_dim is not None and in_dim != out_dim:
            raise GeoalignError(
                f"features of width {in_dim} cannot be matched to {out_dim}-d geographic "
                "embeddings without a head: set model.feature_head to linear or mlp"
            )
        return nn.Identity()
    if in_dim is None:
        raise GeoalignError(f"a {kind} feature head needs the feature width (feature_dim)")
    if kind == "linear":
        return nn.Linear(in_dim, out_dim)
    if kind == "mlp":
        return nn.Sequential(nn.Linear(in_dim, out_dim), nn.GELU(), nn.Linear(out_dim, out_dim))
    raise ValueError(f"feature_head must be identity, linear or mlp, got {kind!r}")


class GeoSurge(nn.Module):
    """Visual encoder (+ optional backbone and fusion) and the geographic representation."""

    method = METHOD

    def __init__(
        self,
        config: GeoSurgeConfig,
        hierarchy: CellHierarchy,
        *,
        backbone: nn.Module | None = None,
    ) -> None:
        super().__init__()
        if tuple(hierarchy.sizes) != config.level_sizes:
            raise GeoalignError(
                f"the hierarchy has levels of {hierarchy.sizes} cells, the config "
                f"{list(config.level_sizes)}"
            )
        self.config = config
        self.hierarchy = hierarchy
        c = config
        if c.objective == "embeddings":
            self.geo: GeographicEmbeddings | LevelClassifiers = GeographicEmbeddings(
                c.level_sizes,
                c.embed_dim,
                c.temperature_init,
                c.learn_temperature,
                c.max_logit_scale,
            )
        elif c.objective == "classifier":
            self.geo = LevelClassifiers(c.level_sizes, c.embed_dim)
        else:
            raise ValueError(f"objective must be embeddings or classifier, got {c.objective!r}")
        if c.visual != "features" and backbone is None:
            raise GeoalignError(f"visual {c.visual!r} needs a backbone module")
        self.backbone = backbone if c.visual != "features" else None
        self.fusion = SemanticFusion(c.fusion) if c.visual == "fusion" else None
        in_dim = c.feature_dim
        if c.visual == "backbone" and in_dim is None:
            in_dim = int(backbone.embed_dim)
        self.head = (
            _build_head(c.feature_head, in_dim, c.embed_dim) if c.visual != "fusion" else None
        )
        fine = hierarchy.partitions[-1]
        self.register_buffer(
            "fine_parents", torch.from_numpy(np.ascontiguousarray(hierarchy.parents[-1])).long()
        )
        # float64 numpy, not a buffer: `.to(bfloat16)` must not round coordinates.
        self.cell_latlon = np.stack([fine.lat_mean, fine.lon_mean], axis=1).astype(np.float64)

    # -- visual side ------------------------------------------------------------------------------
    def _head_dtype(self) -> torch.dtype:
        params = list(self.head.parameters()) if self.head is not None else []
        return params[0].dtype if params else torch.float32

    def encode_features(self, features: Tensor) -> Tensor:
        """Precomputed backbone features [..., feature_dim] -> visual features [..., embed_dim]."""
        if self.config.visual == "fusion":
            raise GeoalignError(
                "this GeoSURGE model fuses CLIP tokens with segmentation maps: it reads images, "
                "not precomputed features"
            )
        return self.head(features.to(self._head_dtype()))

    def encode_images(self, pixel_values: Tensor, seg: Tensor | None = None) -> Tensor:
        """Backbone pixel values [B, 3, S, S] (+ label maps [B, S, S] for fusion) -> visual."""
        if self.config.visual == "features":
            raise GeoalignError("this GeoSURGE model reads precomputed features (encode_features)")
        if self.config.visual == "backbone":
            return self.head(self.backbone(pixel_values).to(self._head_dtype()))
        if seg is None:
            raise GeoalignError("semantic fusion needs a segmentation map per image")
        return self.fusion(seg, self.backbone.forward_tokens(pixel_values))

    def encode(self, batch: dict[str, Tensor]) -> Tensor:
        """A training/eval batch ("features", or "pixels" [+ "seg"]) -> visual features [B, D]."""
        if "features" in batch:
            return self.encode_features(batch["features"])
        return self.encode_images(batch["pixels"], batch.get("seg"))

    # -- geographic side --------------------------------------------------------------------------
    @property
    def n_levels(self) -> int:
        return len(self.config.level_sizes)

    def queries(self, visual: Tensor) -> Tensor:
        """What the level logits are linear in: normalised features (embeddings) or raw
        (classifier). The mean of several crops' queries gives the mean of their logits."""
        return self.geo.queries(visual)

    def level_logits(self, queries: Tensor) -> list[Tensor]:
        return self.geo.logits(queries)

    def cell_log_scores(self, queries: Tensor) -> Tensor:
        """Hierarchical log scores of every finest cell: [B, n_fine]."""
        return hierarchical_log_scores(self.level_logits(queries), self.fine_parents)

    def loss(
        self, visual: Tensor, labels: Tensor, candidate_labels: Tensor | None = None
    ) -> LevelLosses:
        return self.geo.loss(
            visual, labels, negatives=self.config.negatives, candidate_labels=candidate_labels
        )

    def assign(self, latlon: Tensor | np.ndarray) -> Tensor:
        """Cell index per level of each coordinate [N, 2] -> long [N, L] (-1: no cell)."""
        arr = latlon.detach().cpu().double().numpy() if torch.is_tensor(latlon) else latlon
        arr = np.asarray(arr, dtype=np.float64).reshape(-1, 2)
        return torch.from_numpy(self.hierarchy.assign(arr[:, 0], arr[:, 1]))

    @torch.no_grad()
    def top_cells(
        self, queries: Tensor, k: int = 5, mask: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """(finest cell indices [B, k], probabilities [B, k]) renormalised over the allowed cells."""
        scores = self.cell_log_scores(queries)
        if mask is not None:
            scores = scores.masked_fill(~mask.to(scores.device), float("-inf"))
        k = min(k, scores.shape[1] if mask is None else int(mask.sum()))
        if k < 1:
            raise GeoalignError("no cell is left to predict (the prior excludes every cell)")
        top, idx = torch.topk(scores, k, dim=-1)
        return idx, torch.exp(top - torch.logsumexp(scores, dim=-1, keepdim=True))

    # -- checkpoints --------------------------------------------------------------------------------
    def _trained_backbone_names(self) -> list[str]:
        """Backbone parameters that GeoSURGE trains: the last `trainable_blocks` blocks, plus the
        final norm and projection when the pooled output is used (no fusion; fusion reads the
        blocks' tokens). Only these go into checkpoints; the rest is the pretrained backbone."""
        if self.backbone is None or self.config.trainable_blocks == 0:
            return []
        modules = list(self.backbone.blocks())[-self.config.trainable_blocks :]
        if self.config.visual == "backbone":
            modules += list(self.backbone.head_modules())
        wanted = {id(p) for m in modules for p in m.parameters()}
        return [n for n, p in self.backbone.named_parameters() if id(p) in wanted]

    def checkpoint_state(self) -> dict[str, Tensor]:
        state = {
            k: v
            for k, v in self.state_dict().items()
            if not k.startswith("backbone.") and k != "fine_parents"
        }
        bb = dict(self.backbone.named_parameters()) if self.backbone is not None else {}
        state.update({f"backbone.{n}": bb[n] for n in self._trained_backbone_names()})
        return {k: v.detach().float() if v.is_floating_point() else v for k, v in state.items()}

    def save(self, out_dir: str | Path, provenance: dict[str, Any] | None = None) -> Path:
        """Write a geoalign checkpoint folder: model.safetensors, config.json and cells/."""
        from geoalign.zoo import save_checkpoint

        out = Path(out_dir)
        config = {
            "method": METHOD,
            "backbone": self.config.backbone,
            "geosurge": self.config.to_dict(),
            "provenance": {"saved_by": f"geoalign {__version__}", **(provenance or {})},
        }
        save_checkpoint(out, self.checkpoint_state(), config)
        self.hierarchy.save(out / CELLS_DIR)
        return out

    @classmethod
    def load(
        cls,
        name_or_path: str | Path,
        *,
        backbone: nn.Module | str | None = None,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        local_files_only: bool | None = None,
    ) -> GeoSurge:
        """A checkpoint written by `save`. Models with a trained backbone block load their
        pretrained backbone (`backbone`: a spec, a module, or None = the one recorded) and put
        the trained parameters into it. The model comes back frozen, in eval mode."""
        from geoalign.zoo import load_checkpoint

        ckpt = load_checkpoint(name_or_path)
        if ckpt.config.get("method") != METHOD:
            raise WeightsNotFoundError(
                f"{ckpt.path}: a {ckpt.config.get('method')!r} checkpoint, not a GeoSURGE one"
            )
        config = GeoSurgeConfig.from_dict(ckpt.config[METHOD])
        cells = ckpt.path / CELLS_DIR
        if not (cells / "hierarchy.json").is_file():
            raise WeightsNotFoundError(f"{ckpt.path}: the cell hierarchy ({CELLS_DIR}/) is missing")
        hierarchy = CellHierarchy.load(cells)
        module = None
        if config.visual != "features":
            module = _backbone_module(
                backbone, config, device=device, dtype=dtype, local_files_only=local_files_only
            )
        model = cls(config, hierarchy, backbone=module)
        model.load_checkpoint_state(ckpt.state)
        model.source = str(ckpt.path)
        model.requires_grad_(False)
        return model.to(device=device, dtype=dtype).eval()

    def load_checkpoint_state(self, state: dict[str, Tensor]) -> None:
        """Load `checkpoint_state()` tensors (strict about every non-frozen tensor)."""
        own = self.state_dict()
        trained = {f"backbone.{n}" for n in self._trained_backbone_names()}
        expected = {
            k
            for k in own
            if (not k.startswith("backbone.") or k in trained) and k != "fine_parents"
        }
        missing, unexpected = expected - set(state), set(state) - expected
        if missing or unexpected:
            raise WeightsNotFoundError(
                "GeoSURGE checkpoint does not match the model: "
                f"missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}"
            )
        self.load_state_dict({**own, **{k: state[k] for k in expected}}, strict=True)


def _backbone_module(
    backbone: nn.Module | str | None,
    config: GeoSurgeConfig,
    *,
    device: str | torch.device,
    dtype: torch.dtype,
    local_files_only: bool | None,
) -> nn.Module:
    if isinstance(backbone, nn.Module):
        module = backbone
    else:
        from geoalign.nn.backbones import load_backbone

        spec = backbone or config.backbone
        if not spec:
            raise GeoalignError("this GeoSURGE checkpoint records no backbone: pass one")
        module = load_backbone(
            spec, device=device, dtype=dtype, frozen=True, local_files_only=local_files_only
        )
    size = getattr(module, "image_size", None)
    if config.image_size is not None and size is not None and size != config.image_size:
        raise GeoalignError(
            f"backbone {getattr(module, 'name', '')!r} takes {size}px images, the GeoSURGE model "
            f"was trained with {config.image_size}px ({config.backbone})"
        )
    return module


# --- GPS gallery refinement ------------------------------------------------------------------------


class CellGallery:
    """GPS gallery points grouped by the finest cell containing them.

    `refine(cells, scores)` turns predicted cells into coordinates: the gallery point of the cell
    with the highest score (scores [B, M] over the whole gallery, e.g. GeoCLIP logits of the image),
    or without scores the point nearest the cell's mean training coordinate. Cells without a
    gallery point keep their mean.
    """

    def __init__(self, latlon: np.ndarray, hierarchy: CellHierarchy) -> None:
        from geoalign.geo.distance import haversine_km

        self.latlon = np.asarray(latlon, dtype=np.float64).reshape(-1, 2)
        fine = hierarchy.partitions[-1]
        self.cell_latlon = np.stack([fine.lat_mean, fine.lon_mean], axis=1)
        cells = hierarchy.assign(self.latlon[:, 0], self.latlon[:, 1])[:, -1]
        self.point_cell = cells
        inside = np.flatnonzero(cells >= 0)
        self.order = inside[np.argsort(cells[inside], kind="stable")]
        n = len(fine)
        self.offsets = np.searchsorted(cells[self.order], np.arange(n + 1))
        self.nearest = np.full(n, -1, dtype=np.int64)
        if inside.size:
            mean = self.cell_latlon[cells[inside]]
            d = haversine_km(self.latlon[inside, 0], self.latlon[inside, 1], mean[:, 0], mean[:, 1])
            by_cell_then_distance = np.lexsort((d, cells[inside]))
            first = np.unique(cells[inside][by_cell_then_distance], return_index=True)
            self.nearest[first[0]] = inside[by_cell_then_distance[first[1]]]

    def __len__(self) -> int:
        return len(self.latlon)

    def refine(
        self, cells: np.ndarray, scores: Tensor | np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """(coordinates [B, k, 2], gallery index [B, k] or -1 where the cell mean was kept)."""
        cells = np.asarray(cells, dtype=np.int64)
        if scores is None:
            idx = self.nearest[cells]
        else:
            s = scores.detach().float().cpu().numpy() if torch.is_tensor(scores) else scores
            if s.shape != (cells.shape[0], len(self)):
                raise ValueError(f"scores must be [{cells.shape[0]}, {len(self)}], got {s.shape}")
            idx = np.full(cells.shape, -1, dtype=np.int64)
            for b, j in np.ndindex(*cells.shape):  # one small lookup per candidate, not per cell
                members = self.order[self.offsets[cells[b, j]] : self.offsets[cells[b, j] + 1]]
                if members.size:
                    idx[b, j] = members[np.argmax(s[b, members])]
        coords = np.where(
            (idx >= 0)[..., None], self.latlon[idx.clip(min=0)], self.cell_latlon[cells]
        )
        return coords, idx


# --- prediction -----------------------------------------------------------------------------------


class GeoSurgeLocator(Geolocator):
    """GeoSURGE behind the `Geolocator` prediction API (iter_predict, predict, predict_features,
    rank, prior_mask): it reuses Geolocator's batching, ten-crop, error records and resume, and
    replaces what is ranked -- finest cells by hierarchical inference instead of gallery points.

    `Candidate.gallery_index` is the finest cell's class index. Priors keep the cells whose mean
    training coordinate satisfies them. Fusion models segment each backbone crop on the fly with
    `segmenter` (the same crop the training maps were made from).
    """

    def __init__(
        self,
        model: GeoSurge,
        *,
        backbone: nn.Module | None = None,
        segmenter: nn.Module | None = None,
        gallery: Any = None,
        coordinates: Coordinates | None = None,
    ) -> None:
        # Geolocator.__init__ builds a GPS gallery search; GeoSURGE ranks cells, so it is not called.
        self.model = model.eval()
        self.backbone = model.backbone if model.backbone is not None else backbone
        if self.backbone is not None:
            self.backbone.eval()
        self.segmenter = segmenter
        if model.config.visual == "fusion" and segmenter is None:
            raise GeoalignError("this GeoSURGE model fuses segmentation maps: pass a segmenter")
        self.coordinates = coordinates or model.config.coordinates
        self._latlon = model.cell_latlon
        self.refiner: CellGallery | None = None
        if self.coordinates == "gallery":
            if gallery is None:
                raise GeoalignError("coordinates='gallery' needs a GPS gallery")
            latlon = gallery[["lat", "lon"]].to_numpy() if hasattr(gallery, "columns") else gallery
            self.refiner = CellGallery(np.asarray(latlon, dtype=np.float64), model.hierarchy)
        elif self.coordinates != "mean":
            raise ValueError(f"coordinates must be 'mean' or 'gallery', got {self.coordinates!r}")
        self._places = None

    @classmethod
    def from_pretrained(
        cls,
        model: str | Path = "runs/geosurge/last",
        *,
        backbone: str | nn.Module | None = "auto",
        segmenter: str | nn.Module | None = "auto",
        gallery: Any = None,
        coordinates: Coordinates | None = None,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        cache: bool = True,
    ) -> GeoSurgeLocator:
        """A trained GeoSURGE folder. "auto" backbone/segmenter = the specs it records; a gallery
        (name, file or DataFrame) is read only for coordinates="gallery"."""
        auto_bb = backbone is None or (isinstance(backbone, str) and backbone == "auto")
        net = GeoSurge.load(
            model, backbone=None if auto_bb else backbone, device=device, dtype=dtype
        )
        frozen = None
        if net.config.visual == "features" and net.config.backbone and auto_bb:
            frozen = net.config.backbone
        elif net.config.visual == "features" and not auto_bb:
            frozen = backbone
        if isinstance(frozen, str):
            from geoalign.evaluation.descriptors import SCENE_LABELS
            from geoalign.nn.backbones import load_backbone

            # scene-label descriptors come with the benchmarks, no model makes them from photos
            frozen = (
                None
                if frozen == SCENE_LABELS
                else load_backbone(frozen, device=device, dtype=dtype)
            )
        seg = None
        if net.config.visual == "fusion":
            seg = segmenter
            if seg is None or (isinstance(seg, str) and seg == "auto"):
                seg = net.config.segmenter
            if isinstance(seg, str):
                from geoalign.nn.segmenters import load_segmenter

                seg = load_segmenter(seg, device=device)
        mode = coordinates or net.config.coordinates
        table = None
        if mode == "gallery":
            from geoalign.data.galleries import load_gallery

            table = (
                gallery if hasattr(gallery, "columns") else load_gallery(gallery or "geoclip-100k")
            )
        return cls(net, backbone=frozen, segmenter=seg, gallery=table, coordinates=mode)

    # -- embeddings -------------------------------------------------------------------------------
    @torch.inference_mode()
    def embed_features(self, features: torch.Tensor) -> torch.Tensor:
        """Precomputed backbone features [B, D] -> queries (see `GeoSurge.queries`)."""
        device = self.model.fine_parents.device
        return self.model.queries(self.model.encode_features(features.to(device)))

    @torch.inference_mode()
    def embed_pixels(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> queries; (B, n_crops, 3, H, W) -> the mean of the crops' queries,
        which makes every level's logits the mean of the crops' logits."""
        if self.backbone is None:
            raise ValueError("this locator has no backbone: pass features to predict_features")
        crops = pixel_values.ndim == 5
        flat = pixel_values.flatten(0, 1) if crops else pixel_values
        if self.model.config.visual == "features":
            visual = self.model.encode_features(self.backbone(flat))
        elif self.model.config.visual == "backbone":
            visual = self.model.encode_images(flat)
        else:
            from geoalign.data.segmentation_store import denormalize

            rgb = denormalize(flat, self.backbone.preprocess)
            seg = self.segmenter(rgb, size=tuple(flat.shape[-2:]))
            visual = self.model.encode_images(flat, seg)
        q = self.model.queries(visual)
        if crops:
            q = q.view(pixel_values.shape[0], pixel_values.shape[1], -1).mean(1)
        return q

    # -- ranking ------------------------------------------------------------------------------------
    def rank(
        self,
        embeddings: torch.Tensor,
        *,
        top_k: int = 5,
        mask: torch.Tensor | None = None,
        places: bool = False,
        gallery_scores: torch.Tensor | None = None,
    ) -> list[list[Candidate]]:
        """Top-k finest cells per query (hierarchical inference) as coordinates."""
        device = self.model.fine_parents.device
        idx, probs = self.model.top_cells(embeddings.to(device), top_k, mask)
        idx, probs = idx.cpu().numpy(), probs.cpu().numpy()
        if self.refiner is not None:
            coords, _ = self.refiner.refine(idx, gallery_scores)
        else:
            coords = self._latlon[idx]
        return self._candidates(idx, coords, probs, places)


def evaluate_geosurge(
    locator: GeoSurgeLocator,
    truth: np.ndarray,
    *,
    features: Tensor | np.ndarray | None = None,
    images: Any = None,
    name: str = "GeoSURGE",
    prior: Any = None,
    ten_crop: bool = False,
    batch_size: int = 256,
    progress: Any = None,
) -> Any:
    """A `geoalign.evaluation.harness.MethodResult` (mode "top1": the top finest cell) for
    benchmark queries given as backbone features [N, D] ([N, crops, D]: crop queries averaged)
    or as photos (paths/images, segmented on the fly for fusion models; `ten_crop` as published).
    GeoSURGE ranks its own cells, so no GPS gallery is involved."""
    import time

    from geoalign.errors import DataError
    from geoalign.evaluation.harness import MethodResult
    from geoalign.geo.coords import as_latlon_array

    truth = as_latlon_array(truth, source="ground truth")
    start = time.perf_counter()
    mask = locator.prior_mask(prior)
    cands: list[list[Candidate]] = []
    if features is not None:
        feats = torch.as_tensor(np.asarray(features) if not torch.is_tensor(features) else features)
        for chunk in feats.float().split(batch_size):
            q = locator.embed_features(chunk.flatten(0, 1) if chunk.dim() == 3 else chunk)
            if chunk.dim() == 3:
                q = q.view(chunk.shape[0], chunk.shape[1], -1).mean(1)
            cands += locator.rank(q, top_k=1, mask=mask)
            if progress is not None:
                progress(len(chunk))
    elif images is not None:
        for pred in locator.iter_predict(
            images,
            top_k=1,
            prior=prior,
            ten_crop=ten_crop,
            batch_size=batch_size,
            on_batch=progress,
        ):
            if not pred.ok:
                raise DataError(f"{pred.source}: {pred.error} (fix or drop it from the benchmark)")
            cands.append(pred.candidates)
    else:
        raise ValueError("give the queries: features or images")
    if len(cands) != len(truth):
        raise DataError(f"{len(cands)} queries but {len(truth)} ground-truth rows")
    pred = np.array([[c[0].lat, c[0].lon] for c in cands])
    return MethodResult.from_predictions(
        f"{name} (top-1 cell)",
        "model",
        pred,
        truth,
        mode="top1",
        prob=np.array([c[0].prob for c in cands]),
        seconds=time.perf_counter() - start,
        notes=f"p = hierarchical probability of the cell; coordinates: {locator.coordinates}",
    )
