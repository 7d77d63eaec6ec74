"""Image manifests: a table of image path (or id), latitude, longitude and optional split / group.

Every training, extraction and evaluation run starts from a manifest, so this is where bad rows are
found. Each problem is reported by its row number in the file -- 1-based, header not counted (the
first data row is row 1) -- together with the reason, and training refuses a manifest with errors
unless told to skip them, in which case the skipped rows are written to a file for the user to fix.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from geoalign.data.tables import read_table, resolve_columns, table_columns, table_kind
from geoalign.errors import DataError, shown
from geoalign.geo.coords import LONGITUDE_WRAPPED, check_coordinates
from geoalign.io_atomic import atomic_output

ROW_CONVENTION = "rows are 1-based data rows; the header is not counted"

# Reasons besides the coordinate ones (geo.coords). Errors make a row unusable.
EMPTY_PATH = "empty_path"
MISSING_FILE = "missing_file"
DUPLICATE_IMAGE = "duplicate_image"
DUPLICATE_ROW = "duplicate_row"


@dataclass(frozen=True)
class ManifestIssue:
    """One problem in one row. `row` is 1-based and does not count the header."""

    row: int
    reason: str
    message: str
    severity: Literal["error", "warning"] = "error"

    def __str__(self) -> str:
        return f"row {self.row}: {self.message}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "row": self.row,
            "reason": self.reason,
            "severity": self.severity,
            "message": self.message,
        }


@dataclass
class ManifestReport:
    """Every problem found in a manifest, in file order."""

    source: str
    n_rows: int
    issues: list[ManifestIssue]
    columns: dict[str, str]
    image_root: str | None = None
    checked_files: bool = False

    @property
    def errors(self) -> list[ManifestIssue]:
        return [i for i in self.issues if i.severity == "error"]

    @property
    def warnings(self) -> list[ManifestIssue]:
        return [i for i in self.issues if i.severity == "warning"]

    @property
    def ok(self) -> bool:
        """True when no row has an error (warnings are allowed)."""
        return not any(i.severity == "error" for i in self.issues)

    @property
    def bad_rows(self) -> list[int]:
        """Rows (1-based, header not counted) with at least one error."""
        return sorted({i.row for i in self.issues if i.severity == "error"})

    def counts(self, severity: str | None = None) -> dict[str, int]:
        """Number of issues per reason, most frequent first."""
        c = Counter(i.reason for i in self.issues if severity is None or i.severity == severity)
        return dict(c.most_common())

    def describe(self, max_rows: int = 10) -> str:
        """A plain-text summary for error messages and logs."""
        errors = self.errors
        if not errors:
            head = f"{self.source}: {self.n_rows} rows, no errors"
            if self.warnings:
                head += f", {len(self.warnings)} warnings ({_fmt_counts(self.counts('warning'))})"
            return head
        lines = [
            f"{self.source}: {len(self.bad_rows)} of {self.n_rows} rows have errors "
            f"({ROW_CONVENTION}): {_fmt_counts(self.counts('error'))}"
        ]
        lines += [f"  {issue}" for issue in errors[:max_rows]]
        if len(errors) > max_rows:
            lines.append(f"  ... and {len(errors) - max_rows} more")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "row_convention": ROW_CONVENTION,
            "n_rows": self.n_rows,
            "ok": self.ok,
            "n_bad_rows": len(self.bad_rows),
            "columns": self.columns,
            "image_root": self.image_root,
            "checked_files": self.checked_files,
            "error_counts": self.counts("error"),
            "warning_counts": self.counts("warning"),
            "issues": [i.to_dict() for i in self.issues],
        }

    def write_json(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_output(path) as tmp:
            tmp.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return path


def _fmt_counts(counts: Mapping[str, int]) -> str:
    return ", ".join(f"{n} {reason}" for reason, n in counts.items())


# ----------------------------------------------------------------------------------------------
# Validation


def _text(series: pd.Series) -> np.ndarray:
    """Values as stripped strings; missing values become ''. (Object-dtype string ops: converting
    a million values to Arrow strings and back costs seconds.)"""
    if len(series) == 0:
        return np.array([], dtype=object)
    obj = series.astype(object).where(~series.isna().to_numpy(), "")
    return obj.map(str).str.strip().to_numpy(dtype=object)


def _coordinate_issues(
    lat_s: pd.Series, lon_s: pd.Series, rows: np.ndarray
) -> tuple[np.ndarray, np.ndarray, list[ManifestIssue]]:
    """The one coordinate check (geo.coords), its issues numbered by the manifest's rows."""
    check = check_coordinates(lat_s, lon_s)
    issues = [
        ManifestIssue(int(rows[i.index]), i.reason, i.message, severity=i.severity)
        for i in check.issues
    ]
    return check.lat, check.lon, issues


def _duplicate_issues(
    frame: pd.DataFrame, images: np.ndarray, rows: np.ndarray
) -> list[ManifestIssue]:
    """Later copies of an image are errors: `duplicate_row` when the whole row repeats an earlier
    one, else `duplicate_image`. Only rows sharing an image are compared column by column (whole
    rows can only repeat if their images do), which keeps million-row manifests fast."""
    img = pd.Series(images, dtype=object)
    shared = img.duplicated(keep=False).to_numpy() & (images != "")
    if not shared.any():
        return []
    pos = np.flatnonzero(shared)
    sub = frame.iloc[pos]
    try:
        hashed = pd.util.hash_pandas_object(sub, index=False).to_numpy()
    except TypeError:  # unhashable cells (lists in a Parquet column): compare as text
        hashed = pd.util.hash_pandas_object(sub.astype(str), index=False).to_numpy()
    sub_rows = pd.Series(rows[pos])
    first_img = sub_rows.groupby(images[pos]).transform("min").to_numpy()
    first_same = sub_rows.groupby(hashed).transform("min").to_numpy()
    issues: list[ManifestIssue] = []
    for j, i in enumerate(pos):
        row = int(rows[i])
        if first_same[j] != row:
            issues.append(ManifestIssue(row, DUPLICATE_ROW, f"duplicate of row {first_same[j]}"))
        elif first_img[j] != row:
            issues.append(
                ManifestIssue(
                    row,
                    DUPLICATE_IMAGE,
                    f"image {shown(images[i])} is also listed at row {first_img[j]}",
                )
            )
    return issues


def _resolve_path(root: str, image: str) -> str:
    return image if os.path.isabs(image) else os.path.join(root, image)


def _file_issues(
    images: np.ndarray, rows: np.ndarray, root: Path, exists: np.ndarray | None
) -> list[ManifestIssue]:
    root_s = str(root)
    if exists is None:
        exists = np.fromiter(
            (img == "" or os.path.isfile(_resolve_path(root_s, img)) for img in images),
            dtype=bool,
            count=len(images),
        )
    return [
        ManifestIssue(
            int(rows[i]),
            MISSING_FILE,
            f"image file not found: {_resolve_path(root_s, images[i])}",
        )
        for i in np.flatnonzero(~exists & (images != ""))
    ]


# ----------------------------------------------------------------------------------------------
# The manifest


@dataclass
class Manifest:
    """A validated manifest: `frame` has columns row, image, lat, lon[, split, group] + extras.

    `row` is the row number in the source file (1-based, header not counted), kept through
    filtering so every later message can point back at the file. Longitudes are in [-180, 180);
    rows with coordinate errors hold NaN until `clean` drops them.
    """

    frame: pd.DataFrame
    image_root: Path | None = None
    source: Path | None = None
    report: ManifestReport | None = None
    columns: dict[str, str] = field(default_factory=dict)

    # -- construction -----------------------------------------------------------------------
    @classmethod
    def from_frame(
        cls,
        frame: pd.DataFrame,
        *,
        image_root: str | Path | None = None,
        columns: Mapping[str, str] | None = None,
        source: str | Path | None = None,
        check_files: bool = False,
        require_image: bool = True,
        rows: np.ndarray | None = None,
        file_exists: np.ndarray | None = None,
    ) -> Manifest:
        """Validate an in-memory table (any supported column spelling) into a Manifest.

        `rows` overrides the row numbers used in messages (default 1..N); `file_exists` passes a
        precomputed existence mask so callers that already looked for the files do not stat twice.
        """
        name = str(source) if source is not None else "<table>"
        mapping = resolve_columns(frame.columns, columns, source=name, require_image=require_image)
        n = len(frame)
        rows = np.arange(1, n + 1, dtype=np.int64) if rows is None else np.asarray(rows, np.int64)
        if "image" in mapping:
            images = _text(frame[mapping["image"]])
        else:
            images = np.array([str(r - 1) for r in rows], dtype=object)
        lat, lon, issues = _coordinate_issues(frame[mapping["lat"]], frame[mapping["lon"]], rows)
        if "image" in mapping:
            issues += [
                ManifestIssue(int(rows[i]), EMPTY_PATH, "image path is empty")
                for i in np.flatnonzero(images == "")
            ]
            issues += _duplicate_issues(frame, images, rows)
        root = Path(image_root) if image_root is not None else None
        if root is None and source is not None and Path(source).suffix:
            root = Path(source).resolve().parent
        if check_files and "image" in mapping:
            issues += _file_issues(
                images, rows, root if root is not None else Path.cwd(), file_exists
            )
        issues.sort(key=lambda i: (i.row, i.severity != "error", i.reason))

        data: dict[str, Any] = {"row": rows, "image": images, "lat": lat, "lon": lon}
        for key in ("split", "group"):
            if key in mapping:
                data[key] = frame[mapping[key]].to_numpy()
        used = set(mapping.values())
        for col in frame.columns:
            if str(col) in used:
                continue
            out = str(col)
            while out in data:
                out = f"{out}_"
            data[out] = frame[col].to_numpy()
        canon = pd.DataFrame(data)
        canon["image"] = canon["image"].astype(object)
        report = ManifestReport(
            source=name,
            n_rows=n,
            issues=issues,
            columns=dict(mapping),
            image_root=str(root) if root is not None else None,
            checked_files=bool(check_files and "image" in mapping),
        )
        wrapped = sum(1 for i in issues if i.reason == LONGITUDE_WRAPPED)
        if wrapped:
            first = next(i.row for i in issues if i.reason == LONGITUDE_WRAPPED)
            warnings.warn(
                f"{name}: {wrapped} longitudes in (180, 360] were wrapped to [-180, 180) "
                f"(first at row {first}; {ROW_CONVENTION})",
                stacklevel=2,
            )
        return cls(
            frame=canon,
            image_root=root,
            source=Path(source) if source else None,
            report=report,
            columns=dict(mapping),
        )

    # -- access -------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.frame)

    @property
    def images(self) -> np.ndarray:
        """Image paths (or ids) as written in the file, relative to `image_root` unless absolute."""
        return self.frame["image"].to_numpy(dtype=object)

    @property
    def rows(self) -> np.ndarray:
        return self.frame["row"].to_numpy(dtype=np.int64)

    def coords(self) -> np.ndarray:
        """(N, 2) float64 array of latitude, longitude (degrees; longitude in [-180, 180))."""
        return self.frame[["lat", "lon"]].to_numpy(dtype=np.float64)

    def path(self, i: int) -> Path:
        root = str(self.image_root) if self.image_root is not None else ""
        return Path(_resolve_path(root, str(self.frame["image"].iat[i])))

    def paths(self) -> list[Path]:
        root = str(self.image_root) if self.image_root is not None else ""
        return [Path(_resolve_path(root, img)) for img in self.images]

    def subset(self, mask_or_index: Any) -> Manifest:
        """Rows selected by a boolean mask or positional indices (row numbers are kept)."""
        sel = np.asarray(mask_or_index)
        frame = self.frame[sel] if sel.dtype == bool else self.frame.iloc[sel]
        return Manifest(
            frame=frame.reset_index(drop=True),
            image_root=self.image_root,
            source=self.source,
            report=self.report,
            columns=dict(self.columns),
        )

    def split(self, name: str) -> Manifest:
        if "split" not in self.frame.columns:
            raise DataError(f"{self.source or '<table>'}: the manifest has no split column")
        return self.subset((self.frame["split"].astype(str) == name).to_numpy())

    def content_hash(self) -> str:
        """Identifies the data a feature store was built from (see `content_hash`)."""
        return content_hash(self.images, self.coords())

    def save(self, path: str | Path) -> Path:
        """Write the canonical table (CSV, or Parquet by suffix)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_output(path) as tmp:
            if table_kind(path) == "parquet":
                self.frame.to_parquet(tmp, index=False)
            else:
                self.frame.to_csv(tmp, index=False)
        return path

    # -- cleaning -----------------------------------------------------------------------------
    def clean(
        self,
        on_error: Literal["raise", "skip"] = "raise",
        skipped_path: str | Path | None = None,
    ) -> Manifest:
        """Return the manifest without bad rows, or refuse it.

        on_error="raise" raises DataError listing the bad rows; "skip" drops every row with an
        error and writes them (row number, reasons, values) to `skipped_path` -- by default
        `<manifest>.skipped.csv` next to the manifest.
        """
        if on_error not in ("raise", "skip"):
            raise ValueError(f"on_error must be 'raise' or 'skip', not {on_error!r}")
        report = self.report
        if report is None:
            report = Manifest.from_frame(
                self.frame[["image", "lat", "lon"]], image_root=self.image_root, rows=self.rows
            ).report
            assert report is not None
        present = set(self.rows.tolist())
        if not present & set(report.bad_rows):  # the report may cover rows subset() dropped
            return self
        if on_error == "raise":
            raise DataError(
                report.describe()
                + "\nFix these rows, or skip them (on_error='skip', CLI --skip-bad-rows); "
                "skipped rows are written to a CSV file."
            )
        bad = set(report.bad_rows) & present
        keep = ~self.frame["row"].isin(bad).to_numpy()
        if not keep.all():
            if skipped_path is None:
                if self.source is None:
                    raise ValueError("skipped_path is required for a manifest without a source")
                skipped_path = self.source.with_name(self.source.name + ".skipped.csv")
            write_skipped(
                self.frame[~keep], [i for i in report.errors if i.row in bad], skipped_path
            )
            warnings.warn(
                f"{report.source}: skipped {int((~keep).sum())} of {len(keep)} rows with errors "
                f"({_fmt_counts(report.counts('error'))}); they are listed in {skipped_path}",
                stacklevel=2,
            )
        kept_report = ManifestReport(
            source=report.source,
            n_rows=int(keep.sum()),
            issues=[i for i in report.issues if i.row in present and i.row not in bad],
            columns=report.columns,
            image_root=report.image_root,
            checked_files=report.checked_files,
        )
        out = self.subset(keep)
        out.report = kept_report
        return out


def content_hash(images: Iterable[Any], coords: np.ndarray) -> str:
    """SHA-256 of an image list and its (N, 2) coordinates, independent of column order, extra
    columns or file format; stored with extracted features so a mismatch is caught on reuse."""
    h = hashlib.sha256(b"geoalign-manifest-v1\n")
    h.update("\n".join(map(str, images)).encode("utf-8"))
    h.update(b"\0")
    h.update(np.ascontiguousarray(coords, dtype="<f8").tobytes())
    return h.hexdigest()


def write_skipped(frame: pd.DataFrame, errors: list[ManifestIssue], path: str | Path) -> Path:
    """Write skipped rows with their reasons, so the user can fix and re-add them."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    reasons: dict[int, list[ManifestIssue]] = {}
    for issue in errors:
        reasons.setdefault(issue.row, []).append(issue)
    out = frame.copy()
    out.insert(1, "reasons", [";".join(i.reason for i in reasons.get(r, [])) for r in out["row"]])
    out.insert(2, "details", ["; ".join(i.message for i in reasons.get(r, [])) for r in out["row"]])
    with atomic_output(path) as tmp:
        out.to_csv(tmp, index=False)
    return path


# ----------------------------------------------------------------------------------------------
# Entry points


def load_manifest(
    path: str | Path,
    *,
    image_root: str | Path | None = None,
    columns: Mapping[str, str] | None = None,
    check_files: bool = False,
) -> Manifest:
    """Read a CSV/TSV/Parquet manifest into a Manifest (bad rows are reported, not raised).

    Relative image paths are resolved against `image_root`, by default the manifest's folder.
    Call `.clean()` before training: it refuses (or skips) rows with errors.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: manifest not found")
    mapping = resolve_columns(table_columns(path), columns, source=str(path))
    # The image column is read as text (ids must not become floats). Coordinates are left to the
    # parser: a column with any unparseable value stays text and is checked value by value.
    frame = read_table(path, string_columns=[mapping["image"]])
    return Manifest.from_frame(
        frame, image_root=image_root, columns=mapping, source=path, check_files=check_files
    )


def check_manifest(
    path: str | Path,
    *,
    image_root: str | Path | None = None,
    check_files: bool = True,
    columns: Mapping[str, str] | None = None,
) -> ManifestReport:
    """Find every bad row of a manifest (coordinates, paths, duplicates, and missing files)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # wrapped longitudes are in the report already
        manifest = load_manifest(
            path, image_root=image_root, columns=columns, check_files=check_files
        )
    assert manifest.report is not None
    return manifest.report
