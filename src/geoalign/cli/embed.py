"""`geoalign embed-locations`: coordinates in, location embeddings out."""

from __future__ import annotations

from pathlib import Path

import typer

from geoalign.cli._options import check_device, check_output_file
from geoalign.cli.common import console, fail, progress_bar


def embed_locations(
    source: str = typer.Argument(
        ..., help="CSV/Parquet with latitude/longitude columns, or a gallery name (geoclip-100k)."
    ),
    out: Path = typer.Option(
        ..., "--out", "-o", help="Output file: .npy or .parquet (written atomically)."
    ),
    model: str = typer.Option("geoclip", "--model", "-m", help="Checkpoint name or folder."),
    batch_size: int = typer.Option(4096, min=1, help="Coordinates per forward pass."),
    skip_bad_rows: bool = typer.Option(
        False, "--skip-bad-rows", help="Embed the valid rows and leave bad ones empty (NaN/null)."
    ),
    device: str = typer.Option("cpu", help="cpu, cuda, cuda:1, ..."),
    normalize: bool = typer.Option(False, help="L2-normalise the embeddings."),
) -> None:
    """Embed GPS coordinates with a location encoder (row i of the output = data row i)."""
    import numpy as np
    import pandas as pd
    import torch

    from geoalign.data.galleries import read_coordinate_table
    from geoalign.geo.coords import format_row_errors
    from geoalign.io_atomic import atomic_write, remove_stale_temps
    from geoalign.models.registry import load_location_encoder

    suffix = check_output_file(out, (".npy", ".parquet"))
    check_device(device)
    coords_table = read_coordinate_table(source, skip_bad_rows=skip_bad_rows)
    good, errors = coords_table.good, coords_table.errors
    if not good.any():
        why = f"all {len(good):,} rows have bad coordinates" if len(good) else "it has no rows"
        fail(f"{source}: no usable coordinates ({why}); nothing written to {out}")
    lat, lon = coords_table.lat, coords_table.lon
    n_rows = len(coords_table.table)

    encoder = load_location_encoder(model, device=device)
    coords = torch.tensor(coords_table.latlon, dtype=torch.float32)
    with progress_bar() as progress:
        task = progress.add_task("embedding", total=len(coords))
        emb = encoder.encode(
            coords, batch_size=batch_size, progress=lambda n: progress.advance(task, n)
        )
    if normalize:
        emb = torch.nn.functional.normalize(emb, dim=-1)
    full = np.full((n_rows, encoder.embed_dim), np.nan, dtype=np.float32)
    full[good] = emb.float().cpu().numpy()

    out.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(out)
    # Written through a temp file and renamed: a kill never leaves a truncated output, and a file
    # handle keeps np.save from appending ".npy" to a name like X.NPY.
    if suffix == ".npy":
        atomic_write(out, lambda fh: np.save(fh, full, allow_pickle=False))
    else:
        frame = pd.DataFrame({"lat": lat, "lon": lon})
        frame["embedding"] = [row if ok else None for row, ok in zip(full, good, strict=True)]
        frame["error"] = [errors.get(i + 1) for i in range(n_rows)]
        atomic_write(out, lambda fh: frame.to_parquet(fh, index=False))
    norms = np.linalg.norm(full[good], axis=1)
    console.print(
        f"[green]wrote[/] {out}: {int(good.sum())} embeddings of dim {encoder.embed_dim} "
        f"(model {model}); norm min/mean/max {norms.min():.4f}/{norms.mean():.4f}/{norms.max():.4f}"
    )
    if errors:
        console.print(format_row_errors(str(source), errors, limit=20), style="yellow")
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.command("embed-locations")(embed_locations)
