"""Read partitions in the GeoEstimation CSV layout (the published MP-16 cell files), repairing tokens
that a spreadsheet turned into numbers, and draw synthetic samples from them.

Layout: class_label, hex_id (S2 token), imgs_per_cell, latitude_mean, longitude_mean.

Why a repair: the copies of the MP-16 files in circulation went through a spreadsheet, which read
every token made only of decimal digits and at most one "e" as a number: "0994" became "994",
"478e4" became "4780000" and "47e064" became "4.7E+064" (about 2% of rows). The number keeps the
token's digits, so the original is one of a few strings (leading zeros put back, trailing zeros
moved into the exponent); exactly one of them is usually a valid S2 cell that contains the row's
mean location. Rows where no candidate, or more than one, fits are reported and left out.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from geoalign.errors import DataError, shown
from geoalign.geo.s2 import ids as s2ids
from geoalign.geo.s2.partition import Partition
from geoalign.io_atomic import atomic_output

COLUMNS = ("class_label", "hex_id", "imgs_per_cell", "latitude_mean", "longitude_mean")
_SCI = re.compile(r"^(\d+)(?:\.(\d+))?[eE]\+?(\d+)$")
_MAX_ZEROS = 3  # leading zeros a spreadsheet may have stripped (token prefix or exponent)


@dataclass
class TokenRepair:
    row: int  # 1-based data row (header not counted)
    raw: str
    token: str | None  # the repaired token, or None when unresolved
    candidates: list[str]  # every candidate that is a valid cell containing the mean location


def spreadsheet_token_candidates(raw: str) -> list[str]:
    """Strings a spreadsheet could have turned into `raw` (empty if `raw` is not numeric)."""
    text = raw.strip()
    sci = _SCI.match(text)
    if sci:  # "4.7E+064": mantissa digits and a power of ten
        digits = sci.group(1) + (sci.group(2) or "")
        power = int(sci.group(3)) - len(sci.group(2) or "")
        digits_stripped = digits.lstrip("0") or "0"
    elif text.isdigit():  # "4780000" or "994": an integer, maybe from "478e4" or "0994"
        digits_stripped = text.lstrip("0") or "0"
        power = 0
    else:
        return []
    significant = digits_stripped.rstrip("0") or "0"
    power += len(digits_stripped) - len(significant)
    # "<mantissa>e<exponent>" with the power split between trailing zeros and the exponent; the
    # number 0 came from "0e<anything>".
    if significant == "0":
        splits = [("0", e) for e in range(1000)]
    else:
        splits = [(significant + "0" * m, power - m) for m in range(power + 1)]
    out: set[str] = set()
    for lead in range(_MAX_ZEROS + 1):  # leading zeros the spreadsheet stripped
        prefix = "0" * lead
        if power == 0:
            out.add(prefix + digits_stripped)
        for mantissa, exponent in splits:
            for width in range(len(str(exponent)), _MAX_ZEROS + 1):
                out.add(f"{prefix}{mantissa}e{exponent:0{width}d}")
    return sorted(t for t in out if not t.endswith("0") and len(t) <= 16)


def _valid_containing(tokens: list[str], lat: float, lon: float) -> list[str]:
    if not tokens:
        return []
    ids = np.array([int(t.ljust(16, "0"), 16) for t in tokens], dtype=np.uint64)
    leaf = s2ids.latlon_to_cell_ids([lat], [lon])
    ok = s2ids.is_valid_id(ids) & s2ids.contains(ids, leaf)
    return [t for t, good in zip(tokens, ok, strict=True) if good]


def read_cell_csv(
    path: str | Path, *, repair: bool = True, name: str | None = None
) -> tuple[Partition, list[TokenRepair]]:
    """Read one GeoEstimation-style cell file into a Partition (class index = class_label).

    With repair, rows whose token is invalid or whose cell does not contain the row's mean
    location are repaired when exactly one spreadsheet candidate fits; rows that cannot be
    repaired are dropped, and the class labels of the kept rows are preserved in `Partition.labels`.
    Without repair any bad token raises DataError naming the row.
    """
    import pandas as pd

    path = Path(path)
    try:
        df = pd.read_csv(path, dtype={"hex_id": str})
    except (OSError, ValueError) as err:
        raise DataError(f"{path}: cannot read: {err}") from None
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        raise DataError(f"{path}: missing columns {missing} (expected {list(COLUMNS)})")
    tokens = df["hex_id"].fillna("").astype(str).str.strip().tolist()
    lat = df["latitude_mean"].to_numpy(np.float64)
    lon = df["longitude_mean"].to_numpy(np.float64)
    ids = np.zeros(len(df), dtype=np.uint64)
    for k, tok in enumerate(tokens):
        # A real token never ends in "0": "477000000000" is the number 477e9, not cell "477".
        if re.fullmatch(r"[0-9a-fA-F]{0,15}[1-9a-fA-F]", tok):
            ids[k] = int(tok.ljust(16, "0"), 16)
    good = s2ids.is_valid_id(ids) & s2ids.contains(ids, s2ids.latlon_to_cell_ids(lat, lon))
    repairs: list[TokenRepair] = []
    keep = good.copy()
    if not repair and not good.all():
        k = int(np.flatnonzero(~good)[0])
        raise DataError(
            f"{path}: row {k + 1}: hex_id {shown(tokens[k])} is not an S2 cell containing "
            f"its mean location ({lat[k]:.5f}, {lon[k]:.5f})"
        )
    # Candidates that hold the row's mean location. When a cell and its descendant both do
    # ("346e4" and "346e04"), the cells of a partition being disjoint decides: drop candidates that
    # overlap a cell already known in the same file.
    known = Partition(ids[good], np.zeros(good.sum()), lat[good], lon[good])
    for k in np.flatnonzero(~good):
        fits = _valid_containing(spreadsheet_token_candidates(tokens[k]), lat[k], lon[k])
        if len(fits) > 1:
            cand = np.array([int(t.ljust(16, "0"), 16) for t in fits], dtype=np.uint64)
            free = (known.locate(cand) < 0) & (known.covered_by(cand) == 0)
            fits = [t for t, ok in zip(fits, free, strict=True) if ok] or fits
        fixed = fits[0] if len(fits) == 1 else None
        repairs.append(TokenRepair(int(k) + 1, tokens[k], fixed, fits))
        if fixed is not None:
            ids[k] = int(fixed.ljust(16, "0"), 16)
            keep[k] = True
    part = Partition(
        ids[keep],
        df["imgs_per_cell"].to_numpy(np.int64)[keep],
        lat[keep],
        lon[keep],
        name=name or path.stem,
        labels=df["class_label"].to_numpy(np.int64)[keep],
    )
    return part, repairs


def write_cell_csv(partition: Partition, path: str | Path) -> Path:
    """Write a partition in the GeoEstimation layout (class_label = class index)."""
    import pandas as pd

    path = Path(path)
    frame = pd.DataFrame(
        {
            "class_label": np.arange(len(partition)),
            "hex_id": partition.tokens,
            "imgs_per_cell": partition.counts,
            "latitude_mean": partition.lat_mean,
            "longitude_mean": partition.lon_mean,
        }
    )
    with atomic_output(path) as tmp:
        frame.to_csv(tmp, index=False)
    return path


def sample_in_cells(
    cell_ids: np.ndarray, counts: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """counts[k] points uniform over the leaf cells of cell k (uniform in S2's (s, t) square),
    returned as (lat, lon) of the leaf centres: a stand-in for training coordinates we lack."""
    cell_ids = np.asarray(cell_ids, dtype=np.uint64)
    counts = np.asarray(counts, dtype=np.int64)
    per_point = np.repeat(cell_ids, counts)
    n_leaves = np.left_shift(np.int64(1), 2 * (s2ids.MAX_LEVEL - s2ids.cell_levels(per_point)))
    offset = (rng.random(per_point.size) * n_leaves).astype(np.int64).clip(max=n_leaves - 1)
    leaf = s2ids.range_min(per_point) + np.uint64(2) * offset.astype(np.uint64)
    return s2ids.cell_centers(leaf)


_TAU_IN_NAME = re.compile(r"cells_(\d+)_(\d+)")


def read_cell_csvs(paths, *, repair: bool = True):
    """Read several GeoEstimation cell files (e.g. cells_50_5000/2000/1000) as one CellHierarchy,
    coarsest first. tau_max comes from a `cells_<tau_min>_<tau_max>` file name, else from the
    largest count. Returns (hierarchy, {file name: repairs}); check `hierarchy.nesting()`."""
    from geoalign.geo.s2.hierarchy import CellHierarchy

    parts: list[Partition] = []
    repairs: dict[str, list[TokenRepair]] = {}
    tau_min: set[int] = set()
    for path in map(Path, paths):
        part, fixes = read_cell_csv(path, repair=repair)
        found = _TAU_IN_NAME.search(path.name)
        if found:
            tau_min.add(int(found.group(1)))
        part.tau_max = int(found.group(2)) if found else int(part.counts.max(initial=0))
        part.name = f"tau{part.tau_max}"
        parts.append(part)
        repairs[path.name] = fixes
    parts.sort(key=lambda p: -(p.tau_max or 0))
    params = {
        "source": [str(p) for p in paths],
        "tau_max": [p.tau_max for p in parts],
        **({"tau_min": tau_min.pop()} if len(tau_min) == 1 else {}),
    }
    return CellHierarchy(parts, params), repairs
