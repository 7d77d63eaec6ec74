"""Reading the tables users give: CSV/TSV (optionally compressed) or Parquet, and finding their
image / latitude / longitude / split / group columns under any common spelling.

Used by manifests, GPS galleries, cell builds and label files, so every one of them accepts the
same files and names the file and the column in the same words when it cannot.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from geoalign.errors import DataError

CANONICAL = ("image", "lat", "lon", "split", "group")

# Accepted spellings, compared after lower-casing and dropping everything but letters and digits
# ("IMG_ID" -> "imgid"). Order is priority: a path-like column beats an id-like one.
ALIASES: dict[str, tuple[str, ...]] = {
    "image": (
        "image",
        "imagepath",
        "imgpath",
        "filepath",
        "path",
        "file",
        "filename",
        "imagefile",
        "imagename",
        "img",
        "photo",
        "photopath",
        "imgid",
        "imageid",
        "photoid",
        "id",
    ),
    "lat": ("lat", "latitude", "gpslat", "gpslatitude"),
    "lon": ("lon", "lng", "long", "longitude", "gpslon", "gpslng", "gpslongitude"),
    "split": ("split", "subset", "partition"),
    "group": ("group", "groupid", "groups"),
}


def _normalise(name: Any) -> str:
    return re.sub(r"[^0-9a-z]", "", str(name).lower())


def table_kind(path: Path) -> str:
    """ "parquet", "tsv" or "csv" from the file name (a compression suffix is looked through)."""
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] in {".gz", ".bz2", ".xz", ".zst", ".zip"}:
        suffixes = suffixes[:-1]
    last = suffixes[-1] if suffixes else ""
    if last in {".parquet", ".pq"}:
        return "parquet"
    if last == ".tsv":
        return "tsv"
    return "csv"


def _sniff_separator(path: Path) -> str:
    """Comma unless the header line has tabs and no commas (some label files are .txt TSVs)."""
    import gzip

    opener = gzip.open if path.suffix.lower() == ".gz" else open
    with opener(path, "rt", encoding="utf-8", errors="replace") as fh:
        header = fh.readline()
    return "\t" if "\t" in header and "," not in header else ","


def read_table(
    path: str | Path,
    *,
    string_columns: Iterable[str] | None = None,
    columns: Sequence[str] | None = None,
) -> pd.DataFrame:
    """Read a CSV/TSV (optionally compressed) or Parquet file; `columns` reads only those.

    `string_columns` are read as text so that coordinates can be checked value by value (a stray
    "abc" must become a reported row, not a failed read); None reads every column as text.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    kind = table_kind(path)
    try:
        if kind == "parquet":
            return pd.read_parquet(path, columns=list(columns) if columns is not None else None)
        sep = "\t" if kind == "tsv" else _sniff_separator(path)
        use = list(columns) if columns is not None else None
        if string_columns is None:
            return pd.read_csv(path, sep=sep, dtype=str, usecols=use)
        header = pd.read_csv(path, sep=sep, nrows=0).columns
        wanted = set(string_columns)
        return pd.read_csv(
            path, sep=sep, dtype={c: str for c in header if c in wanted}, usecols=use
        )
    except DataError:
        raise
    except Exception as err:  # pandas/pyarrow raise many types for a malformed file
        raise DataError(f"{path}: cannot be read as a {kind} table: {err}") from err


def table_columns(path: str | Path) -> list[str]:
    """The column names of a table, read from its header (or Parquet schema) only."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    kind = table_kind(path)
    try:
        if kind == "parquet":
            import pyarrow.parquet as pq

            return list(pq.read_schema(path).names)
        sep = "\t" if kind == "tsv" else _sniff_separator(path)
        return list(pd.read_csv(path, sep=sep, nrows=0).columns)
    except Exception as err:
        raise DataError(f"{path}: cannot be read as a {kind} table: {err}") from err


def resolve_columns(
    available: Iterable[Any],
    columns: Mapping[str, str] | None = None,
    *,
    source: str,
    require_image: bool = True,
) -> dict[str, str]:
    """Map canonical names (image, lat, lon, split, group) to the file's column names.

    Explicit `columns` win (matched case-insensitively); otherwise common spellings are accepted.
    Two different columns that both look like latitude (or longitude) are refused as ambiguous.
    """
    available = [str(c) for c in available]
    by_lower = {c.lower(): c for c in available}
    mapping: dict[str, str] = {}
    for key, name in (columns or {}).items():
        if key not in CANONICAL:
            raise DataError(f"{source}: unknown column role {key!r}; use one of {list(CANONICAL)}")
        if name in available:
            mapping[key] = name
        elif str(name).lower() in by_lower:
            mapping[key] = by_lower[str(name).lower()]
        else:
            raise DataError(
                f"{source}: column {name!r} (given for {key}) not found; columns are {available}"
            )
    taken = set(mapping.values())
    for key in CANONICAL:
        if key in mapping:
            continue
        candidates = [c for c in available if c not in taken and _normalise(c) in ALIASES[key]]
        if not candidates:
            continue
        if key in {"lat", "lon"} and len(candidates) > 1:
            raise DataError(
                f"{source}: several columns look like {key}: {candidates}; "
                f"name the one to use (columns={{'{key}': ...}}, CLI --{key}-col)"
            )
        candidates.sort(key=lambda c: ALIASES[key].index(_normalise(c)))
        mapping[key] = candidates[0]
        taken.add(candidates[0])
    needed = ("image", "lat", "lon") if require_image else ("lat", "lon")
    missing = [k for k in needed if k not in mapping]
    if missing:
        hints = {k: ALIASES[k][:6] for k in missing}
        raise DataError(
            f"{source}: cannot find the {', '.join(missing)} column(s) among {available}; "
            f"accepted names include {hints}, or name them explicitly (columns={{...}}, "
            f"CLI --image-col/--lat-col/--lon-col)"
        )
    return mapping
