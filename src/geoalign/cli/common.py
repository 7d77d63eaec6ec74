"""Shared CLI helpers: two consoles, one way to fail cleanly, one progress bar style.

The output contract: results (tables, JSON, CSV) go to `out` (stdout) so that
`geoalign predict x.jpg > o.txt` captures them; progress, logs, warnings and errors go to
`console` (stderr) so that they never mix into a pipe.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

console = Console(stderr=True, soft_wrap=True)  # messages stay greppable: no hard wraps
out = Console(highlight=False, soft_wrap=True)  # result lines; tables go through print_result

PIPE_WIDTH = 200
"""Width of a result table written to a file or pipe: rich's 80-column fallback would wrap
cells (method names over three lines) for no reader's benefit. COLUMNS, when set, wins."""


def print_result(renderable: Any) -> None:
    """Print a result on stdout: a table at the terminal's width on a TTY, wide in a pipe."""
    if isinstance(renderable, str) or sys.stdout.isatty():
        out.print(renderable)
        return
    columns = os.environ.get("COLUMNS", "")
    width = int(columns) if columns.isdigit() else PIPE_WIDTH
    Console(width=width, highlight=False).print(renderable, crop=False)


def fail(message: str, code: int = 2) -> NoReturn:
    """Print a user-facing error (no traceback) and exit."""
    console.print(f"[bold red]error:[/] {escape(message)}")
    raise typer.Exit(code)


@contextmanager
def progress_bar(transient: bool = False, disable: bool = False) -> Iterator[Progress]:
    """A progress bar on stderr; `disable` (for --quiet) keeps the API but draws nothing.

    A transient bar is off when stderr is not a terminal: it would only leave a blank line."""
    disable = disable or (transient and not console.is_terminal)
    with Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=transient,
        disable=disable,
    ) as progress:
        yield progress


def check_gallery_file(gallery: str, other: str = "a gallery name") -> None:
    """A --gallery file must load and hold at least one coordinate (an empty one ranks nothing
    and would only fail at the first query). `other`: what else --gallery takes."""
    from geoalign.data.galleries import load_gallery
    from geoalign.errors import GeoalignError

    if not Path(gallery).is_file():
        what = "is a folder" if Path(gallery).is_dir() else "not found"
        fail(f"--gallery {gallery}: {what}; give a CSV/Parquet of lat/lon or {other}")
    try:
        rows = len(load_gallery(gallery))
    except GeoalignError as err:
        fail(f"--gallery {gallery}: {err}")
    if rows == 0:
        fail(f"--gallery {gallery}: holds no coordinates (a header only); add lat,lon rows")
