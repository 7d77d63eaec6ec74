"""The evaluation benchmarks: where their label files come from, how they name images, how many rows.

Each benchmark reads its label file as published (no conversion step for the user), finds the photos
under the folder the user points at, and says exactly what is missing when something is: which label
file names were looked for and where, and how many of the expected images are absent, with examples.
No photos ship with geoalign; the scene-label CSVs of Im2GPS, Im2GPS3k and YFCC26k (MIT-licensed, from
ShramanPramanick/Transformer_Based_Geo-localization) are packaged for examples: `reference_labels`.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from geoalign.data.manifest import MISSING_FILE, Manifest
from geoalign.data.tables import read_table, resolve_columns
from geoalign.errors import DataError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".JPG", ".JPEG", ".PNG")
_SAMPLE = 64  # names probed per candidate folder to pick the images folder

LabelReader = Callable[[Path], tuple[pd.DataFrame, dict[str, str]]]


# ----------------------------------------------------------------------------------------------
# Label readers: each returns the table as published and which columns hold image, lat, lon.


def _read_places365(path: Path) -> tuple[pd.DataFrame, dict[str, str]]:
    """Transformer_Based_Geo-localization CSV: IMG_ID, AUTHOR, LAT, LON, S3_Label, ... ."""
    frame = read_table(path, string_columns=["IMG_ID"])
    return frame, resolve_columns(frame.columns, None, source=str(path))


# YFCC100M metadata as distributed with YFCC4k (yfcc4k.txt, Vo et al. 2017): tab-separated, no
# header. The multimedia-commons copy of YFCC100M prepends a line number and a hash (25 columns);
# the original Webscope dump has 23.
_YFCC100M_23 = (
    "photo_id user_nsid user_nickname date_taken date_uploaded capture_device title description "
    "user_tags machine_tags longitude latitude accuracy page_url download_url license_name "
    "license_url server_id farm_id secret secret_original extension marker"
).split()
_YFCC100M_25 = ["line_number", "photo_id", "hash", *_YFCC100M_23[1:]]


def _read_yfcc100m_tsv(path: Path) -> tuple[pd.DataFrame, dict[str, str]]:
    try:
        frame = pd.read_csv(path, sep="\t", header=None, dtype=str, quoting=csv.QUOTE_NONE)
    except Exception as err:
        raise DataError(
            f"{path}: cannot be read as YFCC100M tab-separated metadata: {err}"
        ) from err
    layouts = {23: _YFCC100M_23, 25: _YFCC100M_25}
    if frame.shape[1] not in layouts:
        raise DataError(
            f"{path}: expected YFCC100M metadata with 23 or 25 tab-separated columns "
            f"(photo id, ..., longitude, latitude, ...); found {frame.shape[1]}"
        )
    frame.columns = layouts[frame.shape[1]]
    if not frame["photo_id"].astype(str).str.fullmatch(r"\d+").all():
        bad = int(np.flatnonzero(~frame["photo_id"].astype(str).str.fullmatch(r"\d+"))[0]) + 1
        raise DataError(
            f"{path}: line {bad}: the photo id column does not hold a numeric Flickr id"
        )
    frame.insert(0, "image", frame["photo_id"] + ".jpg")
    return frame, {"image": "image", "lat": "latitude", "lon": "longitude"}


def _read_id_csv(path: Path) -> tuple[pd.DataFrame, dict[str, str]]:
    """A CSV with an image id or file name column plus lat/lon (any accepted spelling)."""
    columns = pd.read_csv(path, nrows=0).columns
    mapping = resolve_columns(columns, None, source=str(path))
    frame = read_table(path, string_columns=[mapping["image"]])
    return frame, mapping


def _read_yfcc4k(path: Path) -> tuple[pd.DataFrame, dict[str, str]]:
    if path.suffix.lower() == ".txt":
        return _read_yfcc100m_tsv(path)
    return _read_id_csv(path)


def _read_osv5m(path: Path) -> tuple[pd.DataFrame, dict[str, str]]:
    """OSV-5M test.csv: id, latitude, longitude, thumb_original_url, country, ... ; image <id>.jpg.

    Ids are 15-16 digit integers: they are read as text, since float64 would corrupt them."""
    frame = read_table(path, string_columns=["id"])
    if "id" not in frame.columns:
        raise DataError(
            f"{path}: OSV-5M labels need an 'id' column; columns are {list(frame.columns)}"
        )
    frame.insert(0, "image", frame["id"].astype(str).str.strip() + ".jpg")
    mapping = resolve_columns(
        frame.columns, {"image": "image", "lat": "latitude", "lon": "longitude"}, source=str(path)
    )
    return frame, mapping


# ----------------------------------------------------------------------------------------------
# Finding the photos


def _has_image_suffix(name: str) -> bool:
    return os.path.splitext(name)[1] in IMAGE_SUFFIXES or os.path.splitext(name)[1].lower() in {
        s.lower() for s in IMAGE_SUFFIXES
    }


def _candidates(name: str) -> list[str]:
    """A name with an image suffix is used as is; a bare id is tried with the usual suffixes."""
    return [name] if _has_image_suffix(name) else [name + s for s in IMAGE_SUFFIXES]


def _find_at(root: str, name: str) -> str | None:
    for cand in _candidates(name):
        if os.path.isfile(os.path.join(root, cand)):
            return cand
    return None


def locate_images(names: list[str], roots: list[Path]) -> tuple[Path, list[str], np.ndarray]:
    """Pick the folder holding the images and resolve each name to a path relative to it.

    Names are tried as relative paths first; any not found are looked up by file name anywhere
    below the chosen folder (archives often extract into an extra level of folders).
    Returns (folder, resolved names -- the expected name where not found, found mask).
    """
    existing = [r for r in roots if r.is_dir()]
    if not existing:
        return roots[0], list(names), np.zeros(len(names), dtype=bool)
    sample = [
        names[i] for i in np.linspace(0, len(names) - 1, min(_SAMPLE, len(names))).astype(int)
    ]
    hits = (
        [sum(_find_at(str(r), n) is not None for n in sample) for r in existing] if names else [0]
    )
    root = existing[int(np.argmax(hits))]
    root_s = str(root)
    resolved: list[str] = []
    found = np.zeros(len(names), dtype=bool)
    for i, name in enumerate(names):
        hit = _find_at(root_s, name)
        found[i] = hit is not None
        resolved.append(hit if hit is not None else name)
    if not found.all():
        by_name: dict[str, str] = {}
        for dirpath, _dirs, files in os.walk(root_s):
            rel_dir = os.path.relpath(dirpath, root_s)
            for f in files:
                by_name.setdefault(f, f if rel_dir == "." else os.path.join(rel_dir, f))
        for i in np.flatnonzero(~found):
            for cand in _candidates(os.path.basename(names[i])):
                if cand in by_name:
                    resolved[i] = by_name[cand]
                    found[i] = True
                    break
    return root, resolved, found


# ----------------------------------------------------------------------------------------------
# The registry


@dataclass
class BenchmarkStatus:
    """What was found when pointing a benchmark at a folder."""

    name: str
    images_dir: Path
    labels: Path | None
    labels_tried: list[Path]
    image_root: Path | None = None
    n_rows: int = 0
    expected_rows: int = 0
    n_found: int = 0
    missing: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.labels is not None and not self.missing

    def describe(self, examples: int = 5) -> str:
        lines = [f"{self.name} at {self.images_dir}:"]
        if self.labels is None:
            tried = ", ".join(str(p) for p in self.labels_tried)
            lines.append(f"  label file not found; looked for: {tried}")
            lines.append("  pass the label file explicitly (labels=..., CLI --labels FILE)")
            return "\n".join(lines)
        lines.append(
            f"  labels: {self.labels} ({self.n_rows} rows; published: {self.expected_rows})"
        )
        lines.append(f"  images: {self.image_root}")
        if self.missing:
            shown = ", ".join(self.missing[:examples])
            lines.append(
                f"  {len(self.missing)} of {self.n_rows} images missing (e.g. {shown}); "
                f"{self.n_found} found"
            )
        else:
            lines.append(f"  all {self.n_found} images found")
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


@dataclass(frozen=True)
class Benchmark:
    """One benchmark: its label file(s) as published, image naming, and expected size."""

    name: str
    title: str
    expected_rows: int
    label_files: tuple[str, ...]
    image_subdirs: tuple[str, ...]
    naming: str
    label_format: str
    reader: LabelReader
    aliases: tuple[str, ...] = ()
    reference_asset: str | None = None
    notes: str = ""

    def find_labels(self, images_dir: str | Path) -> tuple[Path | None, list[Path]]:
        """Look for the label file in the folder, its parent and grandparent (first match wins)."""
        base = Path(images_dir).expanduser().resolve()
        tried: list[Path] = []
        for folder in (base, base.parent, base.parent.parent):
            for fname in self.label_files:
                path = folder / fname
                if path in tried:
                    continue
                tried.append(path)
                if path.is_file():
                    return path, tried
        return None, tried

    def read_labels(self, labels: str | Path) -> tuple[pd.DataFrame, dict[str, str]]:
        return self.reader(Path(labels))

    def _scan(
        self, images_dir: str | Path, labels: str | Path | None
    ) -> tuple[BenchmarkStatus, pd.DataFrame | None, dict[str, str], np.ndarray | None]:
        images_dir = Path(images_dir).expanduser().resolve()
        if labels is not None:
            label_path: Path | None = Path(labels)
            if not label_path.is_file():
                raise DataError(f"{self.title}: label file {label_path} not found")
            tried = [label_path]
        else:
            label_path, tried = self.find_labels(images_dir)
        status = BenchmarkStatus(
            name=self.title,
            images_dir=images_dir,
            labels=label_path,
            labels_tried=tried,
            expected_rows=self.expected_rows,
        )
        if label_path is None:
            return status, None, {}, None
        frame, mapping = self.read_labels(label_path)
        names = frame[mapping["image"]].astype("string").fillna("").str.strip().tolist()
        roots = [images_dir / s for s in self.image_subdirs if s] + [images_dir]
        root, resolved, found = locate_images(names, roots)
        frame = frame.copy()
        frame[mapping["image"]] = resolved
        status.image_root = root
        status.n_rows = len(frame)
        status.n_found = int(found.sum())
        status.missing = [resolved[i] for i in np.flatnonzero(~found)]
        if len(frame) != self.expected_rows:
            status.notes.append(
                f"the label file has {len(frame)} rows; the published {self.title} has "
                f"{self.expected_rows}"
            )
        if self.notes:
            status.notes.append(self.notes)
        return status, frame, mapping, found

    def verify(self, images_dir: str | Path, labels: str | Path | None = None) -> BenchmarkStatus:
        """Report what is present and what is missing, without raising for missing data."""
        return self._scan(images_dir, labels)[0]

    def load(
        self,
        images_dir: str | Path,
        labels: str | Path | None = None,
        *,
        on_missing: Literal["raise", "skip", "keep"] = "raise",
    ) -> Manifest:
        """Read the labels as published and return a Manifest whose paths point at the photos.

        on_missing: "raise" (default) refuses a partial benchmark, naming what is missing;
        "skip" drops rows whose image is absent; "keep" keeps them (reported as missing_file).
        """
        status, frame, mapping, found = self._scan(images_dir, labels)
        if frame is None or found is None:
            raise DataError(status.describe())
        if status.missing and on_missing == "raise":
            raise DataError(
                status.describe() + "\n  load a partial benchmark with on_missing='skip' "
                "(results are then not comparable to published numbers)"
            )
        manifest = Manifest.from_frame(
            frame,
            image_root=status.image_root,
            columns=mapping,
            source=status.labels,
            check_files=True,
            file_exists=found,
        )
        if on_missing == "skip" and status.missing:
            report = manifest.report
            assert report is not None
            manifest = manifest.subset(found)
            manifest.report = replace(
                report,
                n_rows=len(manifest),
                issues=[i for i in report.issues if i.reason != MISSING_FILE],
            )
        return manifest


_REFERENCE = "Transformer_Based_Geo-localization (ShramanPramanick), as used by GeoCLIP and G3"

BENCHMARKS: dict[str, Benchmark] = {
    b.name: b
    for b in (
        Benchmark(
            name="im2gps",
            title="Im2GPS",
            expected_rows=237,
            label_files=("im2gps_places365.csv", "im2gps.csv"),
            image_subdirs=("im2gps", "images", "img"),
            naming="IMG_ID is the file name, e.g. 104123223_7410c654ba_19_19355699@N00.jpg",
            label_format=f"CSV IMG_ID, AUTHOR, LAT, LON, S3_Label, ... from {_REFERENCE}",
            reader=_read_places365,
            reference_asset="im2gps_places365.csv",
        ),
        Benchmark(
            name="im2gps3k",
            title="Im2GPS3k",
            expected_rows=2997,
            label_files=("im2gps3k_places365.csv", "im2gps3k.csv"),
            image_subdirs=("im2gps3ktest", "im2gps3k", "images", "img"),
            naming="IMG_ID is the file name, e.g. 1000269685_e60e9cdfb4_1125_78841376@N00.jpg",
            label_format=f"CSV IMG_ID, AUTHOR, LAT, LON, S3_Label, ... from {_REFERENCE}",
            reader=_read_places365,
            aliases=("im2gps-3k",),
            reference_asset="im2gps3k_places365.csv",
        ),
        Benchmark(
            name="yfcc4k",
            title="YFCC4k",
            expected_rows=4536,
            label_files=("yfcc4k.txt", "yfcc4k_places365.csv", "yfcc4k.csv"),
            image_subdirs=("yfcc4k", "images", "img"),
            naming="<Flickr photo id>.jpg, e.g. 10201275523.jpg",
            label_format=(
                "yfcc4k.txt as released with Vo et al. 2017 (YFCC100M metadata, tab-separated, no "
                "header: [line number, photo id, hash,] ..., longitude, latitude, ...); also the "
                "CSV forms used by G3 (yfcc4k_places365.csv) and MP16-Pro/G3 (yfcc4k.csv: IMG_ID, "
                "LAT, LON, ...)"
            ),
            reader=_read_yfcc4k,
            aliases=("yfcc-4k",),
        ),
        Benchmark(
            name="yfcc26k",
            title="YFCC26k",
            expected_rows=25600,
            label_files=("yfcc25600_places365.csv", "yfcc26k_places365.csv", "yfcc26k.csv"),
            image_subdirs=("yfcc25600", "yfcc26k", "images", "img"),
            naming="IMG_ID is a relative path in two-level folders, e.g. 45/77/3228511372.jpg "
            "(a flat folder of <id>.jpg also works)",
            label_format=f"CSV IMG_ID, AUTHOR, LAT, LON, S3_Label, ... from {_REFERENCE}",
            reader=_read_places365,
            aliases=("yfcc25600", "yfcc-26k", "yfcc25k"),
            reference_asset="yfcc25600_places365.csv.gz",
        ),
        Benchmark(
            name="gws15k",
            title="GWS15k",
            expected_rows=15000,
            label_files=("gws15k.csv", "metadata.csv"),
            image_subdirs=("gws15k", "images", "img"),
            naming="image id column + .jpg/.jpeg/.png (ids with a suffix are used as is)",
            label_format=(
                "no official release; a CSV with an image id column and lat/lon, e.g. the "
                "metadata.csv (image_id, city, country, lat, lon, heading) of the community "
                "re-creation wp4032/gws15k"
            ),
            reader=_read_id_csv,
            aliases=("gws-15k", "google-world-streets-15k"),
            notes=(
                "GWS15k (Clark et al. 2023) was never released publicly; numbers are comparable "
                "only on the original panorama set"
            ),
        ),
        Benchmark(
            name="osv5m-test",
            title="OSV-5M test",
            expected_rows=210122,
            label_files=("test.csv", "osv5m_test.csv"),
            image_subdirs=("images/test", "test/test", "test", "images"),
            naming="<id>.jpg; images/test/00.zip..04.zip may extract into sub-folders "
            "(found recursively)",
            label_format="test.csv from huggingface.co/datasets/osv5m/osv5m: id, latitude, "
            "longitude, thumb_original_url, country, ...",
            reader=_read_osv5m,
            aliases=("osv5m", "osv-5m", "osv-5m-test", "osv5m_test"),
        ),
    )
}


def _key(name: str) -> str:
    return name.strip().lower().replace("_", "-")


def list_benchmarks() -> list[Benchmark]:
    return list(BENCHMARKS.values())


def get_benchmark(name: str) -> Benchmark:
    """Look a benchmark up by name or alias (case-insensitive)."""
    key = _key(name)
    for bench in BENCHMARKS.values():
        if key == _key(bench.name) or key in {_key(a) for a in bench.aliases}:
            return bench
    known = ", ".join(BENCHMARKS)
    raise DataError(f"unknown benchmark {name!r}; known benchmarks: {known}")


# ----------------------------------------------------------------------------------------------
# Packaged reference labels


REFERENCE_PACKAGE = "geoalign"
REFERENCE_DIR = ("assets", "reference")


def reference_labels(name: str) -> pd.DataFrame:
    """The packaged label CSV of Im2GPS, Im2GPS3k or YFCC26k, as published (with scene labels).

    From ShramanPramanick/Transformer_Based_Geo-localization (MIT; the licence ships alongside).
    Columns: IMG_ID, AUTHOR, LAT, LON, S3_Label, S16_Label, S365_Label, Prob_indoor,
    Prob_natural, Prob_urban.
    """
    bench = get_benchmark(name)
    if bench.reference_asset is None:
        have = [b.name for b in BENCHMARKS.values() if b.reference_asset]
        raise DataError(f"no packaged labels for {bench.title}; packaged: {', '.join(have)}")
    resource = resources.files(REFERENCE_PACKAGE).joinpath(*REFERENCE_DIR, bench.reference_asset)
    with resources.as_file(resource) as path:
        if not path.is_file():
            raise DataError(f"packaged labels missing from the installation: {path}")
        return pd.read_csv(path)


def reference_columns() -> Mapping[str, str]:
    """Column roles of the packaged reference CSVs (for Manifest.from_frame)."""
    return {"image": "IMG_ID", "lat": "LAT", "lon": "LON", "group": "AUTHOR"}
