"""All-or-nothing file writes: a killed or failing writer never leaves a 0-byte or truncated file.

Every output file geoalign writes goes through `atomic_write` (writers that take a file handle) or
`atomic_output` (writers that want a path: matplotlib's savefig, pandas): the bytes
go to a hidden temporary file in the same folder (so the rename cannot cross filesystems), are
fsynced, and the temporary file is renamed over the target with `os.replace`, after which the
folder entry is fsynced too. Readers see the old file or the whole new one. A SIGKILL leaves at
most the hidden temporary file (`.<name>.tmp-<pid>`, plus the target's suffix for
`atomic_output`), which the next write of the same target removes.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

_TMP_MARK = ".tmp-"


def fsync_dir(path: Path) -> None:
    """Flush a folder's entries (renames into it) to disk; a no-op where folders cannot be opened."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # some platforms/filesystems cannot open directories
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def temp_path(path: Path, *, keep_suffix: bool = False) -> Path:
    """The hidden temporary file this process writes `path` through.

    `keep_suffix` repeats the target's suffix at the end (`.map.png.tmp-42.png`), for writers that
    pick the format from the name (matplotlib, pandas' compression inference).
    """
    tail = path.suffix if keep_suffix else ""
    return path.with_name(f".{path.name}{_TMP_MARK}{os.getpid()}{tail}")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def remove_stale_temps(path: Path) -> None:
    """Delete temporary files of `path` left by writers that no longer run (killed ones)."""
    prefix = f".{path.name}{_TMP_MARK}"
    if not path.parent.is_dir():
        return
    for p in path.parent.iterdir():
        if p.name.startswith(prefix):
            pid = p.name[len(prefix) :]
            if path.suffix and pid.endswith(path.suffix):  # an atomic_output temp
                pid = pid[: -len(path.suffix)]
            if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
                p.unlink(missing_ok=True)


def atomic_write(path: str | Path, write: Callable[[Any], None], *, durable: bool = True) -> None:
    """Write `path` via a temp file in the same folder, fsync, then os.replace: all or nothing.

    `write(fh)` gets a binary file handle. The temp file is removed if `write` fails. With
    `durable`, the folder is fsynced after the rename so the new name survives a power cut
    (store writers that fsync the folder once per shard pass False for the inner files).
    """
    with _replaced(Path(path), keep_suffix=False, durable=durable) as tmp:
        with open(tmp, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())


@contextmanager
def atomic_output(path: str | Path, *, durable: bool = True) -> Iterator[Path]:
    """Yield a temporary path to write `path` through; on success it is fsynced and renamed over
    `path`, on any exception it is removed and `path` keeps its old content.

    For writers that take a file name rather than a handle (`fig.savefig(tmp)`, `m.save(tmp)`,
    `frame.to_csv(tmp)`); the temporary name ends with the target's suffix so such writers pick
    the same format. Temp files of killed earlier writers of `path` are removed first.
    """
    path = Path(path)
    remove_stale_temps(path)
    with _replaced(path, keep_suffix=True, durable=durable) as tmp:
        yield tmp
        fd = os.open(tmp, os.O_RDWR)  # O_RDWR: fsync needs write access on some platforms
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextmanager
def _replaced(path: Path, *, keep_suffix: bool, durable: bool) -> Iterator[Path]:
    """The temp file of `path` for the block to fill: renamed over `path` when the block ends
    well, removed either way; the folder fsynced after the rename when `durable`."""
    tmp = temp_path(path, keep_suffix=keep_suffix)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    if durable:
        fsync_dir(path.parent)


@contextmanager
def atomic_directory(path: str | Path) -> Iterator[Path]:
    """Yield a hidden temporary folder to fill in place of the folder `path`; when the block ends
    well it is renamed to `path` (an empty folder already there is replaced), on any exception it
    is deleted. Readers never see a half-written folder (a copied checkpoint, say), and a killed
    writer leaves only the hidden folder, which the next writer of `path` removes."""
    import shutil

    path = Path(path)
    prefix = f".{path.name}{_TMP_MARK}"
    if path.parent.is_dir():
        for p in path.parent.iterdir():
            pid = p.name[len(prefix) :]
            if p.name.startswith(prefix) and pid.isdigit() and not _alive(int(pid)):
                shutil.rmtree(p, ignore_errors=True)
    tmp = temp_path(path)
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        yield tmp
        if path.is_dir() and not any(path.iterdir()):
            path.rmdir()
        os.rename(tmp, path)  # fails (and cleans up) if something appeared at `path` meanwhile
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    fsync_dir(path.parent)
