"""One metrics.csv per run that survives resumes.

Lightning's CSVLogger deletes an existing metrics.csv when it starts, so a resumed run kept only
the rows logged after the resume. Here a resumed run keeps the earlier rows up to the step it
resumes from (rows logged after that checkpoint are dropped: those steps are trained again), and
a fresh run in the same folder still starts a new file.
"""

from __future__ import annotations

import csv
import os
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment


class _AppendingWriter(ExperimentWriter):
    _last: tuple[int | None, dict[str, Any]] | None = None

    def log_metrics(self, metrics_dict: dict[str, Any], step: int | None = None) -> None:
        # A row handed over twice (FlushedCheckpoint hands a step's row over before its
        # checkpoint, Lightning again after it) is written once.
        row = (step, {k: float(v) for k, v in metrics_dict.items()})
        if row == self._last:
            return
        self._last = row
        super().log_metrics(metrics_dict, step)

    def _check_log_dir_exists(self) -> None:
        # Keep the file (Lightning deletes it here); know its columns so appends line up.
        if os.path.isfile(self.metrics_file_path):
            with open(self.metrics_file_path, newline="") as file:
                self.metrics_keys = sorted(next(csv.reader(file), []))

    def keep_before(self, step: int) -> None:
        """Drop rows logged at `step` or later (all of them for a fresh run, step 0)."""
        if not os.path.isfile(self.metrics_file_path):
            return
        with open(self.metrics_file_path, newline="") as file:
            rows = [r for r in csv.DictReader(file) if r.get("step") and int(r["step"]) < step]
        if not rows:
            os.remove(self.metrics_file_path)
            self.metrics_keys = []
            return
        tmp = self.metrics_file_path + ".tmp"
        with open(tmp, "w", newline="") as file:
            writer = csv.DictWriter(file, fieldnames=self.metrics_keys)
            writer.writeheader()
            writer.writerows(rows)
        os.replace(tmp, self.metrics_file_path)


class ResumableCSVLogger(CSVLogger):
    """CSVLogger whose metrics.csv continues across resumes of the same run folder."""

    @property
    @rank_zero_experiment
    def experiment(self) -> _AppendingWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _AppendingWriter(log_dir=self.log_dir)
        return self._experiment


class TrimMetricsOnStart(L.Callback):
    """At the start of fit, cut metrics.csv back to the step training starts (or resumes) from."""

    def on_train_start(self, trainer: L.Trainer, pl_module: Any) -> None:
        if trainer.global_rank != 0:
            return
        for logger in trainer.loggers:
            if isinstance(logger, ResumableCSVLogger):
                logger.experiment.keep_before(int(trainer.global_step))


class FlushedCheckpoint(ModelCheckpoint):
    """ModelCheckpoint that first writes the metrics rows of the steps its checkpoint covers.

    Lightning hands a step's logged metrics to the loggers only after that step's
    `on_train_batch_end`, where the step checkpoint is written: a run killed in between resumed
    from that checkpoint without the metrics row of the step before it. The row is handed over
    (and written) first; the writer drops Lightning's repeat of it."""

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: Any, *args: Any, **kw: Any) -> None:
        every = self._every_n_train_steps
        if every >= 1 and trainer.global_step % every == 0:
            if not self._should_skip_saving_checkpoint(trainer):
                trainer._logger_connector.update_train_step_metrics()  # noqa: SLF001
                for logger in trainer.loggers:
                    logger.save()
        super().on_train_batch_end(trainer, pl_module, *args, **kw)
