"""Feature store: backbone features computed once, kept on disk in shards, read by memory map.

The public names, gathered from the modules that hold one job each (import from here):
- `feature_store_format`: the folder layout, index format tag, dtypes, default shard size;
- `feature_store_reader`: `FeatureStore` (rows by memory map, coordinates, ids, checks, batches);
- `feature_store_writer`: `FeatureStoreWriter` (crash-safe shards, resume);
- `feature_store_extract`: `extract_features` (the extraction loop) and `encode_with`;
- `feature_store_parts`: distributed extraction (`part_dir`, `merge_parts`, `dist_env`);
- `feature_store_import`: stores from existing arrays (`store_arrays`, `import_features`) and
  `copy_store`;
- `feature_store_datasets`: torch datasets over a store.
"""

from __future__ import annotations

from geoalign.data.feature_store_datasets import FeatureDataset, FeatureIterableDataset
from geoalign.data.feature_store_extract import encode_with, extract_features
from geoalign.data.feature_store_format import (
    DEFAULT_SHARD_SIZE,
    DTYPES,
    FORMAT,
    FORMAT_VERSION,
    KIND,
)
from geoalign.data.feature_store_import import copy_store, import_features, store_arrays
from geoalign.data.feature_store_parts import PARTS_DIR, dist_env, merge_parts, part_dir
from geoalign.data.feature_store_reader import FeatureStore, ShardedArray
from geoalign.data.feature_store_writer import FeatureStoreWriter

__all__ = [
    "DEFAULT_SHARD_SIZE",
    "DTYPES",
    "FORMAT",
    "FORMAT_VERSION",
    "KIND",
    "PARTS_DIR",
    "FeatureDataset",
    "FeatureIterableDataset",
    "FeatureStore",
    "FeatureStoreWriter",
    "ShardedArray",
    "copy_store",
    "dist_env",
    "encode_with",
    "extract_features",
    "import_features",
    "merge_parts",
    "part_dir",
    "store_arrays",
]
