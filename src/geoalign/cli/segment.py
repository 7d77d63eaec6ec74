"""`geoalign segment`: ADE20K segmentation maps for GeoSURGE's semantic fusion."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from geoalign.cli._options import check_device
from geoalign.cli.common import console, fail

segment_app = typer.Typer(
    help="Semantic segmentation maps (ADE20K) for GeoSURGE: extract, inspect.",
    no_args_is_help=True,
)


@segment_app.command("extract")
def extract_cmd(
    manifest: Path = typer.Argument(..., help="CSV/Parquet manifest: image path, lat, lon."),
    out: Path = typer.Option(
        ..., "--out", "-o", help="Segmentation store folder (rerun to resume)."
    ),
    segmenter: str = typer.Option(
        "oneformer-ade20k",
        help="oneformer-ade20k (the paper's), segformer-ade20k (light), or hf:<repo or folder>.",
    ),
    backbone: str = typer.Option(
        "clip-vit-l14-336",
        help="Backbone whose resize + centre crop the maps are cut to (the fusion backbone).",
    ),
    image_root: Path | None = typer.Option(None, help="Folder relative image paths start from."),
    batch_size: int = typer.Option(16, min=1),
    shard_size: int = typer.Option(2048, min=1, help="Maps per shard file."),
    device: str = typer.Option("cpu", help="cpu, cuda, cuda:1, ..."),
    bf16: bool = typer.Option(False, help="Run the segmenter in bfloat16."),
    workers: int = typer.Option(0, min=0, help="Image decoding threads (0: decode inline)."),
    skip_bad_rows: bool = typer.Option(
        False, "--skip-bad-rows", help="Skip manifest rows with errors (written to a file)."
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing store."),
) -> None:
    """Segment the backbone crop of every manifest image into a sharded, resumable store of
    uint8 label maps at the backbone's input size."""
    import warnings

    import torch

    from geoalign.data.manifest import load_manifest
    from geoalign.data.segmentation_store import extract_segmentations
    from geoalign.nn.backbones import load_backbone
    from geoalign.nn.segmenters import load_segmenter

    check_device(device)
    if out.exists() and not out.is_dir():
        fail(f"--out {out} is a file; give a folder for the segmentation store")
    table = load_manifest(manifest, image_root=image_root, check_files=True)
    table = table.clean(on_error="skip" if skip_bad_rows else "raise")
    # Only the backbone's preprocessing is needed; loading it also checks the spec is usable.
    preprocess = load_backbone(backbone).preprocess
    dtype = torch.bfloat16 if bf16 else torch.float32
    model = load_segmenter(segmenter, device=device, dtype=dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # unreadable images are reported below
        store = extract_segmentations(
            table,
            model,
            out,
            preprocess=preprocess,
            batch_size=batch_size,
            shard_size=shard_size,
            num_workers=workers,
            segmenter_info={"spec": segmenter, "labels": model.num_labels, "backbone": backbone},
            overwrite=overwrite,
        )
    console.print(
        f"[green]segmentation store[/] {out}: {len(store)} maps of {store.size}x{store.size}"
        + (f" ({store.n_failed} unreadable, recorded per row)" if store.n_failed else "")
    )


@segment_app.command("info")
def info_cmd(
    store_dir: Path = typer.Argument(..., help="Segmentation store folder."),
    failures: int = typer.Option(10, "--failures", help="How many failed rows to list."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON on stdout."),
) -> None:
    """Summarise a segmentation store: rows, map size, segmenter, geometry, failures."""
    import warnings

    from geoalign.data.segmentation_store import SegmentationStore

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # an incomplete store is reported below
        store = SegmentationStore(store_dir)
    summary = store.info()
    if as_json:
        typer.echo(json.dumps(summary, indent=2))
        return
    for key, value in summary.items():  # the summary is the result: stdout, so it pipes
        typer.echo(f"{key}: {value}")
    if store.n_failed and failures:
        for rec in store.failures().head(failures).itertuples():
            typer.echo(f"  row {rec.row} ({rec.image}): {rec.error}")


def register(app: typer.Typer) -> None:
    app.add_typer(segment_app, name="segment")
