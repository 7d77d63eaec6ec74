"""GeoSURGE training configs: YAML with sections model, cells, data, optim, trainer, eval and
`method: geosurge` (see configs/geosurge/). Unknown keys are errors; `base: file.yaml` inherits
another config."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

from geoalign.errors import DataError
from geoalign.geo.cells import DEFAULT_TAU_MAX
from geoalign.training.config import (
    EvalSection,
    Rule,
    TrainerSection,
    _build,
    above,
    apply_overrides,
    at_least,
    keys_of,
    read_config_yaml,
    share,
    steps_limit,
)


def _fusion_config() -> type:
    from geoalign.nn.semantic_fusion import SemanticFusionConfig

    return SemanticFusionConfig


@dataclass
class GeoSurgeModelSection:
    """The `model:` section. Its fields named as GeoSurgeConfig's are that config's fields (same
    names, types and meaning, with the training defaults); `model_config` passes them on by name,
    so a field is declared here once and never copied by hand. The others are YAML-only:
    fusion_blocks and fusion (the SemanticFusionConfig, completed from the backbone), init."""

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

    RULES: ClassVar[dict[str, Rule]] = {
        "embed_dim": at_least(1, 768),
        "temperature_init": above(0, 0.07),
        "trainable_blocks": at_least(0),
        "fusion_blocks": at_least(0, 3),
        "fusion": keys_of(_fusion_config),
    }

    def model_config(
        self,
        level_sizes: tuple[int, ...],
        visual: str,
        *,
        feature_dim: int | None = None,
        image_size: int | None = None,
        fusion: Any = None,
    ) -> Any:
        """The GeoSurgeConfig of a run: the shared fields by name, then what the run knows
        (the hierarchy's sizes, the backbone's widths) and what `visual` rules out."""
        import dataclasses

        from geoalign.models.geosurge import GeoSurgeConfig

        names = {f.name for f in dataclasses.fields(GeoSurgeConfig)}
        shared = {f.name for f in dataclasses.fields(self)} & names - {"fusion", "visual"}
        values: dict[str, Any] = {name: getattr(self, name) for name in shared}
        values.update(
            level_sizes=tuple(level_sizes),
            visual=visual,
            feature_dim=feature_dim if visual == "features" else None,
            image_size=image_size,
            fusion=fusion,
        )
        if visual == "features":
            values["trainable_blocks"] = 0  # no backbone block trains on precomputed features
        if visual != "fusion":
            values["segmenter"] = None
        return GeoSurgeConfig(**values)


@dataclass
class CellsSection:
    path: str | None = None  # a saved CellHierarchy folder; else built from the training rows
    tau_max: list[int] = field(default_factory=lambda: list(DEFAULT_TAU_MAX))  # Table VII
    tau_min: int = 50
    min_level: int = 0

    RULES: ClassVar[dict[str, Rule]] = {"tau_min": at_least(1, 50), "min_level": at_least(0)}


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

    RULES: ClassVar[dict[str, Rule]] = {
        "val_fraction": at_least(0, 0.01),
        "fraction": share,
        "num_workers": at_least(0),
        "read_rows": at_least(1),
    }


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

    RULES: ClassVar[dict[str, Rule]] = {
        "lr": at_least(0, 1e-4),
        "weight_decay": at_least(0, 1e-4),
        "gamma": above(0, 0.5),
        "batch_size": at_least(1, 1024),
        "micro_batch_size": at_least(1),
        "epochs": at_least(1, 30),
        "max_steps": steps_limit,
        "patience": at_least(0, 4),
        "val_batch_size": at_least(1, 1024),
    }


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
