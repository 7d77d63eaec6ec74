"""The label-free concept bottleneck (CBM): a sparse linear classifier from a concept-aware
model's concept scores to countries, whose weights say how much each concept pushed a decision.

Following the concept-aware paper (its Fig. 3), a Label-free CBM (Oikarinen et al., ICLR 2023) is
trained on the concept-aware model's concept scores z_img = f_img(x_img): the scores are
standardised, and a sparse linear layer maps them to countries. Its sparsity comes from an
elastic-net path as in LF-CBM's GLM-SAGA (`elastic_net.py`): the penalty starts where every weight
is zero and is lowered until the classes use about `target_nonzero` concepts each. A concept's
contribution to a prediction is w_cj · a_j (its weight for the predicted class times its
standardised activation), normalised so that the absolute contributions sum to 1.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from geoalign.errors import DataError, WeightsNotFoundError
from geoalign.interpret.elastic_net import sparse_multinomial_path
from geoalign.io_atomic import atomic_output

CBM_DIR = "cbm"


# --- the concept bottleneck ------------------------------------------------------------------------


@dataclass
class ConceptBottleneck:
    """Sparse linear classifier over standardised concept activations (the CBM's last layer)."""

    concepts: list[str]
    categories: list[str]
    classes: list[str]
    weight: np.ndarray  # [C, k]
    bias: np.ndarray  # [C]
    mean: np.ndarray  # [k]
    std: np.ndarray  # [k]
    metrics: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def fit(
        cls,
        activations: np.ndarray,
        labels: np.ndarray,
        concepts: list[str],
        categories: list[str],
        *,
        target_nonzero: int = 30,
        l1_ratio: float = 0.99,
        min_per_class: int = 20,
        val_fraction: float = 0.2,
        iters_per_step: int = 150,
        max_rows: int = 10000,
        path_steps: int = 20,
        refit_ridge: float | None = 1e-3,
        seed: int = 0,
    ) -> ConceptBottleneck:
        """Fit on [N, k] activations and N labels (e.g. country codes; '' = unlabelled, skipped).

        Classes with fewer than `min_per_class` examples are left out. A fixed `val_fraction` of
        the rows is held out to report accuracy; at most `max_rows` rows are used for fitting.
        """
        a = np.asarray(activations, dtype=np.float32)
        labels = np.asarray(labels).astype(str)
        if a.shape[0] != len(labels) or a.shape[1] != len(concepts):
            raise DataError(
                f"CBM: {a.shape} activations for {len(labels)} labels and {len(concepts)} concepts"
            )
        keep = labels != ""
        names, counts = np.unique(labels[keep], return_counts=True)
        classes = [str(c) for c, n in zip(names, counts, strict=True) if n >= min_per_class]
        if len(classes) < 2:
            raise DataError(
                f"CBM: need at least 2 classes with >= {min_per_class} examples, found "
                f"{len(classes)} ({len(labels)} rows)"
            )
        keep &= np.isin(labels, classes)
        rows = np.flatnonzero(keep)
        rng = np.random.default_rng(seed)
        rows = rng.permutation(rows)
        n_val = int(round(len(rows) * val_fraction))
        val, train = rows[:n_val], rows[n_val:][:max_rows]
        index = {c: i for i, c in enumerate(classes)}
        mean = a[train].mean(0)
        std = a[train].std(0) + 1e-6
        x = torch.from_numpy((a[train] - mean) / std)
        y = torch.tensor([index[c] for c in labels[train]])
        w, b, lam = sparse_multinomial_path(
            x,
            y,
            len(classes),
            target_nonzero=target_nonzero,
            l1_ratio=l1_ratio,
            path_steps=path_steps,
            iters_per_step=iters_per_step,
            refit_ridge=refit_ridge,
        )
        prior = torch.bincount(y, minlength=len(classes)).float() / len(y)
        model = cls(
            concepts=list(concepts),
            categories=list(categories),
            classes=classes,
            weight=w.numpy(),
            bias=b.numpy(),
            mean=mean,
            std=std,
        )
        train_acc = float((model.predict(a[train]) == labels[train]).mean())
        val_acc = float((model.predict(a[val]) == labels[val]).mean()) if len(val) else float("nan")
        majority = float(np.mean(labels[val] == classes[int(prior.argmax())])) if len(val) else 0.0
        model.metrics = {
            "train_rows": int(len(train)),
            "val_rows": int(len(val)),
            "classes": len(classes),
            "train_accuracy": train_acc,
            "val_accuracy": val_acc,
            "val_majority_baseline": majority,
            "nonzero_per_class": float((w != 0).sum(1).float().mean()),
            "lambda": lam,
            "l1_ratio": l1_ratio,
            "refit_ridge": refit_ridge,
        }
        return model

    # -- inference --------------------------------------------------------------------------------
    def standardise(self, activations: np.ndarray) -> np.ndarray:
        return (np.asarray(activations, dtype=np.float32) - self.mean) / self.std

    def logits(self, activations: np.ndarray) -> np.ndarray:
        return self.standardise(activations) @ self.weight.T + self.bias

    def predict_proba(self, activations: np.ndarray) -> np.ndarray:
        z = self.logits(activations)
        z = z - z.max(axis=-1, keepdims=True)
        p = np.exp(z)
        return p / p.sum(axis=-1, keepdims=True)

    def predict(self, activations: np.ndarray) -> np.ndarray:
        return np.asarray(self.classes)[self.logits(activations).argmax(-1)]

    def contributions(self, activation: np.ndarray, class_index: int) -> np.ndarray:
        """w_cj · a_j for one image [k] and class c, normalised to Σ|·| = 1 (zero stays zero)."""
        raw = self.weight[class_index] * self.standardise(activation).reshape(-1)
        total = np.abs(raw).sum()
        return raw / total if total > 0 else raw

    # -- storage ------------------------------------------------------------------------------------
    def save(self, folder: str | Path) -> Path:
        from safetensors.numpy import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        arrays = {
            "weight": self.weight.astype(np.float32),
            "bias": self.bias.astype(np.float32),
            "mean": self.mean.astype(np.float32),
            "std": self.std.astype(np.float32),
        }
        with atomic_output(folder / "cbm.safetensors") as tmp:
            save_file(arrays, str(tmp))
        meta = {
            "concepts": self.concepts,
            "categories": self.categories,
            "classes": self.classes,
            "metrics": self.metrics,
        }
        with atomic_output(folder / "cbm.json") as tmp:  # last: load needs both files
            tmp.write_text(json.dumps(meta, indent=2))
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> ConceptBottleneck:
        from safetensors.numpy import load_file

        folder = Path(folder)
        if not (folder / "cbm.safetensors").is_file() or not (folder / "cbm.json").is_file():
            raise WeightsNotFoundError(
                f"no concept bottleneck in {folder} (cbm.safetensors + cbm.json); fit one with "
                "`geoalign explain fit-cbm --model MODEL --features ...`"
            )
        arrays = load_file(str(folder / "cbm.safetensors"))
        meta = json.loads((folder / "cbm.json").read_text())
        return cls(
            concepts=meta["concepts"],
            categories=meta["categories"],
            classes=meta["classes"],
            weight=arrays["weight"],
            bias=arrays["bias"],
            mean=arrays["mean"],
            std=arrays["std"],
            metrics=meta.get("metrics", {}),
        )


def country_labels(latlon: np.ndarray) -> np.ndarray:
    """Country code of each coordinate ('' at sea), from the Natural Earth polygons."""
    from geoalign.geo.regions import load_countries

    return load_countries().country_codes(latlon).astype(str)


def country_name(code: str) -> str:
    from geoalign.geo.regions import load_countries

    country = load_countries().by_code().get(code)
    return country.name if country is not None else code


@torch.inference_mode()
def concept_scores(model: Any, features: np.ndarray | Tensor, batch_size: int = 4096) -> np.ndarray:
    """Dense concept scores z_img [N, k] of backbone features, batched, float32 numpy."""
    param = next(model.parameters())
    x = torch.as_tensor(features)
    out = []
    for chunk in x.split(batch_size):
        emb = model.encode_images(chunk.to(param.device, torch.float32))
        out.append(model.image_concepts(emb).float().cpu())
    return torch.cat(out).numpy() if out else np.zeros((0, model.num_concepts), np.float32)


def fit_country_cbm(
    model: Any, features: np.ndarray, latlon: np.ndarray, **kwargs: Any
) -> ConceptBottleneck:
    """Fit the country CBM on a labelled feature set (countries from the coordinates)."""
    s = model.concept_set
    return ConceptBottleneck.fit(
        concept_scores(model, features),
        country_labels(latlon),
        s.names,
        [c.category for c in s],
        **kwargs,
    )


def cbm_dir(model_dir: str | Path) -> Path:
    return Path(model_dir) / CBM_DIR
