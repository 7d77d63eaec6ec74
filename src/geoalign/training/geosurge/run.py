"""Train (or resume) a GeoSURGE run: export of the best and last models, and the entry point."""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import lightning as L

from geoalign.errors import DataError
from geoalign.models.geosurge import GeoSurge
from geoalign.training.geosurge.config import GeoSurgeTrainConfig
from geoalign.training.geosurge.data import build_data
from geoalign.training.geosurge.model import build_hierarchy, build_model
from geoalign.training.geosurge.module import GeoSurgeDataModule, GeoSurgeModule


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
    trained_steps: int  # optimizer steps this call trained; 0: the run was already complete


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
    from geoalign.training.trainer import (
        build_trainer,
        finished_run,
        restore_finished,
        resume_checkpoint,
    )

    t, o = cfg.trainer, cfg.optim
    out = Path(t.out_dir)
    # Before anything is built or written (cells/, config.yaml): a finished run, or the
    # checkpoint to resume (refused under settings that train something else).
    done = finished_run(t, cfg.to_dict(), out / "last")
    ckpt, start_step = (None, 0) if done is not None else resume_checkpoint(t, cfg.to_dict())
    L.seed_everything(t.seed, workers=True, verbose=False)
    data = build_data(cfg, arrays)
    hierarchy = build_hierarchy(cfg, data.train_coords)
    model = build_model(cfg, hierarchy, data.feature_dim, data.backbone)
    store_spec = getattr(getattr(data.train, "store", None), "backbone_spec", None)
    if cfg.visual == "features" and store_spec and model.config.backbone != store_spec:
        # the store's index says which backbone made the features: the model reads photos
        # through that one (`predict --model`), not model.backbone's default
        model.config = replace(model.config, backbone=store_spec)
    module = GeoSurgeModule(model, cfg)

    provenance = {
        "config": cfg.to_dict(),
        "training_rows": data.train.n_rows,
        "validation_rows": data.val.n_rows,
        "reproduces": cfg.reproduces,
    }
    export = ExportGeoSurge(out, cfg, provenance)
    if done is not None:
        restore_finished(module, done, [export])
        return GeoSurgeTrainResult(
            model=module.model,
            out_dir=out,
            best_dir=out / "best",
            last_dir=out / "last",
            global_step=int(done["global_step"]),
            epochs=int(done["epoch"]),
            best=export.best,
            history=export.history,
            seconds=0.0,
            n_rows=data.train.n_rows,
            trained_steps=0,
        )
    cfg.accumulate  # noqa: B018 -- refuses a batch_size that micro-batches do not divide
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
        validate=True,
    )
    if trainer.global_rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out / "config.yaml")
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
        trained_steps=int(trainer.global_step) - start_step,
    )
