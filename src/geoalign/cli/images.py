"""`geoalign images check`: find unreadable photos before a long run trips over them."""

from __future__ import annotations

from pathlib import Path

import typer

from geoalign.cli._options import check_output_file, write_json_file
from geoalign.cli.common import console, fail, print_result, progress_bar

images_app = typer.Typer(help="Check image files and folders.", no_args_is_help=True)


@images_app.command("check")
def check(
    inputs: list[Path] = typer.Argument(..., help="Image files and/or folders."),
    recursive: bool = typer.Option(False, "--recursive", "-r", help="Include sub-folders."),
    max_pixels: int = typer.Option(
        2 * 89_478_485, "--max-pixels", help="Refuse images with more pixels (decompression bombs)."
    ),
    workers: int = typer.Option(4, "--workers", min=1, help="Decoding threads."),
    json_out: Path | None = typer.Option(
        None, "--json", help="Write every failure as JSON (path, reason); -: to stdout."
    ),
    max_rows: int = typer.Option(20, "--max-rows", help="How many failures to list."),
) -> None:
    """Fully decode every image; list each one that fails and why. Exit code 1 if any fails."""
    from concurrent.futures import ThreadPoolExecutor

    from rich.markup import escape
    from rich.table import Table

    from geoalign.data.images import ImageLoadError, expand_image_paths, load_image
    from geoalign.errors import GeoalignError

    if json_out is not None and str(json_out) != "-":
        check_output_file(json_out, option="--json")
    try:
        paths = expand_image_paths(inputs, recursive=recursive)
    except GeoalignError as err:
        fail(str(err))

    def probe(path: Path) -> ImageLoadError | None:
        try:
            load_image(path, max_pixels=max_pixels)
        except ImageLoadError as err:
            return err
        return None

    failures: list[ImageLoadError] = []
    # threads suffice: Pillow releases the GIL while decoding
    with ThreadPoolExecutor(max_workers=workers) as pool, progress_bar(transient=True) as bar:
        task = bar.add_task("decoding", total=len(paths))
        for err in pool.map(probe, paths):
            if err is not None:
                failures.append(err)
            bar.advance(task)
    # The summary and the failures are the result (stdout), unless JSON already goes there.
    show = console.print if json_out is not None and str(json_out) == "-" else print_result
    show(f"{len(paths) - len(failures)} of {len(paths)} images readable")
    if json_out is not None:
        write_json_file(json_out, [{"path": e.path, "reason": e.reason} for e in failures])
    if failures:
        table = Table(title=f"{len(failures)} unreadable images")
        table.add_column("file")
        table.add_column("reason")
        for err in failures[:max_rows]:
            table.add_row(escape(err.path), escape(err.reason))
        show(table)
        if len(failures) > max_rows:
            show(f"... and {len(failures) - max_rows} more (see --json)")
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.add_typer(images_app, name="images")
