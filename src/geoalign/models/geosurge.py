"""GeoSURGE (Daruna et al.): a hierarchy of learned geocell embeddings matched against a visual
feature, trained with one InfoNCE per partition level and read out by hierarchical inference.

Geographic representation (Sec. III-A). One embedding table per partition level of an S2
`CellHierarchy` (coarse to fine), `embed_dim` = 768 by default, and one learnable temperature per
level (initialised to 0.07). The levels share nothing: each is trained by its own loss term.

The embedding tables, classifiers and hierarchical inference are network modules in
`geoalign.nn.geocells`; this file is the method: config, visual side, checkpoints, the Locator
interface. Loss (Sec. III-C, eq. 1; defined in `geoalign.losses`). For level k, image i must pick the
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
segmentation map (`"fusion"`). It implements `geoalign.models.base.Locator`, so
`geoalign.inference.Geolocator` and the evaluation harness rank its cells by the same code as
GeoCLIP's gallery (priors, place names, ten-crop, batching).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor, nn

from geoalign._version import __version__
from geoalign.errors import GeoalignError, WeightsNotFoundError
from geoalign.geo.cells import CellHierarchy
from geoalign.losses import LevelLosses, Negatives
from geoalign.models.base import Candidates, Reads
from geoalign.nn.geocells import GeographicEmbeddings, LevelClassifiers, hierarchical_log_scores
from geoalign.nn.semantic_fusion import SemanticFusion, SemanticFusionConfig

Objective = Literal["embeddings", "classifier"]
Visual = Literal["features", "backbone", "fusion"]
Head = Literal["identity", "linear", "mlp"]
Coordinates = Literal["mean", "gallery"]
METHOD = "geosurge"
CELLS_DIR = "cells"


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

    def visual_from_features(self, features: Tensor) -> Tensor:
        """Precomputed backbone features [..., feature_dim] -> visual features [..., embed_dim]."""
        if self.config.visual != "features":
            raise GeoalignError(
                f"this GeoSURGE model (visual {self.config.visual!r}) trains a backbone block"
                + (" and fuses segmentation maps" if self.config.visual == "fusion" else "")
                + ": it reads photos, not precomputed features"
            )
        return self.head(features.to(self._head_dtype()))

    def visual_from_pixels(self, pixel_values: Tensor, seg: Tensor | None = None) -> Tensor:
        """Backbone pixel values [B, 3, S, S] (+ label maps [B, S, S] for fusion) -> visual."""
        if self.config.visual == "features":
            raise GeoalignError(
                "this GeoSURGE model reads features of a frozen backbone: encode the pixels with "
                f"the backbone ({self.config.backbone or 'not recorded'}) and pass the features"
            )
        if self.config.visual == "backbone":
            return self.head(self.backbone(pixel_values).to(self._head_dtype()))
        if seg is None:
            raise GeoalignError("semantic fusion needs a segmentation map per image")
        return self.fusion(seg, self.backbone.forward_tokens(pixel_values))

    def encode(self, batch: dict[str, Tensor]) -> Tensor:
        """A training/eval batch ("features", or "pixels" [+ "seg"]) -> visual features [B, D]."""
        if "features" in batch:
            return self.visual_from_features(batch["features"])
        return self.visual_from_pixels(batch["pixels"], batch.get("seg"))

    # -- the Locator interface --------------------------------------------------------------------
    ranks = "cells"

    @property
    def reads(self) -> Reads:
        return {"features": "features", "backbone": "pixels"}.get(
            self.config.visual, "pixels+segmentation"
        )

    @property
    def feature_dim(self) -> int | None:
        return self.config.feature_dim

    @property
    def backbone_spec(self) -> str | None:
        return self.config.backbone

    def encode_features(self, features: Tensor) -> Tensor:
        """Backbone features [B, D] -> queries (see `queries`)."""
        return self.queries(self.visual_from_features(features.to(self.fine_parents.device)))

    def encode_pixels(self, pixels: Tensor, segmentation: Tensor | None = None) -> Tensor:
        """Pixels [B, 3, S, S] (+ label maps for fusion) -> queries, through the trained block."""
        return self.queries(self.visual_from_pixels(pixels, segmentation))

    def candidates(
        self, gallery: np.ndarray | None = None, keys: Tensor | None = None
    ) -> Candidates:
        """The finest cells at their mean training coordinates (a GPS gallery only refines the
        coordinates of predicted cells, see `geoalign.inference.cell_gallery`)."""
        fine = self.hierarchy.partitions[-1]
        desc = f"{len(self.cell_latlon)} finest cells"
        return Candidates(self.cell_latlon, "cells", None, desc, cells=fine.cell_ids)

    def similarities(self, queries: Tensor, candidates: Candidates | None = None) -> Tensor:
        """Hierarchical log scores of the finest cells (the learned per-level temperatures are
        part of `geo.logits`): their softmax is the normalised product of the levels' probabilities."""
        return self.cell_log_scores(queries.to(self.fine_parents.device))

    def temperature(self) -> float:
        """1.0: the per-level temperatures are inside the hierarchical scores."""
        return 1.0

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
        from geoalign.models.checkpoint import save_checkpoint

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
    def load(cls, name_or_path: str | Path, **kwargs: Any) -> GeoSurge:
        """A checkpoint written by `save` (see `from_checkpoint` for the options)."""
        from geoalign.models.registry import load_checkpoint

        return cls.from_checkpoint(load_checkpoint(name_or_path), **kwargs)

    @classmethod
    def from_checkpoint(
        cls,
        ckpt: Any,
        *,
        backbone: nn.Module | str | None = None,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
        local_files_only: bool | None = None,
    ) -> GeoSurge:
        """The model a `Checkpoint` holds. Models with a trained backbone block load their
        pretrained backbone (`backbone`: a spec, a module, or None = the one recorded) and put
        the trained parameters into it. The model comes back frozen, in eval mode."""
        if ckpt.method != METHOD:
            raise WeightsNotFoundError(
                f"{ckpt.path}: a {ckpt.method!r} checkpoint, not a GeoSURGE one"
            )
        try:
            config = GeoSurgeConfig.from_dict(ckpt.config[METHOD])
        except (KeyError, TypeError, ValueError) as err:
            raise WeightsNotFoundError(f"{ckpt.path}: bad GeoSURGE config.json ({err})") from err
        cells = ckpt.path / CELLS_DIR
        if not (cells / "hierarchy.json").is_file():
            raise WeightsNotFoundError(f"{ckpt.path}: the cell hierarchy ({CELLS_DIR}/) is missing")
        hierarchy = CellHierarchy.load(cells)
        module = None
        device = device or "cpu"
        dtype = dtype or torch.float32
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
        try:
            self.load_state_dict({**own, **{k: state[k] for k in expected}}, strict=True)
        except RuntimeError as err:
            raise WeightsNotFoundError(
                "GeoSURGE checkpoint does not match its config.json (edited dimensions?): "
                f"{str(err).splitlines()[0]}"
            ) from err


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
