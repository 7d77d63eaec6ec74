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

    from geoalign.data.galleries import read_coordinate_table
    from geoalign.geo.coords import format_row_errors
    from geoalign.zoo import load_location_encoder

    suffix = out.suffix.lower()
    if suffix not in {".npy", ".parquet"}:
        fail(f"--out must end in .npy or .parquet, got {out.name}")
    coords_table = read_coordinate_table(source, skip_bad_rows=skip_bad_rows)
    good, errors = coords_table.good, coords_table.errors
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
    if suffix == ".npy":
        np.save(out, full)
    else:
        frame = pd.DataFrame({"lat": lat, "lon": lon})
        frame["embedding"] = [row if ok else None for row, ok in zip(full, good, strict=True)]
        frame["error"] = [errors.get(i + 1) for i in range(n_rows)]
        frame.to_parquet(out, index=False)
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
