"""`geoalign embed-locations`: coordinates in, location embeddings out."""

from __future__ import annotations

from pathlib import Path

import typer

from geoalign.cli.common import console, fail, progress_bar


def embed_locations(
    source: str = typer.Argument(
        ..., help="CSV/Parquet with latitude/longitude columns, or a gallery name (geoclip-100k)."
    ),
    out: Path = typer.Option(..., "--out", "-o", help="Output file: .npy or .parquet."),
    model: str = typer.Option("geoclip", "--model", "-m", help="Checkpoint name or folder."),
    batch_size: int = typer.Option(4096, help="Coordinates per forward pass."),
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

    from geoalign.data.manifest import read_table
    from geoalign.geo.coords import wrap_longitude
    from geoalign.geo.gallery import (
        coordinate_errors,
        find_latlon_columns,
        format_row_errors,
        gallery_path,
    )
    from geoalign.zoo import load_location_encoder

    suffix = out.suffix.lower()
    if suffix not in {".npy", ".parquet"}:
        fail(f"--out must end in .npy or .parquet, got {out.name}")
    path = gallery_path(source)
    table = read_table(path, string_columns=())
    lat_col, lon_col = find_latlon_columns(table.columns, source=str(path))
    errors = coordinate_errors(table[lat_col], table[lon_col])
    if errors and not skip_bad_rows:
        fail(format_row_errors(str(path), errors) + "\n(use --skip-bad-rows to embed the rest)")
    good = np.ones(len(table), dtype=bool)
    good[[r - 1 for r in errors]] = False
    lat = pd.to_numeric(table[lat_col], errors="coerce").to_numpy(dtype=np.float64)
    lon = pd.to_numeric(table[lon_col], errors="coerce").to_numpy(dtype=np.float64)
    lon = wrap_longitude(lon)

    encoder = load_location_encoder(model, device=device)
    coords = torch.tensor(np.stack([lat[good], lon[good]], axis=1), dtype=torch.float32)
    with progress_bar() as progress:
        task = progress.add_task("embedding", total=len(coords))
        emb = encoder.encode(
            coords, batch_size=batch_size, progress=lambda n: progress.advance(task, n)
        )
    if normalize:
        emb = torch.nn.functional.normalize(emb, dim=-1)
    full = np.full((len(table), encoder.embed_dim), np.nan, dtype=np.float32)
    full[good] = emb.float().cpu().numpy()

    out.parent.mkdir(parents=True, exist_ok=True)
    if suffix == ".npy":
        np.save(out, full)
    else:
        frame = pd.DataFrame({"lat": lat, "lon": lon})
        frame["embedding"] = [row if ok else None for row, ok in zip(full, good, strict=True)]
        frame["error"] = [errors.get(i + 1) for i in range(len(table))]
        frame.to_parquet(out, index=False)
    norms = np.linalg.norm(full[good], axis=1)
    console.print(
        f"[green]wrote[/] {out}: {int(good.sum())} embeddings of dim {encoder.embed_dim} "
        f"(model {model}); norm min/mean/max {norms.min():.4f}/{norms.mean():.4f}/{norms.max():.4f}"
    )
    if errors:
        console.print(format_row_errors(str(path), errors, limit=20), style="yellow")
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.command("embed-locations")(embed_locations)
