"""The one Lightning Trainer set-up every method trains with (GeoCLIP, concept-aware, GeoSURGE).

What it fixes for all of them, so the methods cannot drift apart: the resumable metrics log
(`<out>/logs/metrics.csv`, kept across resumes), crash-safe `last.ckpt` every N steps (written via a
temporary file and a rename), the resume checkpoint and its checks (a changed config is refused
with the keys that differ; a finished run is reported as such), where the processes go
(`trainer_placement`), and no third-party banners before geoalign's own output.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import torch

from geoalign.errors import DataError
from geoalign.training.callbacks import AtomicCheckpointIO
from geoalign.training.config import TrainerSection, trainer_placement
from geoalign.training.metrics_log import (
    FlushedCheckpoint,
    ResumableCSVLogger,
    TrimMetricsOnStart,
)

# Keys a resumed run may change: where and how it runs, how long (a longer run continues), and
# what it reports. Every other key changes what is trained, so a checkpoint made under another
# value would resume into a different run (or crash on a state_dict mismatch).
RESUMABLE_CHANGES = (
    "name",
    "reproduces",
    "notes",
    "eval",
    "trainer.out_dir",
    "trainer.resume",
    "trainer.progress",
    "trainer.accelerator",
    "trainer.devices",
    "trainer.num_nodes",
    "trainer.precision",
    "trainer.checkpoint_every_n_steps",
    "trainer.log_every_n_steps",
    "optim.epochs",
    "optim.max_steps",
    "optim.patience",
    "data.num_workers",
    "data.read_rows",
)
# Keys that do not change what a finished run trained (its length does: a longer run is not done).
REPORTING_ONLY = tuple(
    k for k in RESUMABLE_CHANGES if k not in ("optim.epochs", "optim.max_steps", "optim.patience")
)
FINAL_CHECKPOINT = "final.ckpt"  # written when training ends; marks the run as finished


def quiet_lightning() -> None:
    """Drop Lightning's per-fit banner (GPU/TPU lines, its logger advertisement) and warnings
    that would only mislead: geoalign prints its own steps on stderr."""
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")
    # Our loaders resume mid-epoch exactly through the module's data_position (a killed and
    # resumed run ends with the uninterrupted run's weights; tested), so this one is wrong here.
    warnings.filterwarnings("ignore", message=".*your dataloader is not resumable.*")
    warnings.filterwarnings("ignore", message=".*is smaller than the logging interval.*")


def resume_path(t: TrainerSection) -> str | None:
    """The checkpoint a run resumes from: `trainer.resume` "auto" (last.ckpt when present), a
    path, or None (start fresh)."""
    r = t.resume
    if r is None or r == "none":
        return None
    if r == "auto":
        last = Path(t.out_dir) / "checkpoints" / "last.ckpt"
        return str(last) if last.is_file() else None
    if not Path(r).is_file():
        raise DataError(f"trainer.resume: checkpoint {r} not found")
    return r


def _flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(data, dict):
        return {prefix: data}
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, dict) and value:
            out.update(_flatten(value, name))
        else:
            out[name] = value
    return out


def config_differences(
    saved: dict[str, Any], current: dict[str, Any], free_keys: tuple[str, ...] = RESUMABLE_CHANGES
) -> list[str]:
    """'key: saved -> current' for every key outside `free_keys` whose value differs."""
    a, b = _flatten(saved), _flatten(current)

    def free(key: str) -> bool:
        return any(key == k or key.startswith(k + ".") for k in free_keys)

    keys = sorted(k for k in set(a) | set(b) if not free(k) and a.get(k) != b.get(k))
    return [f"{k}: {a.get(k, '(unset)')!r} -> {b.get(k, '(unset)')!r}" for k in keys]


def _read_checkpoint(path: str | Path) -> dict[str, Any]:
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:  # a damaged file: say which one and how to go on
        raise DataError(
            f"{path}: cannot read the checkpoint to resume from ({err}); "
            "start fresh with --no-resume (trainer.resume: null)"
        ) from err


def finished_run(
    t: TrainerSection, config: dict[str, Any], exported: Path
) -> dict[str, Any] | None:
    """The final checkpoint of this very run when it already ran to its end (same settings,
    `exported` model folder present) and `trainer.resume` is "auto"; else None."""
    final = Path(t.out_dir) / "checkpoints" / FINAL_CHECKPOINT
    if t.resume != "auto" or not final.is_file() or not (exported / "config.json").is_file():
        return None
    state = _read_checkpoint(final)
    saved = (state.get("geoalign") or {}).get("config")
    if not isinstance(saved, dict) or config_differences(saved, config, REPORTING_ONLY):
        return None
    if _is_first_process():
        print(
            f"already complete: {t.out_dir} finished at step {int(state.get('global_step', 0))} "
            "with these settings, nothing to train (--no-resume trains it again)",
            file=sys.stderr,
            flush=True,
        )
    return state


def restore_finished(
    module: L.LightningModule, state: dict[str, Any], callbacks: list[Any]
) -> None:
    """Load a finished run's weights into `module` and its state into `callbacks` (no fit)."""
    module.load_state_dict(state["state_dict"], strict=module.strict_loading)
    saved = state.get("callbacks") or {}
    for callback in callbacks:
        if callback.state_key in saved:
            callback.load_state_dict(saved[callback.state_key])


def resume_checkpoint(
    t: TrainerSection, config: dict[str, Any] | None = None
) -> tuple[str | None, int]:
    """(checkpoint to resume from or None, its global step), said on stderr. With `config`,
    refuses a checkpoint made under a config that trains something else, naming the keys,
    instead of a state_dict crash later."""
    final = Path(t.out_dir) / "checkpoints" / FINAL_CHECKPOINT
    if _is_first_process():  # this fit will end with its own final checkpoint
        final.unlink(missing_ok=True)
    ckpt = resume_path(t)
    if ckpt is None:
        return None, 0
    state = _read_checkpoint(ckpt)
    saved = (state.get("geoalign") or {}).get("config")
    diff = config_differences(saved, config) if isinstance(saved, dict) and config else []
    if diff:
        shown = "; ".join(diff[:8]) + (f"; and {len(diff) - 8} more" if len(diff) > 8 else "")
        raise DataError(
            f"config differs from the checkpoint {ckpt}: {shown}. Start fresh with --no-resume "
            "(trainer.resume: null) or train into another --out folder"
        )
    step = int(state.get("global_step", 0))
    if _is_first_process():
        print(f"resuming from {ckpt} (step {step})", file=sys.stderr, flush=True)
    return ckpt, step


def _is_first_process() -> bool:
    return all(int(os.environ.get(k, 0)) == 0 for k in ("RANK", "LOCAL_RANK", "NODE_RANK"))


class SaveAtEnd(L.Callback):
    """`final.ckpt` when training ends: a rerun with the same settings finds the run finished
    (`finished_run`) instead of redoing the steps after the last every-N-steps checkpoint. Not
    resumed from: after a stop mid-epoch (max_steps) Lightning counts the epoch as done, so a
    longer run resumes from last.ckpt instead."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def on_train_end(self, trainer: L.Trainer, pl_module: Any) -> None:
        trainer.save_checkpoint(self.path, weights_only=False)


def build_trainer(
    t: TrainerSection,
    *,
    max_epochs: int,
    max_steps: int,
    callbacks: list[Any],
    progress: bool | None = None,
    accumulate: int = 1,
    validate: bool = False,
    checkpoint_on_epoch_end: bool | None = None,
) -> L.Trainer:
    """The Trainer for a run in `t.out_dir`: placement, resumable log, atomic last.ckpt every
    `t.checkpoint_every_n_steps` steps, then `callbacks`. `validate`: run the validation loop once
    per epoch (GeoSURGE's early stopping); off, no validation batch is ever drawn."""
    quiet_lightning()
    out = Path(t.out_dir)
    place = trainer_placement(t)
    checkpoint = FlushedCheckpoint(
        dirpath=out / "checkpoints",
        every_n_train_steps=t.checkpoint_every_n_steps,
        save_top_k=0,
        save_last=True,
        save_on_train_epoch_end=checkpoint_on_epoch_end,
    )
    return L.Trainer(
        default_root_dir=out,
        accelerator=place.accelerator,
        devices=place.devices,
        num_nodes=place.num_nodes,
        strategy=place.strategy,
        precision=t.precision,
        max_epochs=max_epochs,
        max_steps=max_steps,
        accumulate_grad_batches=accumulate,
        use_distributed_sampler=False,
        logger=ResumableCSVLogger(out, name="logs", version=""),
        callbacks=[
            checkpoint,
            TrimMetricsOnStart(),
            SaveAtEnd(out / "checkpoints" / FINAL_CHECKPOINT),
            *callbacks,
        ],
        plugins=[AtomicCheckpointIO()],
        log_every_n_steps=t.log_every_n_steps,
        enable_progress_bar=t.progress if progress is None else progress,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        **({} if validate else {"limit_val_batches": 0}),
    )
