"""The package layers hold: import-linter's contracts (pyproject.toml [tool.importlinter]) are
checked in the fast suite as well as in .ci/run, so a violation fails where it is written."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_import_linter_contracts_are_kept():
    pytest.importorskip("importlinter", reason="import-linter is in the dev extra")
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            "from importlinter.cli import lint_imports_command; lint_imports_command()",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "0 broken" in done.stdout


def test_a_new_cycle_between_sibling_modules_breaks_a_contract(tmp_path):
    """The acyclic-siblings contract is live: the package copied with one import put back that
    closes a cycle (the feature-store reader reaching up to its torch datasets) fails it."""
    import shutil

    pytest.importorskip("importlinter", reason="import-linter is in the dev extra")
    shutil.copytree(ROOT / "src" / "geoalign", tmp_path / "src" / "geoalign")
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    reader = tmp_path / "src" / "geoalign" / "data" / "feature_store_reader.py"
    reader.write_text(
        reader.read_text() + "\n\ndef _up():\n    import geoalign.data.feature_store_datasets\n"
    )
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            "from importlinter.cli import lint_imports_command; lint_imports_command()",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(tmp_path / "src"), "PATH": "/usr/bin:/bin"},
    )
    assert done.returncode != 0, done.stdout[-3000:]
    assert "No cycles are allowed in geoalign.data." in done.stdout
    assert ".feature_store_reader -> .feature_store_datasets" in done.stdout
