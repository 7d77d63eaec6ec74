"""Where tests find real reference data, inside the repository first.

The published MP-16 cell files ship in `tests/data/` (gzipped) and the benchmark label CSVs ship in
the package (`src/geoalign/assets/reference/`), both MIT-licensed (see tests/data/README.md), so the
tests that need them run on a fresh clone. `SHARED_DATA` is the project's optional shared folder
(`shared/data` beside the clone, as CI lays it out, else the workplace copy); set
GEOALIGN_TEST_SHARED_DATA to point elsewhere (an empty folder hides it). Tests that need a file only
found there call `shared_file`, which skips with the reason when it is absent.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
TEST_DATA = TESTS / "data"
PACKAGED_REFERENCE = TESTS.parent / "src" / "geoalign" / "assets" / "reference"
SHARED_ENV = "GEOALIGN_TEST_SHARED_DATA"

_CANDIDATES = [TESTS.parents[1] / "shared" / "data"]  # ../shared beside the clone
SHARED_DATA = (
    Path(os.environ[SHARED_ENV])
    if os.environ.get(SHARED_ENV)
    else next((p for p in _CANDIDATES if p.is_dir()), _CANDIDATES[0])
)


def reference_file(name: str) -> Path:
    """The in-repository copy of published file `name` (e.g. "im2gps3k_places365.csv"): the
    packaged label CSV, or the gzipped copy in tests/data. pandas reads either form."""
    for folder in (PACKAGED_REFERENCE, TEST_DATA):
        for candidate in (folder / name, folder / f"{name}.gz"):
            if candidate.is_file():
                return candidate
    raise FileNotFoundError(f"{name} is not shipped in the repository (tests/data/README.md)")


def mp16_cells(tau_max: int) -> Path:
    """The published MP-16 partition file with tau_max 5000, 2000 or 1000 (tests/data, gzipped)."""
    return reference_file(f"cells_50_{tau_max}_copy.csv")


def shared_file(name: str) -> Path:
    """`name` in the shared data folder; skips the calling test when the folder lacks it."""
    path = SHARED_DATA / name
    if not path.exists():
        pytest.skip(f"{path} absent (shared reference data not present; set {SHARED_ENV})")
    return path


def published_sha256() -> dict[str, str]:
    """SHA-256 of each published file as released, from tests/data/published.sha256."""
    lines = (TEST_DATA / "published.sha256").read_text().splitlines()
    return {name: digest for digest, name in (line.split() for line in lines if line.strip())}


def content_sha256(path: Path) -> str:
    """SHA-256 of a file's content (of the decompressed bytes for a .gz)."""
    import gzip

    data = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    return hashlib.sha256(data).hexdigest()
