"""Feature store format: the folder layout, the index's format tag and the feature dtypes.

Why shards plus an index: extraction over millions of photos takes hours, so it must survive being
killed. Shard k always holds manifest positions [k*S, (k+1)*S) -- fixed by the shard size, never by
when a run stopped -- and each shard is written to a temporary file and renamed into place, after
which the index (index.json) is rewritten the same way. A rerun skips the shards the index lists and
redoes the rest, so an interrupted-then-resumed run gives byte-identical shards to an uninterrupted
one (those mechanics live in `geoalign.data.shards`). The index also records the backbone spec and
the manifest hash, so features are never silently paired with the wrong model or the wrong images.

Layout of a store folder:
    index.json                  format, dim, dtype, shard size, backbone, manifest hash, shards
    shard-00000.npy             features of the rows that encoded, [n_ok, dim], float16 or float32
    shard-00000.parquet         every manifest row of the shard: position, row, image, lat, lon,
                                ok, error (images that failed to load are recorded here, not fatal)
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa

from geoalign.data.shards import StoreKind, meta_schema

FORMAT = "geoalign-feature-store"
FORMAT_VERSION = 1
KIND = StoreKind(FORMAT, FORMAT_VERSION, label="feature store", array_key="features")
DEFAULT_SHARD_SIZE = 16384
DTYPES = {"float16": np.float16, "float32": np.float32}
META_SCHEMA = meta_schema(("lat", pa.float64()), ("lon", pa.float64()))


def dtype_name(dtype: Any) -> str:
    """The stored dtype's name; ValueError for anything but float16/float32."""
    name = np.dtype(dtype).name
    if name not in DTYPES:
        raise ValueError(f"feature dtype must be float16 or float32, not {name}")
    return name
