"""GeoSURGE's LightningModule (summed per-level InfoNCE; validation metrics) and data module."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import lightning as L
import torch
from torch import Tensor

from geoalign.models.base import log_probs, logits
from geoalign.models.geosurge import GeoSurge
from geoalign.training.data import DataPosition, EpochLoader
from geoalign.training.geosurge.batches import Batch, GeoSurgeData
from geoalign.training.geosurge.config import GeoSurgeTrainConfig
from geoalign.training.geosurge.model import set_trainable


class GeoSurgeModule(L.LightningModule):
    """One step: labels of the batch coordinates at every level, visual features, summed InfoNCE.
    Validation: full-softmax loss, hierarchical top-1 cell, GeoScore and accuracy at the five
    distance thresholds of its cell mean (summed over processes).

    A step sees the whole effective batch (`optim.batch_size`), so eq. 1's in-batch negatives are
    the cells of all of it, whatever `optim.micro_batch_size`. When the batch is split into
    micro-batches it is a GradCache-style two-pass step (Gao et al. 2021): encode every
    micro-batch without a graph, take the loss over all the visual features and its gradient with
    respect to them, then re-encode each micro-batch with a graph (the same random state) and
    back-propagate that cached gradient. Memory is one micro-batch's graph, and the loss and
    gradients are those of one pass over the full batch (one extra forward pass per micro-batch).
    The optimisation is manual for that reason (one optimizer step per batch, StepLR per epoch).
    """

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
        self.automatic_optimization = False  # the two-pass step (see the class docstring)

    # -- data position (exact mid-epoch resume, as GeoCLIPModule) -------------------------------
    def data_position(self) -> tuple[int, int]:
        epoch = self.trainer.current_epoch if self._trainer is not None else 0
        return epoch, self._position.start(epoch)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["geoalign"] = {
            **self._position.state(),
            "batch_rows": self.cfg.optim.batch_size,
            "config": self.cfg.to_dict(),
        }
        if self.model.backbone is not None:
            frozen = {
                f"model.backbone.{n}"
                for n, p in self.model.backbone.named_parameters()
                if not p.requires_grad
            }
            for key in frozen:
                checkpoint["state_dict"].pop(key, None)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get("geoalign")
        if state is not None and "batch_rows" not in state:
            # written when a batch of the loader was one micro-batch: count whole batches
            state = {**state, "batches_done": int(state["batches_done"]) // self.cfg.accumulate}
        self._position.restore(state)

    # -- steps ----------------------------------------------------------------------------------------
    def _labels(self, coords: Tensor) -> Tensor:
        return self.model.assign(coords).to(coords.device)

    def training_step(self, batch: Batch, batch_idx: int) -> Tensor:
        labels = self._labels(batch["coords"])
        candidates = None
        world = self.trainer.world_size
        if world > 1 and self.model.config.negatives == "batch":
            # Every process's cells are negatives. Pad to the full local batch (for a source
            # whose batches can be short) so all_gather sees equal shapes; -1 rows are none.
            full = self.cfg.optim.batch_size // world
            pad = labels.new_full((max(0, full - labels.shape[0]), labels.shape[1]), -1)
            candidates = self.all_gather(torch.cat([labels, pad])).reshape(-1, labels.shape[1])
        optimizer = self.optimizers()
        optimizer.zero_grad()
        with self._local_gradients():
            losses = self.full_batch_backward(batch, labels, candidates)
        optimizer.step()
        self._position.step()
        b = labels.shape[0]
        self.log("train/loss", losses.total.detach(), prog_bar=True, batch_size=b)
        for k, value in enumerate(losses.per_level.detach()):
            self.log(f"train/loss_level{k}", value, batch_size=b)
        if hasattr(self.model.geo, "scales"):
            taus = 1.0 / self.model.geo.scales().detach().exp()
            self.log("train/temperature_finest", taus[-1], batch_size=b)
        return losses.total.detach()

    def full_batch_backward(
        self, batch: Batch, labels: Tensor, candidates: Tensor | None = None
    ) -> Any:
        """Gradients of the loss over the whole batch, one micro-batch's graph at a time.

        Returns the LevelLosses (detached). Gradients accumulate into the parameters' .grad."""
        rows = labels.shape[0]
        world = self.trainer.world_size if self._trainer is not None else 1
        micro = max(1, (self.cfg.optim.micro_batch_size or self.cfg.optim.batch_size) // world)
        if micro >= rows:  # one pass: nothing to cache
            losses = self.model.loss(self.model.encode(batch), labels, candidates)
            self._backward(losses.total)
            return _detached(losses)
        chunks = [slice(i, min(i + micro, rows)) for i in range(0, rows, micro)]
        states, parts = [], []
        with torch.no_grad():
            for part in chunks:
                states.append(_rng_state(labels.device))
                parts.append(self.model.encode(_rows(batch, part)))
        visual = torch.cat(parts).detach().requires_grad_(True)
        losses = self.model.loss(visual, labels, candidates)
        self._backward(losses.total)  # the cells' and temperatures' gradients, and d loss / d v
        cached = visual.grad / self._loss_scale()
        for part, state in zip(chunks, states, strict=True):
            _set_rng_state(state, labels.device)
            again = self.model.encode(_rows(batch, part))
            self._backward((again.float() * cached[part].float()).sum())
        return _detached(losses)

    def _backward(self, loss: Tensor) -> None:
        if self._trainer is None:
            loss.backward()
        else:
            self.manual_backward(loss)

    def _loss_scale(self) -> float:
        """The fp16 loss scale manual_backward applies (1 for fp32 / bf16): the cached gradient
        must not be scaled twice."""
        if self._trainer is None:
            return 1.0
        scaler = getattr(self.trainer.precision_plugin, "scaler", None)
        return float(scaler.get_scale()) if scaler is not None else 1.0

    def _local_gradients(self) -> Any:
        """Several backward passes per step: under DDP, accumulate locally, then all-reduce."""
        import contextlib

        from torch.nn.parallel import DistributedDataParallel

        wrapped = self.trainer.strategy.model
        if not isinstance(wrapped, DistributedDataParallel):
            return contextlib.nullcontext()

        @contextlib.contextmanager
        def synced() -> Iterator[None]:
            with wrapped.no_sync():
                yield
            world = self.trainer.world_size
            for p in self.model.parameters():
                if p.requires_grad:
                    if p.grad is None:
                        p.grad = torch.zeros_like(p)
                    torch.distributed.all_reduce(p.grad)
                    p.grad.div_(world)

        return synced()

    def on_train_epoch_end(self) -> None:
        scheduler = self.lr_schedulers()
        if scheduler is not None:
            scheduler.step()

    def on_validation_epoch_start(self) -> None:
        self._val = torch.zeros(4 + len(self.THRESHOLDS), dtype=torch.float64, device=self.device)

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        from geoalign.geo.distance import haversine_km_torch
        from geoalign.geo.metrics import geoscore

        coords = batch["coords"].double()
        labels = self._labels(batch["coords"])
        visual = self.model.encode(batch)
        loss = self.model.geo.loss(visual, labels, negatives="all").total
        scores = logits(self.model, self.model.queries(visual), self.model.candidates())
        top = torch.topk(log_probs(scores), 1, dim=-1).indices[:, 0].cpu()
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


def _rows(batch: Batch, part: slice) -> Batch:
    return {k: v[part] for k, v in batch.items()}


def _detached(losses: Any) -> Any:
    from geoalign.losses import LevelLosses

    return LevelLosses(losses.total.detach(), losses.per_level.detach(), losses.counts)


def _rng_state(device: torch.device) -> tuple[Tensor, Tensor | None]:
    cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    return torch.get_rng_state(), cuda


def _set_rng_state(state: tuple[Tensor, Tensor | None], device: torch.device) -> None:
    torch.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state(state[1], device)


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
            o.batch_size,  # whole batches: the step splits them (see GeoSurgeModule)
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
