"""Training callbacks: crash-safe checkpoint files, model export, throughput."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.plugins.io import TorchCheckpointIO

from geoalign.io_atomic import atomic_output


class AtomicCheckpointIO(TorchCheckpointIO):
    """Write each checkpoint to a temporary file and rename it into place.

    Lightning writes `last.ckpt` in place; a run killed mid-write would leave a truncated file that
    `resume: auto` then fails on. A rename is atomic, so the previous checkpoint survives a kill.
    """

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None
    ) -> None:
        path = Path(path)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        super().save_checkpoint(checkpoint, tmp, storage_options)
        os.replace(tmp, path)


class ExportModel(L.Callback):
    """At the end of training, write the model as a geoalign checkpoint folder (rank 0 only)."""

    def __init__(self, out_dir: str | Path, provenance: dict[str, Any]) -> None:
        self.out_dir = Path(out_dir)
        self.provenance = provenance
        self._start = time.perf_counter()

    def on_train_end(self, trainer: L.Trainer, pl_module: Any) -> None:
        if trainer.global_rank != 0:
            return
        prov = dict(self.provenance)
        prov.update(
            global_step=int(trainer.global_step),
            epochs_completed=int(trainer.current_epoch),
            world_size=int(trainer.world_size),
            train_seconds=round(time.perf_counter() - self._start, 2),
        )
        pl_module.model.save(self.out_dir, provenance=prov)


class Throughput(L.Callback):
    """Samples per second over the run (global batch x steps / wall time), logged and kept."""

    def __init__(self, batch_size: int) -> None:
        self.batch_size = batch_size
        self.samples_per_s: float | None = None
        self._t0: float | None = None
        self._steps = 0

    def on_train_batch_start(self, trainer: L.Trainer, *args: Any) -> None:
        if self._t0 is None:
            self._t0 = time.perf_counter()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: Any, *args: Any) -> None:
        self._steps += 1
        elapsed = time.perf_counter() - (self._t0 or time.perf_counter())
        if elapsed > 0:
            self.samples_per_s = self._steps * self.batch_size / elapsed
            pl_module.log("train/samples_per_s", self.samples_per_s, batch_size=1)

    def summary(self) -> dict[str, Any]:
        return {"steps": self._steps, "samples_per_s": self.samples_per_s}


def write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, default=str))
