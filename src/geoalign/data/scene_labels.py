"""Per-photo descriptors that need no photos: the Places365 scene labels of the reference CSVs.

The label files of Im2GPS, Im2GPS3k and YFCC26k published with Transformer_Based_Geo-localization
carry, for every photo, the predicted Places365 scene at three granularities (S3_Label: indoor /
natural / urban, S16_Label, S365_Label) and the three coarse-class probabilities. Encoded as one-hot
blocks plus the probabilities they are a real, if weak, image descriptor: enough to train and test
the whole alignment pipeline on a CPU in minutes.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from geoalign.errors import DataError

SCENE_LABELS = "places365-scene-labels"
SCENE_COLUMNS = ("S3_Label", "S16_Label", "S365_Label")
SCENE_SIZES = (3, 16, 365)
PROB_COLUMNS = ("Prob_indoor", "Prob_natural", "Prob_urban")
SCENE_DIM = sum(SCENE_SIZES) + len(PROB_COLUMNS)


def scene_label_descriptors(frame: pd.DataFrame, *, source: str = "labels") -> np.ndarray:
    """[N, 387] float32: one-hot S3, S16, S365 labels then the three probabilities."""
    missing = [c for c in (*SCENE_COLUMNS, *PROB_COLUMNS) if c not in frame.columns]
    if missing:
        raise DataError(
            f"{source}: scene-label columns {missing} missing (have {list(frame.columns)})"
        )
    n = len(frame)
    out = np.zeros((n, SCENE_DIM), dtype=np.float32)
    offset = 0
    for col, size in zip(SCENE_COLUMNS, SCENE_SIZES, strict=True):
        labels = pd.to_numeric(frame[col], errors="coerce").to_numpy()
        bad = ~np.isfinite(labels) | (labels < 0) | (labels >= size) | (labels % 1 != 0)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise DataError(
                f"{source}: row {i + 1}: {col} = {frame[col].iloc[i]!r} is not a class in "
                f"0..{size - 1} ({int(bad.sum())} bad rows)"
            )
        out[np.arange(n), offset + labels.astype(np.int64)] = 1.0
        offset += size
    probs = frame[list(PROB_COLUMNS)].apply(pd.to_numeric, errors="coerce").to_numpy(np.float64)
    bad = ~np.isfinite(probs).all(axis=1)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise DataError(f"{source}: row {i + 1}: a Prob_* column is not a number")
    out[:, offset:] = probs
    return out


def load_scene_label_set(name_or_path: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(descriptors [N, 387], latlon [N, 2], ids [N]) from a packaged benchmark name
    (im2gps, im2gps3k, yfcc26k) or a CSV with the same columns."""
    from pathlib import Path

    from geoalign.geo.coords import validate_latlon

    path = Path(name_or_path)
    if path.suffix.lower() in {".csv", ".gz"} or path.is_file():
        if not path.is_file():
            raise DataError(f"{path}: scene-label file not found")
        frame = pd.read_csv(path)
        source = str(path)
    else:
        from geoalign.data.benchmarks import reference_labels

        frame = reference_labels(str(name_or_path))
        source = f"packaged {name_or_path} labels"
    for col in ("LAT", "LON", "IMG_ID"):
        if col not in frame.columns:
            raise DataError(f"{source}: column {col} missing (have {list(frame.columns)})")
    lat, lon = validate_latlon(frame["LAT"], frame["LON"], source=source)
    feats = scene_label_descriptors(frame, source=source)
    return feats, np.stack([lat, lon], axis=1), frame["IMG_ID"].astype(str).to_numpy()
