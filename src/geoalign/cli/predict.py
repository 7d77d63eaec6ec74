"""`geoalign predict`: where were these photos taken?"""

from __future__ import annotations

import itertools
import sys
from contextlib import ExitStack, nullcontext
from pathlib import Path
from typing import Any

import typer

from geoalign.cli._options import check_decode
from geoalign.cli.common import check_gallery_file, console, fail, print_result, progress_bar
from geoalign.cli.output import prediction_record

MANIFEST_SUFFIXES = (".csv", ".tsv", ".parquet", ".pq", ".csv.gz", ".tsv.gz")
MANIFEST_COLUMNS = ("path", "image")


def _manifest_paths(manifest: Path) -> list[str]:
    """Image paths listed in a CSV/Parquet manifest; relative ones are under its folder."""
    from geoalign.data.manifest import read_table

    table = read_table(manifest)
    by_name = {str(c).strip().lower(): c for c in table.columns}
    column = next((by_name[c] for c in MANIFEST_COLUMNS if c in by_name), None)
    if column is None:
        fail(
            f"{manifest}: no `path` or `image` column (columns: "
            f"{', '.join(map(str, table.columns)) or 'none'}); name the image files in one"
        )
    paths: list[str] = []
    for row, value in enumerate(table[column].tolist(), 1):  # data rows, header not counted
        if not isinstance(value, str) or not value.strip():
            fail(f"{manifest}, row {row}: empty `{column}`; give an image path or drop the row")
        path = Path(value.strip()).expanduser()
        paths.append(str(path if path.is_absolute() else manifest.parent / path))
    if not paths:
        fail(f"{manifest}: the manifest lists no images (header only)")
    return paths


def _expand_manifests(inputs: list[str]) -> list[str]:
    """Inputs as path strings, with every CSV/TSV/Parquet file replaced by the images it lists."""
    sources: list[str] = []
    for item in inputs:
        path = Path(item)
        if path.name.lower().endswith(MANIFEST_SUFFIXES) and path.is_file():
            sources.extend(_manifest_paths(path))
        else:
            sources.append(item)
    return sources


def _shard_photos(sources: list[str]) -> tuple[list[str], Any, list[tuple[str, str]]]:
    """(loose inputs, the photos of the webdataset shards among the inputs or None, (name,
    reason) of the shards' bad samples). A sample's key names its prediction; a bad sample is
    named by its key, or by shard#key when its key repeats one already listed."""
    from geoalign.data.wds import is_shard_spec

    specs = [s for s in sources if is_shard_spec(s)]
    if not specs:
        return sources, None, []
    from geoalign.data.wds_images import list_photos

    photos = list_photos(specs)
    keys = set(photos.keys)
    bad = [
        (f"{b.url}#{b.key}" if b.key in keys else b.key, f"{b.reason} (in {b.url})")
        for b in photos.bad
    ]
    return [s for s in sources if s not in specs], photos, bad


def _scan_inputs(sources: list[str], recursive: bool) -> tuple[list[str], list[tuple[str, str]]]:
    """Split inputs into those to predict and (input, reason) pairs to report with the rest:
    one empty folder or broken link must not abort a batch."""
    from geoalign.data.images import expand_image_paths
    from geoalign.errors import DataError

    usable, problems = [], []
    for source in sources:
        path = Path(source).expanduser()
        if not path.is_dir():
            usable.append(source)
            continue
        try:  # broken links are listed, then reported when loaded (data.images)
            expand_image_paths(path, recursive=recursive)
        except DataError as err:
            problems.append((source, str(err).removeprefix(f"{path}: ")))
            continue
        usable.append(source)
    return usable, problems


def _with_training_neighbours(geolocator, model: str, train: str | None, k: int):
    """`geolocator` with each query's k nearest training photos among its candidates; the
    training features are `train`, else the store or scene labels the model was trained on."""
    from geoalign.errors import GeoalignError
    from geoalign.evaluation.queries import resolve
    from geoalign.models.registry import load_checkpoint

    if train is None:
        data = load_checkpoint(model).config.get("provenance", {}).get("config", {}).get("data")
        source, path = (data or {}).get("source"), (data or {}).get("path")
        if source == "store" and path:
            train = path
        elif source == "scene-labels" and path:
            train = f"scene-labels:{path}"
        else:
            fail(
                f"--retrieval-k: {model} records no training feature store; give the training "
                "photos' features with --train (a feature store, an .npz or scene-labels:NAME)"
            )
    try:
        rows = resolve(train)
        return geolocator.with_training_neighbours(rows.features, rows.truth, k=k)
    except GeoalignError as err:
        fail(f"--retrieval-k with --train {train}: {err}")


def _print_prediction(prediction) -> None:
    from rich.markup import escape
    from rich.table import Table

    if not prediction.ok:
        console.print(f"[red]✗ {escape(prediction.source)}[/]: {escape(prediction.error)}")
        return
    print_result(f"[bold]{escape(prediction.source)}[/]")  # a title would wrap at table width
    table = Table(show_edge=False)
    for column in ("#", "lat", "lon", "prob", "place"):
        table.add_column(column, justify="right" if column != "place" else "left")
    for rank, c in enumerate(prediction.candidates, 1):
        place = ""
        if c.place:
            place = ", ".join(
                p for p in (c.place["city"], c.place["region"], c.place["country_name"]) if p
            )
        table.add_row(str(rank), f"{c.lat:.4f}", f"{c.lon:.4f}", f"{c.prob:.4f}", place)
    print_result(table)
    if prediction.estimate is not None:
        e = prediction.estimate
        print_result(f"{e['kind']} estimate: {e['lat']:.4f}, {e['lon']:.4f}")
    for r in prediction.regions:
        print_result(r["summary"])
    if prediction.abstained is not None:
        print_result(f"abstained: {escape(prediction.abstained)}")


def predict(
    inputs: list[str] = typer.Argument(
        ...,
        help="Image files, folders, and/or CSV/TSV/Parquet manifests with a `path` or `image` "
        "column (relative paths are under the manifest's folder); and/or webdataset shards: a "
        ".tar file, a brace pattern ('wds/{000000..000003}.tar'), a folder of .tar files, a URL "
        "or pipe:. A shard sample's key names its prediction; lat/lon in its json/txt are "
        "ignored.",
    ),
    top_k: int = typer.Option(5, "--top-k", "-k", min=1),
    model: str = typer.Option("geoclip", help="Checkpoint name or folder."),
    backbone: str = typer.Option(
        "auto",
        help="Backbone spec (clip-vit-l14, hf:<dir>, torchvision:..., ...); auto = the model's.",
    ),
    gallery: str = typer.Option(
        "auto", help="Gallery name or CSV/Parquet file; auto = the model's (else geoclip-100k)."
    ),
    within: str | None = typer.Option(None, help="Countries/regions, e.g. FR or US-CA,MX."),
    near: str | None = typer.Option(None, help="lat,lon centre of a radius prior."),
    radius_km: float | None = typer.Option(None, help="Radius for --near, in km."),
    bbox: str | None = typer.Option(None, help="min_lat,min_lon,max_lat,max_lon."),
    land_only: bool = typer.Option(False, help="Only gallery points on land."),
    ten_crop: bool = typer.Option(False, help="Average the logits of 10 crops (official rule)."),
    estimate: str | None = typer.Option(
        None,
        help="Point estimate of each photo's distribution: top1, mode, mean, or median (the "
        "point with the least expected distance).",
    ),
    regions: str | None = typer.Option(
        None,
        metavar="P[,P...]",
        help="Confidence regions, e.g. 0.5,0.9: area and countries; outlines in --geojson and "
        "the maps.",
    ),
    min_separation_km: float = typer.Option(
        5.0,
        min=0,
        help="Merge a candidate into a more probable one closer than this (km; probabilities "
        "added): distinct top-k. 0 keeps near-duplicates.",
    ),
    abstain_above_km: float | None = typer.Option(
        None,
        min=0,
        help="Abstain where the 90% region is larger than a disc of this radius (km).",
    ),
    retrieval_k: int = typer.Option(
        0,
        "--retrieval-k",
        min=0,
        help="Add each photo's K nearest training photos' locations to its candidates "
        "(retrieval-augmented, as G3/Img2Loc); 0: off. Needs the training features (--train).",
    ),
    train: str | None = typer.Option(
        None,
        "--train",
        help="Training features for --retrieval-k: a feature store, an .npz or "
        "scene-labels:NAME (default: the data the model was trained on, when it recorded it).",
    ),
    batch_size: int = typer.Option(16, min=1),
    json_out: str | None = typer.Option(
        None,
        "--json",
        metavar="PATH|-",
        help="JSON Lines, one record per input; a file is appended to as it goes and a rerun "
        "resumes it; - writes to stdout.",
    ),
    csv_out: str | None = typer.Option(
        None, "--csv", metavar="PATH|-", help="CSV, one row per candidate; - writes to stdout."
    ),
    geojson_out: str | None = typer.Option(
        None,
        "--geojson",
        metavar="PATH|-",
        help="GeoJSON FeatureCollection, one point per candidate; - writes to stdout.",
    ),
    overwrite: bool = typer.Option(
        False, "--overwrite", help="Start the --json file afresh instead of resuming it."
    ),
    map_out: Path | None = typer.Option(None, "--map", help="Interactive HTML map of the top-k."),
    png_out: Path | None = typer.Option(None, "--png", help="Static PNG map of the top-k."),
    places: bool = typer.Option(True, help="Add nearest city, region and country."),
    device: str = typer.Option("cpu"),
    bf16: bool = typer.Option(False, help="Run the backbone in bfloat16."),
    half_gallery: bool = typer.Option(
        False,
        help="Also keep the gallery in float16 for single photos: ~3x faster gallery stage on a "
        "CPU, same top-k, probabilities within ~1e-4 (relative).",
    ),
    workers: int = typer.Option(0, min=0, help="Image decoding worker processes."),
    decode: str = typer.Option(
        "cpu",
        help="Where JPEGs are decoded: cpu (Pillow, in the workers) or gpu (nvJPEG on the "
        "model's GPU; needs --device cuda; the workers then only read the bytes).",
    ),
    recursive: bool = typer.Option(False, help="Also look for images in sub-folders."),
    quiet: bool = typer.Option(
        False, "--quiet", "-q", help="Results and errors only: no progress or status lines."
    ),
) -> None:
    """Predict where each photo was taken: top-k coordinates, probabilities and places.

    Results go to stdout (a table per photo, or the one format written to `-`); progress and
    errors go to stderr. Exit 0: all inputs predicted; 1: some could not be read; 2: usage.
    """
    import torch

    from geoalign.cli.output import STDOUT, prepare_jsonl
    from geoalign.data.images import expand_inputs
    from geoalign.geo.priors import parse_prior
    from geoalign.inference.distribution import ESTIMATES
    from geoalign.inference.locator import Geolocator, Prediction
    from geoalign.inference.prediction import record_settings

    targets = {"--json": json_out, "--csv": csv_out, "--geojson": geojson_out}
    piped = [name for name, target in targets.items() if target == STDOUT]
    if len(piped) > 1:
        fail(f"only one output can go to stdout, got {' and '.join(f'{n} -' for n in piped)}")
    _check_outputs({**targets, "--map": map_out, "--png": png_out})
    check_decode(decode, device)
    if device.startswith("cuda") and not torch.cuda.is_available():
        fail(f"--device {device}: no CUDA GPU is visible here; use --device cpu")
    say = (lambda _message: None) if quiet else console.print
    region_ps = _parse_regions(regions)
    if estimate is not None and estimate not in ESTIMATES:
        fail(f"--estimate {estimate}: expected one of {', '.join(ESTIMATES)}")
    prior = parse_prior(within, near, radius_km, bbox, land_only)
    if gallery != "auto" and (Path(gallery).suffix or Path(gallery).exists()):
        check_gallery_file(gallery)  # an empty one would only fail at the first photo
    loose, photos, shard_bad = _shard_photos(_expand_manifests(inputs))
    sources, problems = _scan_inputs(loose, recursive)
    if not sources and photos is None and all(not Path(p).is_symlink() for p, _ in problems):
        fail("; ".join(f"{path}: {reason}" for path, reason in problems))
    problems += shard_bad
    names = [s.name for s in expand_inputs(sources, recursive=recursive)]
    names += [path for path, _ in problems] + (photos.keys if photos is not None else [])
    n_inputs = len(names)
    settings = record_settings(
        model=model,
        backbone=backbone,
        gallery=gallery,
        top_k=top_k,
        prior=None if prior is None else str(prior),
        ten_crop=ten_crop,
        places=places,
        bf16=bf16,
        half_gallery=half_gallery,
        estimate=estimate,
        regions=list(region_ps) or None,
        abstain_above_km=abstain_above_km,
        min_separation_km=min_separation_km,
        retrieval_k=retrieval_k,
        train=train,
    )
    if train is not None and not retrieval_k:
        fail("--train gives the training photos for --retrieval-k: give --retrieval-k K too")
    resumed = None
    if json_out not in (None, STDOUT):
        resumed = prepare_jsonl(Path(json_out), settings, overwrite=overwrite)
        if resumed.torn:
            console.print(f"[yellow]{json_out}: cut off a torn last line (an interrupted write)[/]")
    wanted = set(names)  # records of inputs not in this run stay in the file but not in this run
    earlier = [r for r in resumed.records if r["source"] in wanted] if resumed else []
    skip = {r["source"] for r in earlier}
    if earlier:
        say(f"resuming: {len(earlier)} inputs already in {json_out}")
    if resumed and resumed.retried:
        say(f"retrying {resumed.retried} inputs that failed before")
    dtype = torch.bfloat16 if bf16 else torch.float32
    status = "loading model and gallery (embedded once, then cached)"
    with nullcontext() if quiet else console.status(status):
        kwargs = {"gallery_precision": "float16"} if half_gallery else {}
        geolocator = Geolocator.from_pretrained(
            model, backbone=backbone, gallery=gallery, device=device, dtype=dtype, **kwargs
        )
    if retrieval_k:
        with nullcontext() if quiet else console.status("embedding the training photos"):
            geolocator = _with_training_neighbours(geolocator, model, train, retrieval_k)
    todo = n_inputs - len(skip)
    with ExitStack() as stack:
        writers = _open_writers(stack, json_out, csv_out, geojson_out, earlier)
        bar = stack.enter_context(progress_bar(transient=True, disable=quiet))
        task = bar.add_task("predicting", total=todo)
        failed, mapped = 0, []
        bad = [Prediction(path, error=reason) for path, reason in problems if path not in skip]
        bar.advance(task, len(bad))
        runs = ([sources] if sources else []) + ([photos] if photos is not None else [])
        found = (
            geolocator.iter_predict(
                run,
                recursive=recursive,
                top_k=top_k,
                prior=prior,
                ten_crop=ten_crop,
                batch_size=batch_size,
                places=places,
                skip=skip,
                num_workers=workers,
                on_batch=lambda n: bar.advance(task, n),
                estimate=estimate,
                regions=region_ps,
                abstain_above_km=abstain_above_km,
                min_separation_km=min_separation_km,
                decode=decode,
            )
            for run in runs
        )
        for prediction in itertools.chain(bad, *found):
            record = prediction_record(prediction, settings)
            for writer in writers:
                writer.write(record)
                if prediction.distribution is not None and hasattr(writer, "add_distribution"):
                    collection = prediction.distribution.to_geojson(region_ps, estimate or "median")
                    writer.add_distribution(prediction.source, collection)
            failed += not prediction.ok
            if not piped or not prediction.ok:
                _print_prediction(prediction)
            if prediction.ok:
                mapped.append(prediction)
        for writer in writers:
            writer.close()
    _write_maps(mapped, map_out, png_out, regions=region_ps, estimate=estimate)
    written = ", ".join(t for t in targets.values() if t not in (None, STDOUT))
    say(f"predicted {todo - failed} of {todo} inputs" + (f" -> {written}" if written else ""))
    if failed:
        console.print(f"[yellow]{failed} of {todo} inputs could not be read[/]")
        raise typer.Exit(1)


def _parse_regions(text: str | None) -> tuple[float, ...]:
    """'0.5,0.9' -> (0.5, 0.9); each strictly between 0 and 1."""
    if not text:
        return ()
    out = []
    for part in text.split(","):
        try:
            p = float(part)
        except ValueError:
            fail(f"--regions {text}: {part.strip()!r} is not a number (e.g. --regions 0.5,0.9)")
        if not 0 < p < 1:
            fail(f"--regions {text}: {p:g} is not strictly between 0 and 1")
        out.append(p)
    return tuple(out)


def _check_outputs(targets: dict) -> None:
    """Refuse output paths that cannot be written before the model is loaded, not after."""
    for option, target in targets.items():
        if target is None or str(target) == "-":
            continue
        path = Path(target)
        if path.is_dir():
            fail(f"{option} {path}: is a folder; give a file name, e.g. {path / 'predictions'}")
        if not path.parent.is_dir() and path.parent.exists():
            fail(f"{option} {path}: {path.parent} is not a folder")


def _open_writers(stack: ExitStack, json_out, csv_out, geojson_out, earlier: list[dict]) -> list:
    """One writer per requested format; CSV and GeoJSON also get the records a resumed JSONL
    file already holds, so that every output covers every input."""
    from geoalign.cli.output import CsvWriter, GeoJsonWriter, JsonlWriter, open_target

    writers = []
    if json_out is not None:
        if json_out == "-":
            writers.append(JsonlWriter(sys.stdout))
        else:
            writers.append(JsonlWriter(stack.enter_context(open(json_out, "a", encoding="utf-8"))))
    for target, kind in ((csv_out, CsvWriter), (geojson_out, GeoJsonWriter)):
        if target is not None:
            writer = kind(stack.enter_context(open_target(target)))
            for record in earlier:
                writer.write(record)
            writers.append(writer)
    return writers


def _map_paths(base: Path, n: int) -> list[Path]:
    if n == 1:
        return [base]
    return [base.with_name(f"{base.stem}-{i + 1}{base.suffix}") for i in range(n)]


def _write_maps(
    predictions,
    map_out: Path | None,
    png_out: Path | None,
    *,
    regions: tuple[float, ...] = (),
    estimate: str | None = None,
) -> None:
    """One HTML and/or PNG map per prediction; with a distribution (--regions/--estimate), its
    heatmap, region outlines and point estimate are drawn too."""
    if not predictions or (map_out is None and png_out is None):
        return
    from geoalign.geo.maps import save_interactive_map, save_static_map
    from geoalign.geo.places import Place

    for out, save in ((map_out, save_interactive_map), (png_out, save_static_map)):
        if out is None:
            continue
        for path, p in zip(_map_paths(out, len(predictions)), predictions, strict=True):
            coords = [(c.lat, c.lon) for c in p.candidates]
            probs = [c.prob for c in p.candidates]
            named = all(c.place for c in p.candidates)
            kwargs = {
                "title": p.source,
                "places": [Place(**c.place) for c in p.candidates] if named else True,
            }
            if p.distribution is not None:
                kwargs.update(
                    distribution=p.distribution,
                    regions=tuple(regions) or (0.5, 0.9),
                    estimate=estimate or "median",
                )
            save(path, coords, probs, **kwargs)
            console.print(f"[green]map[/] {path}")


def register(app: typer.Typer) -> None:
    app.command("predict")(predict)
