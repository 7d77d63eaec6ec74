"""Webdataset tar shards: the form large geo-localization sets ship in (OSV-5M, MP-16 tars).

The one import point for shard I/O; each job lives in its own module:

- `wds_specs`: which shards a spec names (paths, brace patterns, folders, URLs, `pipe:`);
- `wds_samples`: samples read and checked (`WdsReader`, `sample_coords`, `decode_image`); bad
  samples are never dropped silently but become a `BadSample` that readers count and report;
- `wds_listing`: `list_shards` -> a `ShardManifest` (rows without decoding) and the
  `ShardImageLoader` that `features extract` reads images back with;
- `wds_images`: photos of shards named by sample key, streamed for `predict` and evaluation
  (`list_photos`, `photos_with_truth`);
- `wds_write`: `write_shards`, a manifest plus its image files -> shards (`data to-wds`).
"""

from __future__ import annotations

from geoalign.data.wds_listing import ShardImageLoader, ShardManifest, ShardRef, list_shards
from geoalign.data.wds_samples import (
    BadSample,
    WdsReader,
    WdsSample,
    check_sample,
    decode_image,
    image_field,
    sample_coords,
)
from geoalign.data.wds_specs import (
    COORD_FIELDS,
    IMAGE_FIELDS,
    LAT_NAMES,
    LON_NAMES,
    SHARD_SUFFIXES,
    expand_shards,
    is_shard_spec,
)
from geoalign.data.wds_write import WRITE_STATE, WriteResult, write_shards

__all__ = [
    "COORD_FIELDS",
    "IMAGE_FIELDS",
    "LAT_NAMES",
    "LON_NAMES",
    "SHARD_SUFFIXES",
    "WRITE_STATE",
    "BadSample",
    "ShardImageLoader",
    "ShardManifest",
    "ShardRef",
    "WdsReader",
    "WdsSample",
    "WriteResult",
    "check_sample",
    "decode_image",
    "expand_shards",
    "image_field",
    "is_shard_spec",
    "list_shards",
    "sample_coords",
    "write_shards",
]
