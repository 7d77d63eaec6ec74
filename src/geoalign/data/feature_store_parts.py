"""Distributed extraction: one crash-safe part folder per rank, then one merge into the store."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from geoalign.data.feature_store_format import KIND
from geoalign.data.feature_store_reader import FeatureStore
from geoalign.data.feature_store_writer import FeatureStoreWriter
from geoalign.data.shards import INDEX_NAME, read_index
from geoalign.errors import DataError

PARTS_DIR = "parts"


def part_dir(out_dir: str | Path, rank: int) -> Path:
    """The folder rank `rank` writes its shards to (a store index listing only its shards)."""
    return Path(out_dir) / PARTS_DIR / f"part-{rank:05d}"


def part_dirs(out_dir: Path) -> list[Path]:
    """The part folders under `out_dir`, in rank order."""
    parts = out_dir / PARTS_DIR
    return sorted(p for p in parts.glob("part-*") if p.is_dir()) if parts.is_dir() else []


def shards_in_other_parts(out_dir: Path, rank: int, settings: dict[str, Any]) -> set[int]:
    """Shards other parts hold with these settings (a rerun with another world size keeps them)."""
    done: set[int] = set()
    for folder in part_dirs(out_dir):
        if folder == part_dir(out_dir, rank):
            continue
        try:
            index = read_index(folder, KIND)
        except DataError:
            continue
        if all(index.get(k) == settings.get(k) for k in PART_SETTINGS):
            done |= {int(e["shard"]) for e in index["shards"]}
    return done


PART_SETTINGS = ("dtype", "shard_size", "total", "backbone", "manifest_hash", "views")


def merge_parts(out_dir: str | Path, *, keep_parts: bool = False) -> FeatureStore:
    """Assemble the parts of a distributed extraction into the store at `out_dir`.

    Every shard must be in some part (else DataError naming the missing shards: rerun the ranks
    that hold them). Shard files are hard-linked (copied across filesystems) and listed in the
    order a single process writes them, so the store is byte-identical to a single-process run.
    A merge killed midway is simply rerun; the parts are deleted once the store is complete.
    """
    out_dir = Path(out_dir)
    parts = part_dirs(out_dir)
    if not parts:
        if (out_dir / INDEX_NAME).is_file():
            return FeatureStore(out_dir)
        raise DataError(f"{out_dir}: no parts to merge (no {PARTS_DIR}/part-* folders)")
    indexes = {p: read_index(p, KIND) for p in parts}
    first = next(iter(indexes.values()))
    for folder, index in indexes.items():
        for key in (*PART_SETTINGS, "source"):
            if index.get(key) != first.get(key):
                raise DataError(
                    f"{folder}: part has {key}={index.get(key)!r}, {parts[0]} has "
                    f"{first.get(key)!r}; parts of different runs cannot be merged"
                )
    entries: dict[int, tuple[Path, dict[str, Any]]] = {}
    dim = None
    for folder, index in indexes.items():
        dim = dim or index.get("dim")
        for entry in index["shards"]:
            entries.setdefault(int(entry["shard"]), (folder, entry))
    total, size = int(first["total"]), int(first["shard_size"])
    n_shards = -(-total // size)
    missing = [k for k in range(n_shards) if k not in entries]
    if missing:
        raise DataError(
            f"{out_dir}: shards {missing[:10]} of {n_shards} are in no part yet; rerun the "
            "extraction (the ranks resume), then merge"
        )
    writer = FeatureStoreWriter(
        out_dir,
        dim,
        first["dtype"],
        size,
        total=total,
        backbone=first.get("backbone"),
        manifest_hash=first.get("manifest_hash"),
        source=first.get("source"),
        views=first.get("views"),
    )
    from geoalign.io_atomic import fsync_dir

    for k in range(n_shards):
        folder, entry = entries[k]
        if k in writer.done_shards:
            continue
        for name in (entry[KIND.array_key], entry["meta"]):
            target = out_dir / name
            target.unlink(missing_ok=True)
            try:
                target.hardlink_to(folder / name)
            except OSError:
                shutil.copyfile(folder / name, target)
        writer.index["shards"].append(dict(entry))
    fsync_dir(out_dir)
    writer.save()
    store = writer.finalize()
    if not keep_parts:
        shutil.rmtree(out_dir / PARTS_DIR, ignore_errors=True)
    return store


def dist_env() -> tuple[int, int]:
    """(rank, world size) from the launcher's environment (torchrun, Lightning, SLURM-style
    RANK/WORLD_SIZE); (0, 1) outside one."""
    import os

    try:
        return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    except ValueError as err:
        raise DataError(f"RANK/WORLD_SIZE must be integers ({err})") from err
