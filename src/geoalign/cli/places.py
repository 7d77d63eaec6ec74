"""`geoalign places`: offline place names, country/region names for priors, and prior checks."""

from __future__ import annotations

import json

import typer
from rich.markup import escape

from geoalign.cli.common import fail, print_result

places_app = typer.Typer(
    help="Offline place names (GeoNames, Natural Earth) and geographic priors.",
    no_args_is_help=True,
)

_COAST_HELP = "Points offshore within this many km of a country count as in it."


def _parse_points(values: list[str]) -> list[tuple[float, float]]:
    """Accept `LAT LON [LAT LON ...]` or `LAT,LON [LAT,LON ...]`."""
    tokens = [t for v in values for t in v.replace(",", " ").split()]
    try:
        numbers = [float(t) for t in tokens]
    except ValueError:
        fail(f"coordinates must be numbers, got {' '.join(values)!r}")
    if not numbers or len(numbers) % 2:
        fail(f"give latitude/longitude pairs (LAT LON or LAT,LON), got {' '.join(values)!r}")
    return list(zip(numbers[::2], numbers[1::2], strict=True))


@places_app.command(
    "lookup",
    context_settings={"ignore_unknown_options": True},  # so that `-122.4` is a value, not an option
)
def lookup(
    coords: list[str] = typer.Argument(
        ..., help="LAT LON pairs, e.g. `48.8566 2.3522 35.68,139.69`."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print JSON lines instead of a table."),
    coast_km: float = typer.Option(5.0, "--coast-km", min=0, help=_COAST_HELP),
) -> None:
    """Town (the most populous one covering the point, else the nearest), region and country of
    each point, offline; points at sea name the nearest coast within 100 km."""
    from geoalign.errors import GeoalignError
    from geoalign.geo.places import nearest_places

    points = _parse_points(coords)
    try:
        found = nearest_places(points, coast_km=coast_km)
    except GeoalignError as err:
        fail(escape(str(err)))
    if as_json:
        for (lat, lon), place in zip(points, found, strict=True):
            typer.echo(json.dumps({"lat": lat, "lon": lon, **place._asdict()}, ensure_ascii=False))
        return
    from rich.table import Table

    table = Table("lat", "lon", "place", "region", "country", "km to place")
    for (lat, lon), p in zip(points, found, strict=True):
        if p.at_sea and not p.country_code:
            country = f"at sea, {p.coast_km:,.0f} km from land"
        elif p.at_sea:
            country = f"{p.coast_km:,.0f} km off {p.country_name} ({p.country_code})"
        else:
            country = f"{p.country_name} ({p.country_code})"
        cells = (f"{lat:g}", f"{lon:g}", p.city, p.region, country, f"{p.distance_km:.1f}")
        table.add_row(*(escape(c) for c in cells))
    print_result(table)


@places_app.command("countries")
def countries(
    search: str = typer.Argument("", help="Only names/codes containing this text."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON lines instead of a table."),
) -> None:
    """Country codes and names accepted by `--within` (Natural Earth admin-0)."""
    from rich.table import Table

    from geoalign.geo.regions import load_countries, normalize_name

    key = normalize_name(search)
    table = Table("code", "alpha-3", "name", "type")
    rows = []
    for code, country in sorted(load_countries().by_code().items()):
        text = normalize_name(f"{code} {country.alpha3} {country.name}")
        if key and key not in text:
            continue
        row = {"code": code, "alpha3": country.alpha3, "name": country.name, "type": country.kind}
        rows.append(row)
        table.add_row(*row.values())
    if not rows:
        fail(f"no country matches {search!r}")
    if as_json:
        for row in rows:
            typer.echo(json.dumps(row, ensure_ascii=False))
    else:
        print_result(table)


@places_app.command("regions")
def regions(
    country: str = typer.Argument(..., help="Country code or name, e.g. US or Germany."),
    as_json: bool = typer.Option(False, "--json", help="JSON lines instead of text."),
) -> None:
    """First-level regions (GeoNames admin-1) of a country, usable as `--within CC/NAME`."""
    from geoalign.errors import GeoalignError
    from geoalign.geo.places import default
    from geoalign.geo.regions import load_countries

    try:
        atlas = load_countries()
        code = atlas.countries[atlas.resolve(country)[0]].code
    except GeoalignError as err:
        fail(escape(str(err)))
    names = default().region_names(code)
    if not names:
        fail(f"GeoNames lists no first-level regions for {code}")
    for name in names:
        if as_json:
            record = {"country": code, "region": name, "within": f"{code}/{name}"}
            typer.echo(json.dumps(record, ensure_ascii=False))
        else:
            typer.echo(f"{code}/{name}")


@places_app.command("prior")
def prior(
    gallery: str = typer.Option(
        "geoclip-100k", help="Named gallery or CSV/Parquet file with lat, lon."
    ),
    within: str | None = typer.Option(
        None, help="Countries/regions, comma-separated: FR,ES or US-CA or US/California."
    ),
    near: str | None = typer.Option(None, help="Centre 'LAT,LON' for --radius-km."),
    radius_km: float | None = typer.Option(None, help="Radius around --near, in km."),
    bbox: str | None = typer.Option(
        None, help="'MIN_LAT,MIN_LON,MAX_LAT,MAX_LON' (MIN_LON>MAX_LON crosses 180)."
    ),
    land_only: bool = typer.Option(False, "--land-only", help="Drop open-sea gallery points."),
    coast_km: float = typer.Option(5.0, "--coast-km", min=0, help=_COAST_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object instead."),
) -> None:
    """How many gallery points a prior (--within, --near/--radius-km, --bbox, --land-only) keeps."""
    import time

    from geoalign.data.galleries import load_gallery
    from geoalign.errors import GeoalignError
    from geoalign.geo.priors import parse_prior

    try:
        rule = parse_prior(
            within=within,
            near=near,
            radius_km=radius_km,
            bbox=bbox,
            land_only=land_only,
            coast_km=coast_km,
        )
        if rule is None:
            fail("give at least one of --within, --near/--radius-km, --bbox, --land-only")
        table = load_gallery(gallery)
        latlon = table[["lat", "lon"]].to_numpy()
        start = time.perf_counter()
        kept = rule.indices(latlon)
        seconds = time.perf_counter() - start
    except GeoalignError as err:
        fail(escape(str(err)))
    if as_json:
        record = {
            "prior": str(rule),
            "gallery": gallery,
            "kept": int(kept.size),
            "total": len(latlon),
            "seconds": round(seconds, 4),
        }
        typer.echo(json.dumps(record, ensure_ascii=False))
        return
    print_result(
        f"prior [bold]{escape(str(rule))}[/]: keeps {kept.size:,} of {len(latlon):,} gallery points "
        f"({100 * kept.size / len(latlon):.2f}%) in {seconds:.2f} s"
    )


def register(app: typer.Typer) -> None:
    app.add_typer(places_app, name="places")
