"""io_atomic: all-or-nothing writes, and a killed writer's temp file cleaned by the next write."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from geoalign.io_atomic import atomic_write, remove_stale_temps, temp_path


def dead_pid() -> str:
    """The pid of a process that has exited (a killed writer's, for the stale-temp tests)."""
    return subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        text=True,
        capture_output=True,
        check=True,
    ).stdout.strip()


def test_failed_write_keeps_the_old_file_and_no_temp(tmp_path: Path) -> None:
    path = tmp_path / "out.bin"
    atomic_write(path, lambda fh: fh.write(b"old"))

    def broken(fh) -> None:
        fh.write(b"ha")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(path, broken)
    assert path.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["out.bin"]


def test_only_temps_of_dead_writers_are_removed(tmp_path: Path) -> None:
    path = tmp_path / "out.npy"
    dead = dead_pid()
    stale = tmp_path / f".out.npy.tmp-{dead}"
    live = tmp_path / f".out.npy.tmp-{os.getppid()}"  # our parent runs: its temp must stay
    other = tmp_path / f".other.npy.tmp-{dead}"  # another target's temp is not ours to judge
    for p in (stale, live, other, temp_path(path)):
        p.write_bytes(b"partial")
    remove_stale_temps(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [live.name, other.name, temp_path(path).name]
    )


def test_atomic_directory_appears_whole_or_not_at_all(tmp_path: Path) -> None:
    from geoalign.io_atomic import atomic_directory

    out = tmp_path / "copy"
    with pytest.raises(OSError, match="disk full"), atomic_directory(out) as tmp:
        (tmp.mkdir(), (tmp / "a.txt").write_text("half"))
        raise OSError("disk full")
    assert list(tmp_path.iterdir()) == []  # neither the folder nor its temp
    out.mkdir()  # an empty folder is replaced, as `--out` allows
    dead = dead_pid()
    stale = tmp_path / f".copy.tmp-{dead}"  # a killed writer's half-copied folder
    (stale / "sub").mkdir(parents=True)
    with atomic_directory(out) as tmp:
        (tmp / "sub").mkdir(parents=True)
        (tmp / "sub" / "a.txt").write_text("whole")
    assert (out / "sub" / "a.txt").read_text() == "whole"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["copy"]
