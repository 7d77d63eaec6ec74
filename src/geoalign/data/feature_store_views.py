"""Multi-view feature stores: what an extraction makes of each image before encoding it.

Two kinds, each recorded in the store's index (`views`: {"count", "kind", ...}):
- "ten-crop": the ten crops the photo evaluation uses (`ten_crop_transform`: resize, the four
  corners and the centre, and their horizontal flips). Evaluation from such a store averages
  the crops' logits, as the papers do; it is not training data.
- "simclr": K SimCLR views per image (`simclr_views_for`, the augmentation `source: images`
  training uses), for training from a store with P of the K views per step. Each row's views
  are drawn from a generator seeded by (seed, manifest position), so a rerun, a resumed run and
  a distributed run all make the same views. K views cost K times the extraction time and disk.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from geoalign.data.transforms import PreprocessConfig, simclr_views_for, ten_crop_transform

TEN_CROP = "ten-crop"
SIMCLR = "simclr"
AUGMENTS = (SIMCLR,)


@dataclass(frozen=True)
class StoreViews:
    """How an extraction makes each row's K views: `prepare(image, position)` -> [K, 3, S, S]
    pixels, and `record`, the index entry that says what the store's views are."""

    prepare: Callable[[Any, int], Tensor]
    record: dict[str, Any]

    @property
    def count(self) -> int:
        return int(self.record["count"])


def ten_crop_views(preprocess: PreprocessConfig) -> StoreViews:
    """The photo evaluation's ten crops of every image (the same transform, not a copy)."""
    transform = ten_crop_transform(preprocess)

    def prepare(image: Any, position: int) -> Tensor:
        return transform(image)

    return StoreViews(prepare, {"count": 10, "kind": TEN_CROP, "image_size": preprocess.image_size})


def row_seed(seed: int, position: int) -> int:
    """The torch seed of one row's views: a pure function of (seed, manifest position)."""
    state = np.random.SeedSequence([int(seed), int(position)]).generate_state(1, np.uint64)
    return int(state[0] & np.uint64(2**63 - 1))


def simclr_store_views(preprocess: PreprocessConfig, count: int, seed: int = 0) -> StoreViews:
    """K SimCLR views of every image, reproducible per row (see the module docstring)."""
    if count < 2:
        raise ValueError(f"a views store holds at least 2 views per image, not {count}")
    views = simclr_views_for(preprocess, count)

    def prepare(image: Any, position: int) -> Tensor:
        # torchvision's random transforms draw from torch's global generator: fork it, so the
        # views depend on this row alone and the caller's random state is left as it was.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(row_seed(seed, position))
            return views(image)

    record = {
        "count": int(count),
        "kind": SIMCLR,
        "seed": int(seed),
        "image_size": preprocess.image_size,
    }
    return StoreViews(prepare, record)
