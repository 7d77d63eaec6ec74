"""`geoalign concepts ...`: the concept sets, concept similarity maps, and building sets."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from geoalign.cli.common import console, fail, print_result
from geoalign.io_atomic import atomic_output

concepts_app = typer.Typer(
    help="Concept sets (list, build, enrich) and concept similarity maps.", no_args_is_help=True
)


@concepts_app.command("list")
def list_concepts(
    concept_set: str = typer.Argument(
        "geography", help="A bundled set (geography, general) or your file (.yaml, .csv, .txt)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """Show a concept set by category (bundled sets: geography, general)."""
    from rich.table import Table

    from geoalign.data.concept_sets import describe, list_concept_sets, load_concept_set

    s = load_concept_set(concept_set)
    rows = describe(s)
    if as_json:
        typer.echo(
            json.dumps(
                {
                    "name": s.name,
                    "template": s.template,
                    "size": len(s),
                    "categories": [
                        {"group": g, "category": c, "concepts": names} for g, c, names in rows
                    ],
                },
                indent=2,
            )
        )
        return
    tbl = Table(
        title=f"{s.title or s.name}: {len(s)} concepts in {len(rows)} categories "
        f"(template {s.template!r})",
        title_justify="left",
        show_lines=True,
    )
    tbl.add_column("group", style="dim")
    tbl.add_column("category", style="bold")
    tbl.add_column("n", justify="right")
    tbl.add_column("concepts")
    for group, cat, names in rows:
        tbl.add_row(group, cat, str(len(names)), ", ".join(names))
    print_result(tbl)
    others = [n for n in list_concept_sets() if n != s.name]
    if others:
        console.print(f"[dim]other bundled sets: {', '.join(others)}[/]")


@concepts_app.command("map")
def concept_map(
    concept: str = typer.Argument(..., help="A concept of the model's set, or any text."),
    model: str = typer.Option(
        ..., "--model", "-m", help="Concept-aware checkpoint or run folder, or `geoclip`."
    ),
    region: str = typer.Option(
        "US-states",
        "--region",
        help="countries, grid, or COUNTRY-states (US-states, CN-provinces).",
    ),
    reference: Path = typer.Option(
        None, "--reference", help="CSV of region name + value (e.g. forest cover %) to correlate."
    ),
    region_column: str = typer.Option(None, help="Reference column with region names."),
    value_column: str = typer.Option(None, help="Reference column with values."),
    spacing_km: float = typer.Option(None, help="Sample spacing (default 40 km states, 100 km)."),
    text_encoder: str = typer.Option(
        None, help="Text encoder for texts outside the model's concept set (default: the model's)."
    ),
    out: Path = typer.Option(Path("concept-maps"), "--out", "-o", help="Output folder."),
) -> None:
    """Similarity of location embeddings to a concept, per region or on a grid, with Pearson ρ
    against a reference table (the concept-aware paper's Fig. 5)."""
    import numpy as np

    from geoalign.interpret.concept_maps import (
        aggregate,
        compare_reference,
        concept_similarity,
        plot_concept_map,
        region_points,
    )
    from geoalign.interpret.loading import analysis_model

    net, path = analysis_model(model, require_concepts=False)
    encoder = None
    in_set = getattr(net, "concept_set", None) is not None and concept in net.concept_set
    if not in_set:
        from geoalign.nn.text_encoders import load_text_encoder

        spec = text_encoder or (
            net.concept_config.text_encoder if hasattr(net, "concept_config") else "clip-vit-l14"
        )
        encoder = load_text_encoder(spec, vocabulary=[concept])
    console.print(f"[cyan]•[/] sampling points for {region}")
    points = region_points(region, spacing_km)
    if len(points.latlon) == 0:
        fail(f"no sample points in {region} at this spacing; lower --spacing-km")
    values, how = concept_similarity(net, concept, points.latlon, text_encoder=encoder)
    regions = aggregate(points, values) if points.kind != "grid" else None
    joined = stats = None
    if reference is not None:
        if regions is None:
            fail("--reference needs regions (countries or COUNTRY-states), not a grid")
        joined, stats = compare_reference(
            regions, points, reference, region_col=region_column, value_col=value_column
        )
    out.mkdir(parents=True, exist_ok=True)
    stem = f"{concept.replace(' ', '_').replace('/', '_')}_{region}"
    if regions is not None:
        with atomic_output(out / f"{stem}_regions.csv") as tmp:
            regions.to_csv(tmp, index=False)
    else:
        with atomic_output(out / f"{stem}_grid.csv") as tmp:
            np.savetxt(
                tmp,
                np.column_stack([points.latlon, values]),
                delimiter=",",
                header="lat,lon,similarity",
                comments="",
            )
    name = "GeoCLIP" if str(path) == "geoclip" else Path(str(path)).name
    if name in {"model", "last", "best"}:  # a run's export folder: the run's name says more
        name = Path(str(path)).parent.name
    png = plot_concept_map(
        points, values, concept, out / f"{stem}.png",
        regions=regions, joined=joined, stats=stats, model_name=name,
    )  # fmt: skip
    summary = {"concept": concept, "region": region, "model": str(path), "similarity": how,
               "points": int(len(points.latlon)), **(stats or {})}  # fmt: skip
    if joined is not None:
        with atomic_output(out / f"{stem}_vs_reference.csv") as tmp:
            joined.to_csv(tmp, index=False)
    with atomic_output(out / f"{stem}.json") as tmp:
        tmp.write_text(json.dumps(summary, indent=2))
    console.print(f"[cyan]•[/] {how}; {len(points.latlon):,} points")
    if regions is not None:
        top = regions.nlargest(5, "similarity")
        labels = top["name"] if "name" in top else top["region"]
        console.print("highest: " + ", ".join(f"{r} ({v:.3f})" for r, v in
                                              zip(labels, top["similarity"], strict=True)))  # fmt: skip
    if stats is not None:
        console.print(
            f"Pearson ρ = [bold]{stats['pearson_r']:.4f}[/] (p = {stats['p_value']:.2g}, "
            f"n = {stats['n_regions']} regions)"
            + (
                f"; unmatched reference rows: {', '.join(stats['unmatched'][:8])}"
                if stats["unmatched"]
                else ""
            )  # fmt: skip
        )
    console.print(f"map: [bold]{png}[/]")


@concepts_app.command("build-general")
def build_general(
    captions: Path = typer.Option(..., "--captions", help="Text file, one caption per line."),
    out: Path = typer.Option(..., "--out", "-o", help="Output concept set (.yaml)."),
    n_words: int = typer.Option(10000, help="Most frequent single words kept."),
    n_bigrams: int = typer.Option(5000, help="Most frequent two-word phrases kept."),
    min_count: int = typer.Option(2, help="Drop terms seen fewer times."),
    select: int = typer.Option(
        None,
        help="Keep only the K concepts that SpLiCE decompositions of --image-features use most.",
    ),
    image_features: str = typer.Option(
        None, help="Feature store / .npz of CLIP image embeddings (for --select)."
    ),
    text_encoder: str = typer.Option("clip-vit-l14", help="CLIP text tower matching the images."),
    l1_penalty: float = typer.Option(0.25, help="SpLiCE sparsity penalty."),
) -> None:
    """Build a general vocabulary the SpLiCE way: frequent words and bigrams of a caption corpus,
    optionally reduced to the K concepts that sparse decompositions of your images use most."""
    from geoalign.data.concept_sets import (
        Concept,
        ConceptSet,
        caption_vocabulary,
        splice_select,
    )

    if not captions.is_file():
        fail(f"{captions}: caption file not found")
    with captions.open(encoding="utf-8", errors="replace") as fh:
        vocab = caption_vocabulary(fh, n_words=n_words, n_bigrams=n_bigrams, min_count=min_count)
    if not vocab:
        fail(f"{captions}: no term occurs {min_count} times or more")
    cset = ConceptSet(
        name=out.stem,
        concepts=tuple(
            Concept(v, "unigram" if " " not in v else "bigram", "general") for v in vocab
        ),
        title=f"SpLiCE-style vocabulary of {captions.name}",
        source=str(captions),
    )
    if select:
        if not image_features:
            fail("--select needs --image-features (CLIP image embeddings of your images)")
        from geoalign.interpret.data import load_feature_set
        from geoalign.nn.text_encoders import encode_concepts, load_text_encoder

        feats = load_feature_set(image_features).features
        enc = load_text_encoder(text_encoder, vocabulary=cset.texts())
        emb = encode_concepts(enc, cset.texts()).numpy()
        if emb.shape[1] != feats.shape[1]:
            fail(f"text embeddings are {emb.shape[1]}-d, image features {feats.shape[1]}-d")
        cset, _ = splice_select(cset, emb, feats, select, l1_penalty=l1_penalty)
    cset.save(out)
    console.print(f"[green]wrote[/] {out}: {len(cset)} concepts")


@concepts_app.command("enrich")
def enrich(
    concept_set: str = typer.Argument(..., help="Set to enrich (bundled name or file)."),
    out: Path = typer.Option(..., "--out", "-o", help="Output .yaml (review it before use)."),
    llm_url: str = typer.Option(
        ..., help="OpenAI-compatible endpoint, e.g. http://localhost:8000/v1."
    ),
    llm_model: str = typer.Option(..., help="Model name at that endpoint."),
    api_key_env: str = typer.Option("OPENAI_API_KEY", help="Environment variable with the key."),
    no_key: bool = typer.Option(False, "--no-key", help="Send no key (local servers)."),
    per_category: int = typer.Option(10, help="New concepts asked for per category."),
    category: list[str] = typer.Option([], help="Only these categories (repeatable)."),
) -> None:
    """Ask a language model YOU configure for more concepts per category (optional; off unless
    run). The result is a new file for manual review, as in the paper's step 3."""
    from geoalign.data.concept_sets import load_concept_set
    from geoalign.interpret.llm_enrich import enrich_concepts, openai_compatible

    base = load_concept_set(concept_set)
    complete = openai_compatible(llm_url, llm_model, api_key_env=None if no_key else api_key_env)
    enriched, added = enrich_concepts(
        base, complete, per_category=per_category, categories=category or None
    )
    enriched.save(out)
    for cat, names in added.items():
        console.print(f"[bold]{cat}[/]: {', '.join(names) or '(nothing new)'}")
    console.print(
        f"[green]wrote[/] {out}: {len(enriched)} concepts ({len(enriched) - len(base)} new)"
    )


def register(app: typer.Typer) -> None:
    app.add_typer(concepts_app, name="concepts")
