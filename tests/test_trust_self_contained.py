"""The fast suite needs nothing outside the repository: shipped reference files are the published
ones, and the modules that read reference data pass (or skip with a reason) with the shared folder
hidden."""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from _shared import (  # noqa: E402
    SHARED_ENV,
    TEST_DATA,
    TESTS,
    content_sha256,
    mp16_cells,
    published_sha256,
    shared_file,
)

TAUS = (5000, 2000, 1000)


@pytest.mark.parametrize("tau", TAUS)
def test_shipped_cell_files_are_the_published_ones(tau: int) -> None:
    path = mp16_cells(tau)
    assert path.parent == TEST_DATA and path.stat().st_size < 400_000  # small files only
    assert content_sha256(path) == published_sha256()[f"cells_50_{tau}_copy.csv"]


@pytest.mark.parametrize("tau", TAUS)
def test_recorded_cell_hashes_are_those_of_the_shared_copies(tau: int) -> None:
    name = f"cells_50_{tau}_copy.csv"
    assert content_sha256(shared_file(name)) == published_sha256()[name]


def test_test_data_records_licence_and_source_of_every_file() -> None:
    readme = (TEST_DATA / "README.md").read_text()
    assert (TEST_DATA / "LICENSE-Transformer_Based_Geo-localization").read_text().startswith("MIT")
    for path in TEST_DATA.iterdir():
        if path.name not in {"README.md", "published.sha256"} and not path.name.startswith("."):
            assert f"`{path.name}`" in readme, f"tests/data/README.md does not describe {path.name}"
    assert not any(p.suffix.lower() in {".jpg", ".jpeg", ".png"} for p in TEST_DATA.rglob("*"))


def _test_modules() -> list[Path]:
    return sorted(p for p in TESTS.glob("test_*.py") if p.name != Path(__file__).name)


def test_no_test_names_a_path_outside_the_repository() -> None:
    """Only tests/_shared.py may know where the shared folder lives."""
    pattern = re.compile(r"/work/|shared/data|\.\./shared")
    offenders = [p.name for p in _test_modules() if pattern.search(p.read_text())]
    assert offenders == []


def _names(node: ast.AST) -> set[str]:
    """Every name a statement reads, and the parameters (fixtures) of a function."""
    return {n.id for n in ast.walk(node) if isinstance(n, ast.Name)} | {
        n.arg for n in ast.walk(node) if isinstance(n, ast.arg)
    }


def _tests_reading_reference_data(path: Path) -> list[str]:
    """Node ids of the tests of `path` that use a `_shared` helper, directly or through a
    module-level name or fixture built from one (found statically, so only those run again)."""
    tree = ast.parse(path.read_text())
    tainted = {
        alias.asname or alias.name
        for node in tree.body
        if isinstance(node, ast.ImportFrom) and node.module == "_shared"
        for alias in node.names
    }
    funcs = {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef)}
    assigns = [n for n in tree.body if isinstance(n, (ast.Assign, ast.AnnAssign))]
    size = -1
    while size != len(tainted):  # grow to a fixed point: FILES = [...] -> fixture mp16 -> tests
        size = len(tainted)
        for node in assigns:
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if _names(node.value or ast.Constant(None)) & tainted:
                tainted |= {t.id for t in targets if isinstance(t, ast.Name)}
        for name, func in funcs.items():
            if not name.startswith("test_") and _names(func) & tainted:
                tainted.add(name)
    return [
        f"{path}::{name}"
        for name, func in funcs.items()
        if name.startswith("test_") and _names(func) & tainted
    ]


def test_reference_data_tests_pass_with_the_shared_folder_hidden(tmp_path: Path) -> None:
    users = [p for p in _test_modules() if re.search(r"^from _shared import", p.read_text(), re.M)]
    assert len(users) >= 4
    selected = [node for p in users for node in _tests_reading_reference_data(p)]
    assert len(selected) >= 10  # the MP-16 cell and benchmark label tests
    empty = tmp_path / "no-shared-data"
    empty.mkdir()
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "not slow", "-rs"]
        + selected,
        env={**os.environ, SHARED_ENV: str(empty)},
        cwd=TESTS.parent,
        capture_output=True,
        text=True,
        timeout=600,
    )
    summary = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else proc.stderr
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "failed" not in summary and "error" not in summary and "passed" in summary
    assert "shared reference data not present" in proc.stdout  # the hidden folder was honoured
