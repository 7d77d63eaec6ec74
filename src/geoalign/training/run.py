"""Build model, data and trainer from a `TrainConfig` and run training.

Single process, several GPUs on one machine, or several nodes: under `torchrun` the world size
comes from its environment (Lightning reads it); otherwise `trainer.devices` processes are started.
On CPUs the process group uses gloo, on GPUs NCCL. Training resumes from `<out_dir>/checkpoints/
last.ckpt` when `trainer.resume` is "auto" and that file exists.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from geoalign.data.feature_rows import StoreRows
from geoalign.errors import DataError
from geoalign.models.geoclip import GeoCLIP
from geoalign.nn.image_head import ImageHeadConfig
from geoalign.nn.location_encoder import LocationEncoderConfig
from geoalign.training.config import TrainConfig, save_config
from geoalign.training.data import (
    ArraySource,
    BatchSource,
    ImageSource,
    StoreSource,
    feature_rows,
)


@dataclass
class TrainResult:
    model: GeoCLIP
    out_dir: Path
    export_dir: Path
    global_step: int
    seconds: float
    samples_per_s: float | None
    n_rows: int
    trained_steps: int  # optimizer steps this call trained; 0: the run was already complete


# --- model ------------------------------------------------------------------------------------------


def _location_config(cfg: TrainConfig) -> LocationEncoderConfig:
    base = (
        LocationEncoderConfig.paper()
        if cfg.model.architecture == "paper"
        else LocationEncoderConfig()
    )
    overrides = dict(cfg.model.location_encoder)
    if overrides.get("sigmas") is not None:
        overrides["sigmas"] = tuple(overrides["sigmas"])
    try:
        return replace(base, **overrides)
    except TypeError as err:
        raise DataError(f"model.location_encoder: {err}") from err


def build_model(cfg: TrainConfig, feature_dim: int | None = None) -> GeoCLIP:
    """The model the config asks for: official weights, a checkpoint, or from scratch.

    Starting from official weights with features of another width (or explicit image_head
    settings) keeps the official location encoder and temperature and builds a fresh image head:
    the released head reads 768-d CLIP ViT-L/14 embeddings only.
    """
    m = cfg.model
    head_overrides = dict(m.image_head)
    if feature_dim is not None:
        head_overrides.setdefault("in_dim", feature_dim)
    if m.init == "scratch":
        return GeoCLIP(
            m.model_config(
                cfg.trainer.seed, _location_config(cfg), ImageHeadConfig(**head_overrides)
            )
        )
    if m.location_encoder or m.architecture != "released":
        raise DataError(
            "model.location_encoder / model.architecture change the architecture: they need "
            "model.init: scratch (the official weights have the released architecture)"
        )
    name = "geoclip" if m.init == "official" else m.init
    model = GeoCLIP.load(name, **m.weights_overrides(cfg.trainer.seed))
    wanted = replace(model.config.image_head, **head_overrides)
    if wanted != model.config.image_head:
        fresh = GeoCLIP(replace(model.config, image_head=wanted, features=m.features))
        fresh.location_encoder.load_state_dict(model.location_encoder.state_dict())
        with torch.no_grad():
            fresh.logit_scale.copy_(model.logit_scale)
        model = fresh
    elif m.features is not None:
        model.config = replace(model.config, features=m.features)
    return model


# --- data --------------------------------------------------------------------------------------------


def build_source(
    cfg: TrainConfig, arrays: tuple[Any, Any] | None = None
) -> tuple[BatchSource, int | None, Any]:
    """(source, feature width or None for images, frozen backbone or None)."""
    d = cfg.data
    decode_device = photo_decode_device(cfg)  # before anything is read or loaded
    rows = feature_rows(d, arrays)
    if isinstance(rows, StoreRows):
        src = StoreSource(
            rows.store,
            fraction=d.fraction,
            fraction_seed=d.fraction_seed,
            read_rows=d.read_rows,
            views=d.views,
        )
        return src, rows.dim, None
    if rows is not None:
        src = ArraySource(
            rows.features, rows.latlon, fraction=d.fraction, fraction_seed=d.fraction_seed
        )
        return src, rows.dim, None
    from geoalign.data.manifest import load_manifest
    from geoalign.data.transforms import simclr_views_for
    from geoalign.nn.backbones import load_backbone

    if d.source == "wds":  # webdataset shards of photos and a frozen backbone
        return _shard_source(cfg, decode_device)
    # images: a manifest of photos and a frozen backbone
    if not d.path:
        raise DataError("data.path: the manifest is required for source 'images'")
    manifest = load_manifest(d.path, image_root=d.images_root, check_files=True).clean()
    backbone = load_backbone(d.backbone, frozen=True)
    transform = simclr_views_for(backbone.preprocess, d.views)
    src = ImageSource(
        manifest,
        transform,
        fraction=d.fraction,
        fraction_seed=d.fraction_seed,
        num_workers=d.num_workers,
        decode_device=decode_device,
    )
    return src, backbone.embed_dim, backbone


def photo_decode_device(cfg: TrainConfig) -> str | None:
    """Where the training photos are decoded (`data.decode`): None for the DataLoader workers
    (Pillow); "cuda" for nvJPEG on the GPU this process trains on (the current CUDA device when
    batches are read, which Lightning has made cuda:LOCAL_RANK under a launcher). `gpu` is
    refused where there are no photos or training does not run on CUDA."""
    d, t = cfg.data, cfg.trainer
    if d.decode == "cpu":
        return None
    if d.source not in ("images", "wds"):
        raise DataError(
            f"data.decode: 'gpu' decodes photos, and data.source {d.source!r} reads features; "
            "use it with source images or wds, or set data.decode: cpu"
        )
    if t.accelerator not in ("auto", "gpu", "cuda"):
        why = f"trainer.accelerator is {t.accelerator!r}"
    elif not torch.cuda.is_available():
        why = "no CUDA GPU is visible here"
    else:
        return "cuda"
    raise DataError(
        f"data.decode: 'gpu' decodes photos with nvJPEG on the GPU training runs on, but {why}; "
        "train on CUDA (trainer.accelerator: gpu, or auto with a GPU) or set data.decode: cpu"
    )


def data_backbone_spec(cfg: TrainConfig, source: BatchSource) -> str | None:
    """The backbone whose features the run trains on, as the data knows it: the spec a feature
    store's index records, or `data.backbone` for photos. The exported model records it, so
    `predict --model` reads photos through the same backbone without being told."""
    if cfg.data.source in ("images", "wds"):
        return cfg.data.backbone
    store = getattr(source, "store", None)
    return getattr(store, "backbone_spec", None)


def _shard_source(cfg: TrainConfig, decode_device: str | None) -> tuple[BatchSource, int, Any]:
    """Photos of webdataset shards (`data.path`: a .tar, a brace pattern, a folder of .tar
    files, a URL), listed once into the run folder, streamed as views through the backbone."""
    from geoalign.data.transforms import simclr_views_for
    from geoalign.data.wds import expand_shards
    from geoalign.nn.backbones import load_backbone
    from geoalign.training.shard_source import ShardImageSource

    d = cfg.data
    if not d.path:
        raise DataError("data.path: the shards are required for source 'wds' (e.g. wds/)")
    try:
        expand_shards(d.path)  # a missing shard is refused before the backbone loads
    except DataError as err:
        raise DataError(f"data.path: {err}") from err
    backbone = load_backbone(d.backbone, frozen=True)
    try:
        src = ShardImageSource(
            d.path,
            simclr_views_for(backbone.preprocess, d.views),
            fraction=d.fraction,
            fraction_seed=d.fraction_seed,
            num_workers=d.num_workers,
            cache_dir=Path(cfg.trainer.out_dir) / ".wds-listing",
            decode_device=decode_device,
        )
    except DataError as err:
        raise DataError(f"data.path: {err}") from err
    return src, backbone.embed_dim, backbone


# --- trainer ------------------------------------------------------------------------------------------


def train(
    cfg: TrainConfig,
    *,
    arrays: tuple[Any, Any] | None = None,
    model: GeoCLIP | None = None,
    source: tuple[BatchSource, int | None, Any] | None = None,
    extra_callbacks: list[Any] | None = None,
    progress: bool | None = None,
    run_config: dict[str, Any] | None = None,
) -> TrainResult:
    """Train (or resume) the run `cfg` describes; returns the trained model and where it went.

    `arrays` = (features, coords) for data.source "arrays"; `source` = (BatchSource, feature
    width, frozen backbone or None) replaces the data the config describes (e.g. photos with a
    backbone built elsewhere); `run_config`: the whole run's settings when they are more than
    `cfg` (kept in checkpoints: a resume under other settings is refused)."""
    import lightning as L

    from geoalign.training.callbacks import ExportModel, Throughput
    from geoalign.training.geoclip_module import GeoCLIPModule, GeoDataModule
    from geoalign.training.trainer import (
        build_trainer,
        finished_run,
        restore_finished,
        resume_checkpoint,
    )

    t = cfg.trainer
    out = Path(t.out_dir)
    settings = run_config if run_config is not None else cfg.to_dict()
    # Before anything is built or written: a finished run, or the checkpoint to resume (refused
    # under settings that train something else).
    done = finished_run(t, settings, out / "model")
    ckpt, start_step = (None, 0) if done is not None else resume_checkpoint(t, settings)
    L.seed_everything(t.seed, workers=True, verbose=False)
    source, feature_dim, backbone = source if source is not None else build_source(cfg, arrays)
    if model is None:
        model = build_model(cfg, feature_dim)
    spec = cfg.model.features or data_backbone_spec(cfg, source)
    if spec and getattr(model.config, "features", spec) != spec:
        model.config = replace(model.config, features=spec)
    module = GeoCLIPModule(model, cfg, backbone=backbone)
    module.run_config = settings
    if done is not None:
        restore_finished(module, done, [])
        return TrainResult(
            model=module.model,
            out_dir=out,
            export_dir=out / "model",
            global_step=int(done["global_step"]),
            seconds=0.0,
            samples_per_s=None,
            n_rows=source.n_rows,
            trained_steps=0,
        )
    data = GeoDataModule(source, cfg.optim.batch_size, t.seed)

    throughput = Throughput(cfg.optim.batch_size)
    provenance = {
        "config": cfg.to_dict(),
        "training_rows": source.n_rows,
        "init": cfg.model.init,
        "reproduces": cfg.reproduces,
    }
    trainer = build_trainer(
        t,
        max_epochs=cfg.optim.epochs,
        max_steps=cfg.optim.max_steps,
        callbacks=[ExportModel(out / "model", provenance), throughput, *(extra_callbacks or [])],
        progress=progress,
        checkpoint_on_epoch_end=False,
    )
    if trainer.global_rank == 0:
        save_config(cfg, out / "config.yaml")
    start = time.perf_counter()
    trainer.fit(module, datamodule=data, ckpt_path=ckpt, weights_only=True)
    return TrainResult(
        model=module.model,
        out_dir=out,
        export_dir=out / "model",
        global_step=int(trainer.global_step),
        seconds=time.perf_counter() - start,
        samples_per_s=throughput.samples_per_s,
        n_rows=source.n_rows,
        trained_steps=int(trainer.global_step) - start_step,
    )
