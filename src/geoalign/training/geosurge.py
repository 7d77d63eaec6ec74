"""Train GeoSURGE as published (Daruna et al., Sec. III-C and IV), from features or from images.

Recipe: AdamW (lr 1e-4, weight decay 1e-4), StepLR gamma 0.5 after every epoch, an effective batch
of 1024 (gradient accumulation over micro-batches when memory needs it), 1% of the rows held out
for validation, early stopping after 4 epochs without improvement of the validation metric (the
paper does not name it: we monitor the mean GeoScore of hierarchical top-1 predictions by default).
The best and the last model are exported as geoalign checkpoints (`<out_dir>/best`, `/last`).

Three visual inputs (`model.visual`):
- "features": precomputed backbone features (frozen backbone, no fusion) from a feature store,
  arrays, or the packaged scene-label descriptors; an optional linear/MLP head;
- "backbone": photos through CLIP with its last block (and final norm + projection) trainable,
  no fusion (Table VIII's "0 blocks");
- "fusion": photos through CLIP (last block trainable) fused with their ADE20K maps from a
  segmentation store (`geoalign segment extract`) by `fusion_blocks` blocks.

Choices where the paper is silent: the temperatures get no weight decay (decaying a log
temperature pulls it to tau = 1); photos get no augmentation (the map must stay aligned with the
crop); the cell hierarchy is built from the training rows (not the held-out ones) unless
`cells.path` names one. With "batch" negatives and gradient accumulation, the negatives are the
cells of each micro-batch (of the whole micro-batch across processes under DDP).

Config: YAML with sections model, cells, data, optim, trainer, eval and `method: geosurge`; see
configs/geosurge/. Unknown keys are errors; `base: file.yaml` inherits another config.

`geosurge_quickstart_rows` is the GeoSURGE part of `geoalign quickstart`: configs/geosurge/
scene_labels.yaml on the quickstart's descriptors, ~10 s on one CPU thread.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import lightning as L
import numpy as np
import torch
from torch import Tensor

from geoalign.errors import DataError, GeoalignError
from geoalign.geo.cells import DEFAULT_TAU_MAX, CellHierarchy, PartitionRules
from geoalign.models.geosurge import GeoSurge, GeoSurgeConfig
from geoalign.nn.semantic_fusion import SemanticFusionConfig
from geoalign.training.config import (
    EvalSection,
    TrainerSection,
    _build,
    apply_overrides,
    read_config_yaml,
)
from geoalign.training.data import (
    ArraySource,
    DataPosition,
    EpochLoader,
    StoreSource,
    epoch_seed,
    fraction_mask,
)

# --- config ---------------------------------------------------------------------------------------


@dataclass
class GeoSurgeModelSection:
    objective: Literal["embeddings", "classifier"] = "embeddings"  # Table VI
    negatives: Literal["batch", "all"] = "batch"
    embed_dim: int = 768
    temperature_init: float = 0.07
    learn_temperature: bool = True
    visual: Literal["features", "backbone", "fusion"] = "fusion"
    feature_head: Literal["identity", "linear", "mlp"] = "identity"
    backbone: str = "clip-vit-l14-336"
    trainable_blocks: int = 1
    fusion_blocks: int = 3  # Table VIII; 0 means visual "backbone"
    fusion: dict[str, Any] = field(default_factory=dict)  # other SemanticFusionConfig fields
    segmenter: str = "oneformer-ade20k"  # recorded; must match the segmentation store's
    coordinates: Literal["mean", "gallery"] = "mean"
    init: str | None = None  # a GeoSURGE checkpoint folder to start from


@dataclass
class CellsSection:
    path: str | None = None  # a saved CellHierarchy folder; else built from the training rows
    tau_max: list[int] = field(default_factory=lambda: list(DEFAULT_TAU_MAX))  # Table VII
    tau_min: int = 50
    min_level: int = 0


@dataclass
class GeoSurgeDataSection:
    source: Literal["arrays", "store", "images", "scene-labels"] = "images"
    path: str | None = None  # feature store, manifest, or scene-label CSV / benchmark name
    images_root: str | None = None
    segmentations: str | None = None  # segmentation store folder (visual fusion)
    val_fraction: float = 0.01
    split_seed: int = 0
    fraction: float = 1.0
    fraction_seed: int = 0
    num_workers: int = 4
    read_rows: int = 65536


@dataclass
class GeoSurgeOptimSection:
    lr: float = 1e-4
    weight_decay: float = 1e-4
    gamma: float = 0.5
    batch_size: int = 1024  # effective (global) batch
    micro_batch_size: int | None = None  # rows per forward pass, all processes; None = batch_size
    epochs: int = 30
    max_steps: int = -1
    patience: int = 4  # early stopping
    monitor: str = "val/geoscore"
    monitor_mode: Literal["max", "min"] = "max"
    val_batch_size: int = 1024


@dataclass
class GeoSurgeTrainConfig:
    method: Literal["geosurge"] = "geosurge"
    name: str = "geosurge"
    reproduces: str = "none"
    notes: str = ""
    model: GeoSurgeModelSection = field(default_factory=GeoSurgeModelSection)
    cells: CellsSection = field(default_factory=CellsSection)
    data: GeoSurgeDataSection = field(default_factory=GeoSurgeDataSection)
    optim: GeoSurgeOptimSection = field(default_factory=GeoSurgeOptimSection)
    trainer: TrainerSection = field(default_factory=lambda: TrainerSection(out_dir="runs/geosurge"))
    eval: EvalSection = field(default_factory=EvalSection)

    def to_dict(self) -> dict[str, Any]:
        import dataclasses

        return dataclasses.asdict(self)

    @property
    def visual(self) -> str:
        m = self.model
        return "backbone" if m.visual == "fusion" and m.fusion_blocks == 0 else m.visual

    @property
    def accumulate(self) -> int:
        o = self.optim
        micro = o.micro_batch_size or o.batch_size
        if o.batch_size % micro:
            raise DataError(
                f"optim.batch_size {o.batch_size} is not a multiple of micro_batch_size {micro}"
            )
        return o.batch_size // micro


def geosurge_config_from_dict(
    data: dict[str, Any], *, source: str = "config", overrides: list[str] | None = None
) -> GeoSurgeTrainConfig:
    data = apply_overrides(dict(data or {}), overrides)
    cfg = _build(GeoSurgeTrainConfig, data, source)
    if "out_dir" not in (data.get("trainer") or {}):
        cfg.trainer.out_dir = f"runs/{cfg.name}"
    return cfg


def load_geosurge_config(
    path: str | Path, overrides: list[str] | None = None
) -> GeoSurgeTrainConfig:
    """Read a GeoSURGE YAML config (see configs/geosurge/) and apply key.path=value overrides."""
    data = read_config_yaml(path)
    return geosurge_config_from_dict(data, source=str(path), overrides=overrides)


def is_geosurge_config(path: str | Path) -> bool:
    """True when the YAML file says `method: geosurge` (how `geoalign train` dispatches)."""
    try:
        data = read_config_yaml(path)
    except DataError:
        return False
    return data.get("method") == "geosurge"


# --- data -----------------------------------------------------------------------------------------

Batch = dict[str, Tensor]


class _MaskedStoreSource(StoreSource):
    """A feature store restricted to a row mask (the training split)."""

    def __init__(self, store: Any, mask: np.ndarray, read_rows: int) -> None:
        super().__init__(store, read_rows=read_rows)
        self.mask = mask
        self.n_rows = int(mask.sum())


class _PhotoDataset(torch.utils.data.Dataset):
    """Photo -> backbone pixels (resize + centre crop + normalise), its map, its coordinates."""

    def __init__(
        self,
        paths: list[Path],
        coords: np.ndarray,
        positions: np.ndarray,
        segs: Any,
        preprocess: Any,
    ) -> None:
        from geoalign.data.segmentation_store import crop_transform

        self.paths = paths
        self.coords = torch.tensor(np.asarray(coords), dtype=torch.float32)  # a copy
        self.positions = positions
        self.segs = segs
        self.preprocess = preprocess
        self.crop = crop_transform(preprocess)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> dict[str, Tensor] | None:
        from geoalign.data.images import load_image
        from geoalign.data.segmentation_store import normalize

        i = int(i)
        try:
            pixels = normalize(self.crop(load_image(self.paths[i])), self.preprocess)
        except Exception:  # an unreadable photo is dropped from its batch, never fatal
            return None
        item = {"pixels": pixels, "coords": self.coords[i]}
        if self.segs is not None:
            item["seg"] = torch.from_numpy(self.segs[int(self.positions[i])])
        return item


def _collate(items: list[dict[str, Tensor] | None]) -> Batch:
    good = [x for x in items if x is not None]
    if not good:
        return {}
    return {k: torch.stack([x[k] for x in good]) for k in good[0]}


class PhotoSource:
    """Photos of a manifest (and their segmentation maps) as a `BatchSource`."""

    def __init__(self, dataset: _PhotoDataset, rows: np.ndarray, num_workers: int) -> None:
        self.dataset = dataset
        self.rows = rows
        self.n_rows = len(rows)
        self.num_workers = num_workers

    def _loader(self, batches: list[list[int]]) -> Iterator[Batch]:
        loader = torch.utils.data.DataLoader(
            self.dataset, batch_sampler=batches, num_workers=self.num_workers, collate_fn=_collate
        )
        for batch in loader:
            if batch:
                yield batch

    def iter_local_batches(
        self, epoch: int, batch_size: int, seed: int, rank: int, world: int, skip: int
    ) -> Iterator[Batch]:
        rng = np.random.default_rng(epoch_seed(seed, epoch))
        perm = self.rows[rng.permutation(self.n_rows)]
        b = batch_size // world
        batches = [
            perm[k * batch_size + rank * b : k * batch_size + (rank + 1) * b].tolist()
            for k in range(skip, self.n_rows // batch_size)
        ]
        return self._loader(batches)

    def iter_all(self, batch_size: int, rank: int, world: int) -> Iterator[Batch]:
        mine = np.array_split(self.rows, world)[rank]
        return self._loader(
            [
                c.tolist()
                for c in np.array_split(mine, max(1, math.ceil(len(mine) / batch_size)))
                if len(c)
            ]
        )


class ArrayRows:
    """Held-out rows in memory: every row once, split over processes (no batch dropped)."""

    def __init__(self, features: np.ndarray, coords: np.ndarray) -> None:
        self.features = torch.as_tensor(np.asarray(features, dtype=np.float32))
        self.coords = torch.as_tensor(np.asarray(coords), dtype=torch.float32)
        self.n_rows = len(self.coords)

    def iter_all(self, batch_size: int, rank: int, world: int) -> Iterator[Batch]:
        mine = np.array_split(np.arange(self.n_rows), world)[rank]
        for start in range(0, len(mine), batch_size):
            rows = torch.from_numpy(mine[start : start + batch_size])
            yield {"features": self.features[rows], "coords": self.coords[rows]}


@dataclass
class GeoSurgeData:
    train: Any  # a BatchSource
    val: Any  # has iter_all(batch_size, rank, world)
    train_coords: np.ndarray
    feature_dim: int | None
    backbone: Any  # the backbone module for image training, else None


def _split(n: int, cfg: GeoSurgeTrainConfig) -> tuple[np.ndarray, np.ndarray]:
    """(train rows, held-out rows): a fixed `val_fraction` of rows, then `fraction` of the rest."""
    d = cfg.data
    val = (
        fraction_mask(n, d.val_fraction, d.split_seed) if d.val_fraction > 0 else np.zeros(n, bool)
    )
    rest = np.flatnonzero(~val)
    keep = rest[fraction_mask(len(rest), d.fraction, d.fraction_seed)]
    if len(np.flatnonzero(val)) == 0:
        raise DataError(f"data.val_fraction {d.val_fraction} leaves no validation row of {n}")
    return keep, np.flatnonzero(val)


def build_data(cfg: GeoSurgeTrainConfig, arrays: tuple[Any, Any] | None = None) -> GeoSurgeData:
    d, visual = cfg.data, cfg.visual
    if d.source in ("arrays", "scene-labels", "store") and visual != "features":
        raise DataError(
            f"data.source {d.source!r} holds precomputed features: it needs model.visual "
            f"'features' (fusion and backbone fine-tuning read photos: data.source 'images')"
        )
    if d.source == "images" and visual == "features":
        raise DataError("model.visual 'features' trains on precomputed features, not photos")
    if d.source in ("arrays", "scene-labels"):
        if d.source == "arrays":
            if arrays is None:
                raise GeoalignError("data.source 'arrays' needs features and coordinates passed in")
            feats, coords = (np.asarray(a) for a in arrays)
        else:
            from geoalign.evaluation.descriptors import load_scene_label_set

            feats, coords, _ = load_scene_label_set(d.path or "yfcc26k")
        train, val = _split(len(coords), cfg)
        return GeoSurgeData(
            ArraySource(feats[train], coords[train]),
            ArrayRows(feats[val], coords[val]),
            np.asarray(coords[train], dtype=np.float64),
            int(feats.shape[-1]),
            None,
        )
    if d.source == "store":
        from geoalign.data.feature_store import FeatureStore

        if not d.path:
            raise DataError("data.path: the feature store folder is required for source 'store'")
        store = FeatureStore(d.path)
        coords = store.coords
        train, val = _split(len(store), cfg)
        mask = np.zeros(len(store), dtype=bool)
        mask[train] = True
        return GeoSurgeData(
            _MaskedStoreSource(store, mask, d.read_rows),
            ArrayRows(store.features[val], coords[val]),
            coords[train],
            store.dim,
            None,
        )
    return _photo_data(cfg)


def _photo_data(cfg: GeoSurgeTrainConfig) -> GeoSurgeData:
    from geoalign.data.manifest import load_manifest
    from geoalign.data.segmentation_store import SegmentationStore, geometry
    from geoalign.nn.backbones import load_backbone

    d, m = cfg.data, cfg.model
    if not d.path:
        raise DataError("data.path: the manifest is required for source 'images'")
    manifest = load_manifest(d.path, image_root=d.images_root, check_files=True).clean()
    backbone = load_backbone(m.backbone, frozen=True)
    segs = None
    usable = np.ones(len(manifest), dtype=bool)
    if cfg.visual == "fusion":
        if not d.segmentations:
            raise DataError(
                "data.segmentations: semantic fusion needs a segmentation store "
                "(geoalign segment extract MANIFEST --out SEGS)"
            )
        segs = SegmentationStore(d.segmentations)
        segs.check_manifest(manifest)
        if segs.geometry and segs.geometry != geometry(backbone.preprocess):
            raise DataError(
                f"{segs.path}: maps were cut for {segs.geometry}, backbone {m.backbone} "
                f"preprocesses {geometry(backbone.preprocess)}: re-extract with this backbone"
            )
        recorded = (segs.segmenter or {}).get("spec")
        if recorded and recorded != m.segmenter:
            raise DataError(
                f"{segs.path}: maps come from segmenter {recorded!r}, model.segmenter is "
                f"{m.segmenter!r}"
            )
        usable = segs.ok  # photos that could not be read at extraction time are left out
    rows = np.flatnonzero(usable)
    train_local, val_local = _split(len(rows), cfg)
    dataset = _PhotoDataset(
        manifest.paths(), manifest.coords(), np.arange(len(manifest)), segs, backbone.preprocess
    )
    coords = manifest.coords()
    return GeoSurgeData(
        PhotoSource(dataset, rows[train_local], d.num_workers),
        PhotoSource(dataset, rows[val_local], d.num_workers),
        coords[rows[train_local]],
        None,
        backbone,
    )


# --- model ----------------------------------------------------------------------------------------


def build_hierarchy(cfg: GeoSurgeTrainConfig, train_coords: np.ndarray) -> CellHierarchy:
    """The configured hierarchy: loaded from cells.path, or built from the training coordinates.

    Building is deterministic (same rows, same rules, same cells), so every process of a run,
    and a resumed run, builds the same hierarchy without reading another's files; the first
    process also writes it to `<out_dir>/cells` (via a temporary folder and a rename)."""
    import shutil

    c = cfg.cells
    if c.path:
        return CellHierarchy.load(c.path)
    rules = PartitionRules(tau_min=c.tau_min, min_level=c.min_level)
    hierarchy = CellHierarchy.build(train_coords[:, 0], train_coords[:, 1], c.tau_max, rules)
    if min(hierarchy.sizes) == 0:
        raise DataError(
            f"cells: a level has no cell (sizes {hierarchy.sizes}) for {len(train_coords)} "
            f"training rows with tau_min {c.tau_min}; lower cells.tau_min or tau_max"
        )
    if int(os.environ.get("LOCAL_RANK", 0)) == 0 and int(os.environ.get("NODE_RANK", 0)) == 0:
        saved = Path(cfg.trainer.out_dir) / "cells"
        tmp = saved.with_name(f".cells.tmp-{os.getpid()}")
        hierarchy.save(tmp)
        shutil.rmtree(saved, ignore_errors=True)
        os.replace(tmp, saved)
    return hierarchy


def build_model(
    cfg: GeoSurgeTrainConfig,
    hierarchy: CellHierarchy,
    feature_dim: int | None,
    backbone: Any = None,
) -> GeoSurge:
    m, visual = cfg.model, cfg.visual
    if m.init:
        model = GeoSurge.load(m.init, backbone=backbone)
        if tuple(model.hierarchy.sizes) != tuple(hierarchy.sizes):
            raise DataError(f"model.init {m.init}: its hierarchy differs from the configured one")
        model.hierarchy = hierarchy
        return model
    fusion = None
    if visual == "fusion":
        fusion = SemanticFusionConfig.from_dict(
            {
                "image_size": backbone.image_size,
                "visual_dim": backbone.token_dim,
                "out_dim": m.embed_dim,
                **m.fusion,
                "num_blocks": m.fusion_blocks,
            }
        )
    config = GeoSurgeConfig(
        level_sizes=tuple(hierarchy.sizes),
        embed_dim=m.embed_dim,
        objective=m.objective,
        negatives=m.negatives,
        temperature_init=m.temperature_init,
        learn_temperature=m.learn_temperature,
        visual=visual,
        feature_dim=feature_dim if visual == "features" else None,
        feature_head=m.feature_head,
        backbone=m.backbone,
        image_size=backbone.image_size if backbone is not None else None,
        trainable_blocks=m.trainable_blocks if visual != "features" else 0,
        fusion=fusion,
        segmenter=m.segmenter if visual == "fusion" else None,
        coordinates=m.coordinates,
    )
    return GeoSurge(config, hierarchy, backbone=backbone)


def set_trainable(model: GeoSurge) -> None:
    """Backbone: only the blocks GeoSURGE fine-tunes (the head after them only when the pooled
    output is used, i.e. without fusion); everything else of the model trains."""
    model.requires_grad_(True)
    if model.backbone is not None:
        model.backbone.requires_grad_(False)
        names = set(model._trained_backbone_names())
        for name, p in model.backbone.named_parameters():
            p.requires_grad_(name in names)
    geo = model.geo
    if hasattr(geo, "logit_scales"):
        geo.logit_scales.requires_grad_(model.config.learn_temperature)


# --- the LightningModule ----------------------------------------------------------------------------


class GeoSurgeModule(L.LightningModule):
    """One step: labels of the batch coordinates at every level, visual features, summed InfoNCE.
    Validation: full-softmax loss, hierarchical top-1 cell, GeoScore and accuracy at the five
    distance thresholds of its cell mean (summed over processes)."""

    THRESHOLDS = (1, 25, 200, 750, 2500)

    def __init__(self, model: GeoSurge, config: GeoSurgeTrainConfig) -> None:
        super().__init__()
        self.model = model
        self.cfg = config
        set_trainable(model)
        model.train()  # a loaded backbone comes in eval mode; its frozen part stays inert
        self.strict_loading = False  # checkpoints omit the frozen backbone weights
        self._position = DataPosition()
        self._val: Tensor | None = None
        self._cell_latlon = torch.from_numpy(model.cell_latlon)

    # -- data position (exact mid-epoch resume, as GeoCLIPModule) -------------------------------
    def data_position(self) -> tuple[int, int]:
        epoch = self.trainer.current_epoch if self._trainer is not None else 0
        return epoch, self._position.start(epoch)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["geoalign"] = {**self._position.state(), "config": self.cfg.to_dict()}
        if self.model.backbone is not None:
            frozen = {
                f"model.backbone.{n}"
                for n, p in self.model.backbone.named_parameters()
                if not p.requires_grad
            }
            for key in frozen:
                checkpoint["state_dict"].pop(key, None)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self._position.restore(checkpoint.get("geoalign"))

    # -- steps ----------------------------------------------------------------------------------------
    def _labels(self, coords: Tensor) -> Tensor:
        return self.model.assign(coords).to(coords.device)

    def training_step(self, batch: Batch, batch_idx: int) -> Tensor:
        labels = self._labels(batch["coords"])
        candidates = None
        world = self.trainer.world_size
        if world > 1 and self.model.config.negatives == "batch":
            # Every process's cells are negatives. Pad to the full local batch (an unreadable
            # photo shrinks a batch) so all_gather sees equal shapes; -1 rows are no candidates.
            full = (self.cfg.optim.micro_batch_size or self.cfg.optim.batch_size) // world
            pad = labels.new_full((max(0, full - labels.shape[0]), labels.shape[1]), -1)
            candidates = self.all_gather(torch.cat([labels, pad])).reshape(-1, labels.shape[1])
        visual = self.model.encode(batch)
        losses = self.model.loss(visual, labels, candidates)
        self._position.step()
        b = labels.shape[0]
        self.log("train/loss", losses.total.detach(), prog_bar=True, batch_size=b)
        for k, value in enumerate(losses.per_level.detach()):
            self.log(f"train/loss_level{k}", value, batch_size=b)
        if hasattr(self.model.geo, "scales"):
            taus = 1.0 / self.model.geo.scales().detach().exp()
            self.log("train/temperature_finest", taus[-1], batch_size=b)
        return losses.total

    def on_validation_epoch_start(self) -> None:
        self._val = torch.zeros(4 + len(self.THRESHOLDS), dtype=torch.float64, device=self.device)

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        from geoalign.geo.distance import haversine_km_torch
        from geoalign.geo.metrics import geoscore

        coords = batch["coords"].double()
        labels = self._labels(batch["coords"])
        visual = self.model.encode(batch)
        loss = self.model.geo.loss(visual, labels, negatives="all").total
        top, _ = self.model.top_cells(self.model.queries(visual), 1)
        top = top[:, 0].cpu()
        pred = self._cell_latlon[top].to(coords.device)
        dist = haversine_km_torch(pred, coords)
        fine = labels[:, -1].cpu()
        n = float(len(coords))
        row = [
            n,
            float(loss) * n,
            float(geoscore(dist.cpu().numpy()).sum()),
            float(((top == fine) & (fine >= 0)).sum()),
            *[float((dist <= t).sum()) for t in self.THRESHOLDS],
        ]
        self._val += torch.tensor(row, dtype=torch.float64, device=self.device)

    def on_validation_epoch_end(self) -> None:
        total = self._val
        if self.trainer.world_size > 1:
            total = self.all_gather(total).reshape(-1, total.shape[-1]).sum(0)
        n = max(float(total[0]), 1.0)
        metrics = {
            "val/loss": float(total[1]) / n,
            "val/geoscore": float(total[2]) / n,
            "val/acc_cell": 100.0 * float(total[3]) / n,
            **{
                f"val/acc@{t}km": 100.0 * float(total[4 + i]) / n
                for i, t in enumerate(self.THRESHOLDS)
            },
        }
        for key, value in metrics.items():
            self.log(key, value, prog_bar=key == self.cfg.optim.monitor, sync_dist=False)

    def configure_optimizers(self) -> dict[str, Any]:
        o = self.cfg.optim
        scales = getattr(self.model.geo, "logit_scales", None)
        decay = [p for p in self.model.parameters() if p.requires_grad and p is not scales]
        groups = [{"params": decay, "weight_decay": o.weight_decay}]
        if scales is not None and scales.requires_grad:
            groups.append({"params": [scales], "weight_decay": 0.0})
        # The fused kernel (CPU and CUDA) updates ~50M embedding parameters in one pass.
        fused = all(p.device.type in ("cpu", "cuda") for g in groups for p in g["params"])
        optimizer = torch.optim.AdamW(groups, lr=o.lr, fused=fused)
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=o.gamma)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "epoch", "frequency": 1},
        }


class GeoSurgeDataModule(L.LightningDataModule):
    def __init__(self, data: GeoSurgeData, cfg: GeoSurgeTrainConfig) -> None:
        super().__init__()
        self.data = data
        self.cfg = cfg

    def train_dataloader(self) -> EpochLoader:
        t = self.trainer
        o = self.cfg.optim
        return EpochLoader(
            self.data.train,
            o.micro_batch_size or o.batch_size,
            self.cfg.trainer.seed,
            position=t.lightning_module.data_position,
            rank=t.global_rank,
            world=t.world_size,
        )

    def val_dataloader(self) -> Any:
        t = self.trainer
        batch = self.cfg.optim.val_batch_size

        class _Val:  # re-iterable: a fresh pass over this process's held-out rows each epoch
            def __iter__(inner) -> Iterator[Batch]:
                return self.data.val.iter_all(batch, t.global_rank, t.world_size)

            def __len__(inner) -> int:
                share = math.ceil(self.data.val.n_rows / t.world_size)
                return max(1, math.ceil(share / batch))

        return _Val()


# --- export and run -------------------------------------------------------------------------------


class ExportGeoSurge(L.Callback):
    """Export `<out>/best` whenever the monitored metric improves and `<out>/last` at the end."""

    def __init__(self, out_dir: Path, cfg: GeoSurgeTrainConfig, provenance: dict[str, Any]) -> None:
        self.out_dir = out_dir
        self.monitor = cfg.optim.monitor
        self.sign = 1.0 if cfg.optim.monitor_mode == "max" else -1.0
        self.best: float | None = None
        self.provenance = provenance
        self.history: list[dict[str, float]] = []

    def state_dict(self) -> dict[str, Any]:  # kept in Lightning checkpoints: resume knows the best
        return {"best": self.best, "history": self.history}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best = state.get("best")
        self.history = list(state.get("history", []))

    def _export(self, trainer: L.Trainer, module: GeoSurgeModule, name: str) -> None:
        if trainer.global_rank != 0:
            return
        prov = {
            **self.provenance,
            "global_step": int(trainer.global_step),
            "epoch": int(trainer.current_epoch),
            "best": {self.monitor: self.best},
        }
        module.model.save(self.out_dir / name, provenance=prov)

    def on_validation_end(self, trainer: L.Trainer, module: GeoSurgeModule) -> None:
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
        if not metrics:
            return
        self.history.append({"epoch": int(trainer.current_epoch), **metrics})
        value = metrics.get(self.monitor)
        if value is None:
            raise DataError(f"optim.monitor {self.monitor!r} is not one of {sorted(metrics)}")
        if self.best is None or self.sign * (value - self.best) > 0:
            self.best = value
            self._export(trainer, module, "best")

    def on_train_end(self, trainer: L.Trainer, module: GeoSurgeModule) -> None:
        self._export(trainer, module, "last")


@dataclass
class GeoSurgeTrainResult:
    model: GeoSurge
    out_dir: Path
    best_dir: Path
    last_dir: Path
    global_step: int
    epochs: int
    best: float | None
    history: list[dict[str, float]]
    seconds: float
    n_rows: int


def train_geosurge(
    cfg: GeoSurgeTrainConfig,
    *,
    arrays: tuple[Any, Any] | None = None,
    extra_callbacks: list[Any] | None = None,
    progress: bool | None = None,
) -> GeoSurgeTrainResult:
    """Train (or resume) the GeoSURGE run `cfg` describes."""
    from lightning.pytorch.callbacks import EarlyStopping

    from geoalign.training.config import save_config
    from geoalign.training.trainer import build_trainer, resume_checkpoint

    t, o = cfg.trainer, cfg.optim
    out = Path(t.out_dir)
    L.seed_everything(t.seed, workers=True, verbose=False)
    data = build_data(cfg, arrays)
    hierarchy = build_hierarchy(cfg, data.train_coords)
    model = build_model(cfg, hierarchy, data.feature_dim, data.backbone)
    module = GeoSurgeModule(model, cfg)

    provenance = {
        "config": cfg.to_dict(),
        "training_rows": data.train.n_rows,
        "validation_rows": data.val.n_rows,
        "reproduces": cfg.reproduces,
    }
    export = ExportGeoSurge(out, cfg, provenance)
    stop = EarlyStopping(
        monitor=o.monitor, mode=o.monitor_mode, patience=o.patience, check_on_train_epoch_end=False
    )
    # last.ckpt every N optimizer steps and at each epoch's end; a run resumed from one re-enters
    # its epoch after the batches it had done.
    trainer = build_trainer(
        t,
        max_epochs=o.epochs,
        max_steps=o.max_steps,
        callbacks=[stop, export, *(extra_callbacks or [])],
        progress=progress,
        accumulate=cfg.accumulate,
        validate=True,
    )
    if trainer.global_rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out / "config.yaml")
    ckpt, _ = resume_checkpoint(t)
    start = time.perf_counter()
    trainer.fit(
        module,
        datamodule=GeoSurgeDataModule(data, cfg),
        ckpt_path=ckpt,
        weights_only=True,
    )
    return GeoSurgeTrainResult(
        model=module.model,
        out_dir=out,
        best_dir=out / "best",
        last_dir=out / "last",
        global_step=int(trainer.global_step),
        epochs=int(trainer.current_epoch),
        best=export.best,
        history=export.history,
        seconds=time.perf_counter() - start,
        n_rows=data.train.n_rows,
    )


# --- the quickstart rows ----------------------------------------------------------------------------

QUICKSTART_NAME = "GeoSURGE (geocell hierarchy)"

# configs/geosurge/scene_labels.yaml with the training rows passed in (the quickstart has them
# loaded already) and no resume: a quickstart always starts fresh. Kept in code because configs/
# is not part of an installed package; a test checks that the two agree.
QUICKSTART_GEOSURGE: dict[str, Any] = {
    "method": "geosurge",
    "name": "geosurge-quickstart-scene-labels",
    "reproduces": "none (a CPU-sized real-data check, not a paper table)",
    "notes": "train on YFCC26k scene-label descriptors, test on Im2GPS3k",
    "model": {
        "visual": "features",
        "feature_head": "mlp",
        "embed_dim": 256,
        "backbone": "places365-scene-labels",
    },
    "cells": {"tau_min": 30, "tau_max": [3000, 1000, 300]},
    "data": {"source": "arrays", "val_fraction": 0.02, "num_workers": 0},
    "optim": {
        "lr": 1.0e-3,
        "batch_size": 512,
        "epochs": 12,
        "patience": 4,
        "monitor": "val/loss",
        "monitor_mode": "min",
    },
    "trainer": {"accelerator": "cpu", "resume": None, "progress": False},
}


def quickstart_geosurge_config(out_dir: str | Path, *, seed: int = 0) -> GeoSurgeTrainConfig:
    """The quickstart's GeoSURGE run, written to `out_dir`."""
    data = {k: (dict(v) if isinstance(v, dict) else v) for k, v in QUICKSTART_GEOSURGE.items()}
    data["trainer"].update(out_dir=str(out_dir), seed=int(seed))
    return geosurge_config_from_dict(data, source="quickstart")


def geosurge_quickstart_rows(
    train_x: np.ndarray,
    train_y: np.ndarray,
    test_x: np.ndarray,
    test_y: np.ndarray,
    out_dir: str | Path,
    *,
    seed: int = 0,
    modes: tuple[str, ...] | list[str] = ("top1", "mode"),
    radius_km: float = 750.0,
    progress: bool | None = None,
) -> tuple[list[Any], dict[str, Any]]:
    """Train GeoSURGE on the training descriptors (the run folder is `out_dir`), evaluate its best
    model on the test ones: (report rows named "GeoSURGE (geocell hierarchy) ...", a summary).

    `progress`: Lightning's progress bar (None: off). Runs on one CPU thread and restores the
    thread count after: the model is an MLP and a few hundred cell embeddings, and on a busy
    2-core machine a second thread made each step ~20x slower (contention), not faster."""
    from geoalign.evaluation.geosurge import geosurge_results

    start = time.perf_counter()
    cfg = quickstart_geosurge_config(out_dir, seed=seed)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        res = train_geosurge(cfg, arrays=(train_x, train_y), progress=bool(progress))
        model_dir = res.best_dir if res.best_dir.is_dir() else res.last_dir
        trained = time.perf_counter()
        rows = geosurge_results(
            model_dir,
            test_x,
            test_y,
            name=QUICKSTART_NAME,
            modes=list(modes),
            radius_km=radius_km,
        )
    finally:
        torch.set_num_threads(threads)
    done = time.perf_counter()
    sizes = list(res.model.hierarchy.sizes)
    monitor = cfg.optim.monitor
    summary = {
        "model_dir": str(model_dir),
        "cells": sizes,
        "training_rows": res.n_rows,
        "global_step": res.global_step,
        "epochs": res.epochs,
        "best": {monitor: res.best},
        "train_seconds": trained - start,
        "eval_seconds": done - trained,
        "seconds": done - start,
        "training": (
            f"GeoSURGE: {res.n_rows:,} rows, S2 cells {sizes} (coarse to fine), "
            f"{res.global_step} steps of batch {cfg.optim.batch_size} over {res.epochs} epochs "
            f"(best {monitor} {res.best if res.best is None else round(res.best, 3)}), "
            f"{trained - start:.0f} s; model {model_dir}"
        ),
    }
    return rows, summary
