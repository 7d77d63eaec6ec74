"""`geoalign features`: precompute backbone features, import a .npy, inspect a store."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from geoalign.cli._options import check_decode, check_device
from geoalign.cli.common import console, fail

features_app = typer.Typer(
    help="Precomputed image features: extract, import a .npy, inspect a feature store.",
    no_args_is_help=True,
)


# Rows per shard when --shard-size is not given. A kill loses at most the shard being written, so
# a shard should be minutes of work: clip-vit-l14 encodes 0.83 photos/s on a 2-core CPU
# (benchmarks/RESULTS.md), so 256 rows ~ 5 min. A GPU is orders of magnitude faster (not measured
# here), so its shards can be larger: 4096 rows keeps MP-16's 4.7M photos to ~1,200 shards, where
# 256 would make ~18,000 entries that index.json rewrites after every shard.
CPU_SHARD_SIZE = 256
GPU_SHARD_SIZE = 4096


@features_app.command("extract")
def extract_cmd(
    inputs: list[str] = typer.Argument(
        ...,
        help=(
            "A CSV/Parquet manifest (image path, lat, lon), or webdataset shards: tar paths, "
            "brace patterns ('wds/{000000..000470}.tar'), a folder of .tar files, URLs or pipe:."
        ),
        metavar="MANIFEST|SHARDS...",
    ),
    out: Path = typer.Option(..., "--out", "-o", help="Feature store folder (rerun to resume)."),
    backbone: str = typer.Option(
        "clip-vit-l14", help="Backbone spec (see `geoalign backbone list`)."
    ),
    image_root: Path | None = typer.Option(
        None, help="Folder that relative image paths start from."
    ),
    batch_size: int = typer.Option(64, min=1),
    shard_size: int | None = typer.Option(
        None,
        "--shard-size",
        min=1,
        help=(
            f"Rows per shard; a kill loses at most one shard of work. Default: the size of the "
            f"store being resumed, else {CPU_SHARD_SIZE} on CPU (~5 min of clip-vit-l14 at "
            f"0.83 photos/s on 2 cores) or {GPU_SHARD_SIZE} on a GPU (far faster; keeps the "
            f"index small for millions of photos)."
        ),
    ),
    dtype: str = typer.Option("float16", help="Stored feature dtype: float16 or float32."),
    device: str = typer.Option(
        "cpu", help="cpu, cuda, cuda:1, ... (under torchrun, cuda means cuda:LOCAL_RANK)."
    ),
    workers: int = typer.Option(0, min=0, help="Image decoding threads (0: decode inline)."),
    precision: str = typer.Option(
        "fp32", help="fp32, bf16 (autocast; CPU or CUDA) or fp16 (autocast; CUDA only)."
    ),
    channels_last: bool = typer.Option(
        False, "--channels-last", help="NHWC memory format (faster conv nets on CUDA)."
    ),
    decode: str = typer.Option(
        "cpu", help="Where JPEGs are decoded: cpu (Pillow) or gpu (nvJPEG; needs --device cuda)."
    ),
    skip_bad_rows: bool = typer.Option(
        False, "--skip-bad-rows", help="Skip manifest rows with errors (written to a file)."
    ),
    overwrite: bool = typer.Option(
        False, "--overwrite", help="Replace a store made with other settings instead of resuming."
    ),
    ten_crop: bool = typer.Option(
        False,
        "--ten-crop",
        help=(
            "Store the ten crops' features of every image (evaluation queries: evaluating from "
            "the store averages the crops' logits). 10x the extraction time and disk."
        ),
    ),
    views: int | None = typer.Option(
        None,
        "--views",
        help=(
            "Store K >= 2 augmented views per image (training samples data.views of them per "
            "step). K x the extraction time and disk."
        ),
        metavar="K",
    ),
    augment: str | None = typer.Option(
        None, "--augment", help="The augmentation of --views: simclr (the default)."
    ),
    view_seed: int = typer.Option(
        0, "--view-seed", help="Seed of the --views augmentation (a rerun makes the same views)."
    ),
) -> None:
    """Encode every image of a manifest or of webdataset shards into a resumable feature store.

    Under torchrun (RANK/WORLD_SIZE set) each rank encodes its own store shards into
    OUT/parts/; rank 0 merges them when all ranks are done (`features merge` does it by hand).
    """
    import warnings

    import torch

    from geoalign.data.feature_store import DTYPES, dist_env, encode_with, extract_features
    from geoalign.data.shards import recorded_shard_size
    from geoalign.errors import GeoalignError
    from geoalign.nn.backbones import load_backbone

    try:
        rank, world = dist_env()
    except GeoalignError as err:
        fail(str(err))
    device = _rank_device(device, world)
    check_device(device)
    if dtype not in DTYPES:
        fail(f"--dtype must be float16 or float32, got {dtype!r}")
    if out.exists() and not out.is_dir():
        fail(f"--out {out} is a file; give a folder for the feature store")
    check_decode(decode, device)
    _check_view_options(ten_crop, views, augment)
    if shard_size is None:
        recorded = None if overwrite else recorded_shard_size(out)
        shard_size = recorded or (CPU_SHARD_SIZE if device == "cpu" else GPU_SHARD_SIZE)
    try:
        table = _rows(inputs, out, image_root, skip_bad_rows, rank, world)
        model = load_backbone(backbone, device=device)
        model.configure_inference(precision=precision, channels_last=channels_last)
        store_views = _store_views(model, ten_crop, views, view_seed)
    except GeoalignError as err:
        fail(str(err))
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            store = extract_features(
                table,
                encode_with(model, torch.as_tensor) if store_views else encode_with(model),
                out,
                load_fn=_gpu_loader(table, device) if decode == "gpu" else None,
                batch_size=batch_size,
                dtype=dtype,
                shard_size=shard_size,
                num_workers=workers,
                backbone={"spec": backbone, "embed_dim": model.embed_dim},
                overwrite=overwrite,
                progress=rank == 0,
                rank=rank,
                world_size=world,
                prepare_fn=store_views.prepare if store_views else None,
                views=store_views.record if store_views else None,
            )
            if world > 1:
                store = _finish_distributed(out, rank)
    except GeoalignError as err:
        fail(str(err))
    for w in caught:  # one line each, without the source path of a raw UserWarning
        console.print(f"[yellow]warning:[/] {w.message}", highlight=False)
    if store is not None:
        each = f", {store.views} {store.view_kind} views each" if store.views > 1 else ""
        console.print(
            f"[green]feature store[/] {out}: {len(store)} rows of dim {model.embed_dim}{each}"
        )


def _check_view_options(ten_crop: bool, views: int | None, augment: str | None) -> None:
    """--ten-crop, --views and --augment: usage errors before any work."""
    from geoalign.data.feature_store_views import AUGMENTS

    if ten_crop and views is not None:
        fail(
            "--ten-crop and --views are exclusive: ten crops are evaluation queries, --views "
            "stores augmented training views; extract them into two stores"
        )
    if views is not None and views < 2:
        fail(f"--views must be at least 2, got {views} (for one view per image drop --views)")
    if augment is not None and views is None:
        fail("--augment applies to --views K; give --views too (or drop --augment)")
    if augment is not None and augment not in AUGMENTS:
        fail(f"--augment must be one of {', '.join(AUGMENTS)}, got {augment!r}")


def _store_views(model, ten_crop: bool, views: int | None, seed: int):
    """The multi-view extraction asked for (None: one view per image, the backbone's transform)."""
    from geoalign.data.feature_store_views import simclr_store_views, ten_crop_views

    if ten_crop:
        return ten_crop_views(model.preprocess)
    if views is not None:
        return simclr_store_views(model.preprocess, views, seed)
    return None


def _gpu_loader(table, device: str):
    """load_fn decoding JPEGs with nvJPEG on `device` (shards or image files)."""
    from geoalign.data.images import decode_jpeg
    from geoalign.data.wds import ShardImageLoader, ShardManifest

    if isinstance(table, ShardManifest):
        return ShardImageLoader(decode_device=device)
    return lambda path: decode_jpeg(Path(path).read_bytes(), str(path), device=device)


def _rank_device(device: str, world: int) -> str:
    """Under a launcher, a bare `cuda` means this process's GPU (LOCAL_RANK)."""
    import os

    if device == "cuda" and world > 1 and "LOCAL_RANK" in os.environ:
        return f"cuda:{int(os.environ['LOCAL_RANK'])}"
    return device


def _rows(
    inputs: list[str], out: Path, image_root: Path | None, skip_bad: bool, rank: int, world: int
):
    """The rows to encode: a cleaned manifest, or the usable samples of webdataset shards
    (bad samples reported on stderr and listed in OUT/bad-samples.csv)."""
    from geoalign.data.manifest import load_manifest
    from geoalign.data.wds import expand_shards, is_shard_spec, list_shards

    if len(inputs) == 1 and not is_shard_spec(inputs[0]):
        table = load_manifest(Path(inputs[0]), image_root=image_root, check_files=True)
        return table.clean(on_error="skip" if skip_bad else "raise")
    n_urls = len(expand_shards(inputs))
    with console.status("listing shards ..."):
        listing = list_shards(
            inputs, cache_dir=out / ".wds-listing", start=rank * n_urls // max(world, 1)
        )
    if listing.bad:
        _report_bad(listing.bad, out if rank == 0 else None)
    if not len(listing):
        fail(f"{' '.join(inputs)}: no usable samples in {n_urls} shard(s)")
    return listing


def _report_bad(bad: list, out: Path | None) -> None:
    import csv
    import io

    from geoalign.io_atomic import atomic_write

    console.print(
        f"[yellow]warning:[/] {len(bad)} bad sample(s) left out, e.g. {bad[0]}", highlight=False
    )
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        buf = io.StringIO()
        writer = csv.writer(buf)
        writer.writerow(["shard", "key", "reason"])
        writer.writerows([b.url, b.key, b.reason] for b in bad)
        data = buf.getvalue().encode()
        atomic_write(out / "bad-samples.csv", lambda fh: fh.write(data))
        console.print(f"all {len(bad)} listed in {out / 'bad-samples.csv'}", highlight=False)


def _finish_distributed(out: Path, rank: int):
    """Wait for every rank (when a process group can be formed), then merge on rank 0."""
    import os

    from geoalign.data.feature_store import merge_parts

    if "MASTER_ADDR" in os.environ:  # torchrun / Lightning: a barrier, then one merge
        import torch.distributed as dist

        if not dist.is_initialized():
            dist.init_process_group("gloo")
        dist.barrier()
        store = merge_parts(out) if rank == 0 else None
        dist.barrier()
        dist.destroy_process_group()
        return store
    console.print(
        f"rank {rank}: part done; once every rank has finished run `geoalign features merge {out}`"
    )
    return None


@features_app.command("merge")
def merge_cmd(
    out: Path = typer.Argument(..., help="Feature store folder a distributed extraction wrote."),
    keep_parts: bool = typer.Option(False, "--keep-parts", help="Keep OUT/parts/ after merging."),
) -> None:
    """Merge the per-rank parts of a distributed `features extract` into one store."""
    from geoalign.data.feature_store import merge_parts
    from geoalign.errors import GeoalignError

    try:
        store = merge_parts(out, keep_parts=keep_parts)
    except GeoalignError as err:
        fail(str(err))
    console.print(f"[green]feature store[/] {out}: {len(store)} rows of dim {store.dim}")


@features_app.command("import")
def import_cmd(
    features: Path = typer.Argument(..., help="N x D feature array (.npy)."),
    coords: Path = typer.Argument(..., help="CSV/Parquet with lat, lon (and optional image/id)."),
    out: Path = typer.Option(..., "--out", "-o", help="Feature store folder to create."),
    dtype: str | None = typer.Option(
        None, "--dtype", help="float16 or float32 (default: the array's, else float32)."
    ),
    shard_size: int = typer.Option(16384, "--shard-size", min=1, help="Rows per shard."),
    backbone: str | None = typer.Option(
        None, "--backbone", help="Name of the model the features came from (recorded)."
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing store."),
    image_col: str | None = typer.Option(None, "--image-col", help="Image path/id column."),
    lat_col: str | None = typer.Option(None, "--lat-col", help="Latitude column."),
    lon_col: str | None = typer.Option(None, "--lon-col", help="Longitude column."),
) -> None:
    """Turn a plain feature file plus coordinates (same row order) into a feature store."""
    from geoalign.data.feature_store import import_features
    from geoalign.errors import GeoalignError

    if out.exists() and not out.is_dir():
        fail(f"--out {out} is a file; give a folder for the feature store")
    columns = {k: v for k, v in {"image": image_col, "lat": lat_col, "lon": lon_col}.items() if v}
    try:
        store = import_features(
            features,
            coords,
            out,
            columns=columns or None,
            dtype=dtype,
            shard_size=shard_size,
            backbone=backbone,
            overwrite=overwrite,
            progress=True,
        )
    except GeoalignError as err:
        fail(str(err))
    except ValueError as err:  # e.g. an unsupported dtype name
        fail(str(err))
    console.print(
        f"[green]wrote[/] {out}: {len(store)} rows x {store.dim} ({store.dtype}), "
        f"{store.num_shards} shards"
    )


@features_app.command("info")
def info(
    store_dir: Path = typer.Argument(..., help="Feature store folder."),
    failures: int = typer.Option(10, "--failures", help="How many failed rows to list."),
    verify: bool = typer.Option(False, "--verify", help="Re-hash every shard against the index."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON on stdout."),
) -> None:
    """Summarise a feature store: rows, dim, dtype, shards, backbone, failures."""
    import warnings

    from rich.table import Table

    from geoalign.data.feature_store import FeatureStore
    from geoalign.errors import GeoalignError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # an incomplete store is reported below instead
            store = FeatureStore(store_dir)
        summary = store.info()
        if verify:
            with console.status("verifying shards ..."):
                store.verify()
            summary["verified"] = True
        failed = store.failures if store.n_failed else None
    except GeoalignError as err:
        fail(str(err))
    if as_json:
        typer.echo(json.dumps(summary, indent=2, default=str))
        return
    from rich.console import Console

    stdout = Console(soft_wrap=True)  # the summary is the result: stdout, so it pipes
    table = Table(title=str(store_dir), show_header=False)
    table.add_column("key")
    table.add_column("value", overflow="fold")
    for key, value in summary.items():
        table.add_row(key, str(value))
    stdout.print(table)
    if not store.complete:
        console.print("[yellow]incomplete[/]: rerun the extraction to finish it")
    if failed is not None and failures > 0:
        rows = Table(title=f"{len(failed)} rows failed (first {min(failures, len(failed))})")
        for col in ("row", "image", "error"):
            rows.add_column(col, overflow="fold")
        for rec in failed.head(failures).itertuples():
            rows.add_row(str(rec.row), str(rec.image), str(rec.error))
        stdout.print(rows)


def register(app: typer.Typer) -> None:
    app.add_typer(features_app, name="features")
