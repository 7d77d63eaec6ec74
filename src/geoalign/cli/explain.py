"""`geoalign explain ...`: concept explanations of photos, the country concept bottleneck, and the
global decision rules between two countries.

`geoalign explain photo.jpg --model M` is short for `geoalign explain image photo.jpg --model M`.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import typer
from typer.core import TyperGroup

from geoalign.cli.common import console, fail
from geoalign.cli.common import out as result_console
from geoalign.io_atomic import atomic_output

DEFAULT_SUBCOMMAND = "image"


class _DefaultToImage(TyperGroup):
    """A group whose first argument, when it is not a subcommand, is a photo for `image`."""

    def parse_args(self, ctx, args):  # type: ignore[no-untyped-def]
        if args and args[0] not in self.commands and args[0] not in {"--help", "-h"}:
            args = [DEFAULT_SUBCOMMAND, *args]
        return super().parse_args(ctx, args)


explain_app = typer.Typer(
    cls=_DefaultToImage,
    help="Concept explanations: `explain PHOTO --model M`, `explain rules`, `explain fit-cbm`.",
    no_args_is_help=True,
)


def _print_explanation(exp) -> None:
    """The explanation is the result: stdout."""
    c0 = exp.candidates[0] if exp.candidates else None
    where = ""
    if c0:
        place = c0.get("place") or {}
        name = ", ".join(
            p for p in (place.get("city"), place.get("region"), place.get("country_name")) if p
        )
        where = f"{name} ({c0['lat']:.4f}, {c0['lon']:.4f}), p = {100 * c0['prob']:.2g}%"
    result_console.print(f"[bold]{exp.source}[/]: {where}")
    if exp.truth is not None:
        result_console.print(
            f"  true location: {exp.truth_place} ({exp.truth[0]:.4f}, {exp.truth[1]:.4f})"
        )
    if exp.country:
        cc = exp.country
        result_console.print(
            f"  country (concept bottleneck): [bold]{cc['name']}[/] ({cc['code']}) {100 * cc['prob']:.0f}%"
        )
        for c in exp.contributions[:8]:
            result_console.print(
                f"    {100 * c.contribution:+6.1f}%  {c.concept} [dim]({c.category}, activation {c.activation:.3f})[/]"
            )
    acts = ", ".join(f"{a.concept} {a.activation:.3f}" for a in exp.activations[:8])
    result_console.print(f"  strongest concepts: {acts}")
    for note in exp.notes:
        result_console.print(f"  [dim]{note}[/]")


def _load(model: str):
    from geoalign.interpret.cbm import ConceptBottleneck, cbm_dir
    from geoalign.interpret.loading import analysis_model

    net, path = analysis_model(model)
    cbm = None
    if (cbm_dir(path) / "cbm.json").is_file():
        cbm = ConceptBottleneck.load(cbm_dir(path))
    return net, path, cbm


@explain_app.command("image")
def image(
    inputs: list[str] = typer.Argument(
        None, help="Photos or folders (omit with --benchmark/--features)."
    ),
    model: str = typer.Option(..., "--model", "-m", help="Concept-aware checkpoint or run folder."),
    backbone: str = typer.Option(
        None, help="Image backbone spec (default: the one the model was trained on)."
    ),
    features: str = typer.Option(
        None, help="Explain rows of a feature store / .npz instead of photos."
    ),
    benchmark: str = typer.Option(None, help="Explain rows of a benchmark (scene-label models)."),
    index: list[int] = typer.Option(
        [], "--index", "-i", help="Row(s) of --features/--benchmark (repeatable)."
    ),
    gallery: str = typer.Option("geoclip-100k", help="GPS gallery for the location."),
    top_k: int = typer.Option(None, help="Concepts kept per image (default: the model's, 20)."),
    out: Path = typer.Option(
        Path("explanations"), "--out", "-o", help="Folder for charts and JSON."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the explanations as JSON."),
) -> None:
    """Where a photo was taken, its strongest concepts, and each concept's share in the country
    decision (label-free concept bottleneck): a chart (PNG) and JSON per photo."""
    from geoalign.interpret.explain import (
        explain_features,
        explain_images,
        explanation_record,
        plot_explanation,
    )
    from geoalign.interpret.loading import stored_calibration

    net, path, cbm = _load(model)
    cal = stored_calibration(path)
    images: list = []
    if features or benchmark:
        from geoalign.interpret.data import check_width, load_feature_set
        from geoalign.models.registry import model_features

        fs = load_feature_set(features, benchmark=benchmark, model_features=model_features(net))
        check_width(fs, net.image_head.config.in_dim, "the model")
        rows = list(index) or [0]
        bad = [r for r in rows if not 0 <= r < len(fs)]
        if bad:
            fail(f"--index {bad[0]} is outside 0..{len(fs) - 1} ({fs.source})")
        sel = fs.take(rows)
        sources = [f"{fs.source}#{r} ({sel.ids[i]})" for i, r in enumerate(rows)]
        exps = explain_features(
            net, sel.features, sources, gallery=gallery, cbm=cbm, top_k=top_k, calibration=cal
        )
        images = [None] * len(exps)
        from geoalign.geo.places import nearest_places

        for exp, (lat, lon), place in zip(
            exps, sel.latlon, nearest_places(sel.latlon), strict=True
        ):
            exp.truth = (float(lat), float(lon))
            exp.truth_place = ", ".join(p for p in (place.city, place.country_name) if p)
        stems = [f"row{r}_{Path(str(i)).stem}" for r, i in zip(rows, sel.ids, strict=True)]
    else:
        if not inputs:
            fail("give photos (or --features / --benchmark with --index)")
        from geoalign.nn.backbones import load_backbone

        spec = backbone or net.config.features
        if not spec:
            fail("the checkpoint does not record its backbone: pass --backbone")
        from geoalign.data.scene_labels import SCENE_LABELS

        if spec == SCENE_LABELS:
            fail(
                "this model reads Places365 scene-label descriptors, not photos: explain benchmark "
                "rows with --benchmark im2gps3k --index N"
            )
        bb = load_backbone(spec)
        exps, images, errors = explain_images(
            net, bb, list(inputs), gallery=gallery, cbm=cbm, top_k=top_k, calibration=cal
        )
        for p, why in errors:
            console.print(f"[yellow]skipped[/] {p}: {why}")
        if not exps:
            fail("no readable photo among the inputs")
        stems = [Path(e.source).stem for e in exps]
    out.mkdir(parents=True, exist_ok=True)  # only once there is something to write
    results = []
    for n, (exp, img) in enumerate(zip(exps, images, strict=True)):
        stem = f"{n:03d}_" + re.sub(r"[^\w.-]+", "_", stems[n])[:80]
        png = plot_explanation(exp, out / f"{stem}.png", image=img)
        record = explanation_record(exp, str(path), chart=str(png))
        with atomic_output(out / f"{stem}.json") as tmp:
            tmp.write_text(json.dumps(record, indent=2))
        results.append(record)
        if not as_json:
            _print_explanation(exp)
            console.print(f"  chart: [bold]{png}[/]")
    if as_json:
        typer.echo(json.dumps(results, indent=2))


@explain_app.command("fit-cbm")
def fit_cbm(
    model: str = typer.Option(..., "--model", "-m", help="Concept-aware checkpoint or run folder."),
    features: str = typer.Option(
        None, help="Labelled training features: store, .npz or scene-labels:NAME."
    ),
    benchmark: str = typer.Option(None, help="Or a benchmark (scene-label models), e.g. yfcc26k."),
    target_nonzero: int = typer.Option(30, help="Concepts used per country (sparsity target)."),
    min_per_class: int = typer.Option(
        20, help="Countries with fewer training photos are left out."
    ),
    seed: int = typer.Option(0),
) -> None:
    """Fit the label-free concept bottleneck for countries and store it next to the model."""
    from geoalign.interpret.cbm import cbm_dir, fit_country_cbm
    from geoalign.interpret.data import check_width, load_feature_set
    from geoalign.interpret.loading import analysis_model
    from geoalign.models.registry import model_features

    net, path = analysis_model(model)
    fs = load_feature_set(features, benchmark=benchmark, model_features=model_features(net))
    check_width(fs, net.image_head.config.in_dim, "the model")
    console.print(f"[cyan]•[/] fitting the country bottleneck on {len(fs):,} photos ({fs.source})")
    cbm = fit_country_cbm(
        net,
        fs.features,
        fs.latlon,
        target_nonzero=target_nonzero,
        min_per_class=min_per_class,
        seed=seed,
    )
    cbm.save(cbm_dir(path))
    m = cbm.metrics
    console.print(
        f"[green]saved[/] {cbm_dir(path)}: {m['classes']} countries, {m['nonzero_per_class']:.1f} "
        f"concepts each; accuracy train {100 * m['train_accuracy']:.1f}%, held-out "
        f"{100 * m['val_accuracy']:.1f}% (majority class {100 * m['val_majority_baseline']:.1f}%)"
    )


@explain_app.command("rules")
def rules(
    countries: str = typer.Option(..., "--countries", help="Two countries, e.g. CN,JP."),
    model: str = typer.Option(..., "--model", "-m", help="Concept-aware checkpoint or run folder."),
    benchmark: str = typer.Option(None, help="Benchmark whose photos to analyse (e.g. im2gps3k)."),
    features: str = typer.Option(None, help="Or a feature store / .npz / scene-labels:NAME."),
    by: str = typer.Option(
        "prediction", help="Group photos by the model's predicted country or the truth."
    ),
    gallery: str = typer.Option("geoclip-100k", help="GPS gallery for predictions."),
    top: int = typer.Option(8, help="Concepts shown per country."),
    top_k: int = typer.Option(None, help="Concepts kept per image (default: the model's, 20)."),
    out: Path = typer.Option(Path("rules"), "--out", "-o", help="Output folder."),
) -> None:
    """Global decision rules between two countries: the concepts whose activation differs most,
    as a table, a Sankey diagram (PNG) and an interactive one (HTML, needs plotly)."""
    import torch

    from geoalign.geo.regions import load_countries
    from geoalign.interpret.cbm import country_labels
    from geoalign.interpret.data import (
        check_width,
        image_embeddings,
        load_feature_set,
        retrieve_top1,
    )
    from geoalign.interpret.rules import decision_rules, sankey_html, sankey_png
    from geoalign.models.registry import model_features
    from geoalign.nn.concept_basis import top_k_sparse

    parts = [c.strip() for c in countries.split(",") if c.strip()]
    if len(parts) != 2:
        fail(f"--countries needs two countries separated by a comma, got {countries!r}")
    atlas = load_countries()
    codes = [atlas.countries[int(atlas.resolve(c)[0])].code for c in parts]
    if by not in {"prediction", "truth"}:
        fail(f"--by must be prediction or truth, got {by!r}")
    net, path, _ = _load(model)
    fs = load_feature_set(features, benchmark=benchmark, model_features=model_features(net))
    check_width(fs, net.image_head.config.in_dim, "the model")
    emb = image_embeddings(net, fs.features)
    with torch.inference_mode():
        z = net.image_concepts(torch.from_numpy(emb))
        acts = top_k_sparse(z, top_k or net.concept_config.top_k).numpy()
    where = retrieve_top1(net, emb, gallery) if by == "prediction" else fs.latlon
    labels = country_labels(where)
    s = net.concept_set
    result = decision_rules(
        acts,
        labels,
        s.names,
        [c.category for c in s],
        [c.group for c in s],
        codes[0],
        codes[1],
        top=top,
    )
    names = {c: atlas.by_code()[c].name for c in codes}
    out.mkdir(parents=True, exist_ok=True)
    stem = f"rules_{codes[0]}_{codes[1]}"
    with atomic_output(out / f"{stem}_all.csv") as tmp:
        result.table.sort_values("diff", ascending=False).to_csv(tmp, index=False)
    with atomic_output(out / f"{stem}.csv") as tmp:
        result.rules().to_csv(tmp, index=False)
    png = sankey_png(result, out / f"{stem}_sankey.png", names)
    html = None
    try:
        html = sankey_html(result, out / f"{stem}_sankey.html", names)
    except Exception as err:  # plotly is optional: the PNG is the primary output
        console.print(f"[dim]no HTML Sankey: {err}[/]")
    console.print(
        f"[cyan]•[/] {result.n_a} photos {by} {names[codes[0]]}, {result.n_b} {by} {names[codes[1]]} "
        f"({fs.source})"
    )
    result_console.print(
        f"share of photos with the concept among their top {top_k or net.concept_config.top_k}:"
    )
    for code, frame in ((codes[0], result.for_a), (codes[1], result.for_b)):
        items = ", ".join(
            f"{r.concept} ({100 * r.share_a:.0f}% vs {100 * r.share_b:.0f}%)"
            for r in frame.itertuples()
        )
        result_console.print(f"[bold]{names[code]}[/]: {items}")
    console.print(f"Sankey: [bold]{png}[/]" + (f", {html}" if html else ""))


def register(app: typer.Typer) -> None:
    app.add_typer(explain_app, name="explain")
