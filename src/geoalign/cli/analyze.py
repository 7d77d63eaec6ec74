"""`geoalign analyze ...`: embedding maps (UMAP + k-means) and concept activation by error bin."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from geoalign.cli.common import console, fail, print_result
from geoalign.io_atomic import atomic_output

analyze_app = typer.Typer(
    help="Global analyses of a model: embedding maps, concept activation by error.",
    no_args_is_help=True,
)


def _data(model: str, features: str | None, benchmark: str | None, require_concepts: bool):
    from geoalign.interpret.data import check_width, load_feature_set
    from geoalign.interpret.loading import analysis_model
    from geoalign.models.registry import model_features

    net, path = analysis_model(model, require_concepts=require_concepts)
    fs = load_feature_set(features, benchmark=benchmark, model_features=model_features(net))
    check_width(fs, net.image_head.config.in_dim, "the model")
    return net, path, fs


@analyze_app.command("embeddings")
def embeddings(
    model: str = typer.Option(
        ..., "--model", "-m", help="Checkpoint or run folder (concept-aware or GeoCLIP)."
    ),
    benchmark: str = typer.Option(None, help="Benchmark whose photos to embed (e.g. im2gps3k)."),
    features: str = typer.Option(None, help="Or a feature store / .npz / scene-labels:NAME."),
    umap: bool = typer.Option(
        True, "--umap/--pca", help="UMAP (umap-learn) or PCA for the 2-D map."
    ),
    n_clusters: int = typer.Option(8, "--kmeans", help="k of k-means on the image embeddings."),
    joint: bool = typer.Option(True, help="Also the joint image / location / concept map."),
    max_images: int = typer.Option(3000, help="Analyse at most this many photos (fixed sample)."),
    seed: int = typer.Option(0),
    out: Path = typer.Option(Path("analysis"), "--out", "-o", help="Output folder."),
) -> None:
    """Image embeddings in 2-D with k-means clusters described by country and concepts (the
    concept-aware paper's Fig. 6), and the joint image/location/concept map (its Fig. 7)."""
    import numpy as np
    import torch

    from geoalign.interpret.cbm import country_labels
    from geoalign.interpret.data import image_embeddings
    from geoalign.interpret.embedding_plots import (
        joint_embedding_plot,
        kmeans,
        plot_clusters,
        reduce_2d,
        summarize_clusters,
    )

    net, path, fs = _data(model, features, benchmark, require_concepts=False)
    fs = fs.sample(max_images, seed)
    method = "umap" if umap else "pca"
    console.print(f"[cyan]•[/] embedding {len(fs):,} photos ({fs.source}); {method.upper()}")
    emb = image_embeddings(net, fs.features)
    clusters = kmeans(emb, n_clusters, seed)
    xy = reduce_2d(emb, method, seed=seed)
    countries = country_labels(fs.latlon)
    acts = names = None
    if hasattr(net, "concept_set"):
        from geoalign.nn.concept_basis import top_k_sparse

        with torch.inference_mode():
            acts = top_k_sparse(
                net.image_concepts(torch.from_numpy(emb)), net.concept_config.top_k
            ).numpy()
        names = net.concept_set.names
    summaries = summarize_clusters(clusters, countries, acts, names)
    out.mkdir(parents=True, exist_ok=True)
    name = "GeoCLIP" if str(path) == "geoclip" else Path(str(path)).name
    if name in {"model", "last", "best"}:  # a run's export folder: the run's name says more
        name = Path(str(path)).parent.name
    png = plot_clusters(xy, clusters, fs.latlon, summaries, out / "image_embeddings.png",
                        title=f"{name} image embeddings", method=method.upper())  # fmt: skip
    import pandas as pd

    with atomic_output(out / "image_embeddings.csv") as tmp:
        pd.DataFrame({"id": fs.ids, "lat": fs.latlon[:, 0], "lon": fs.latlon[:, 1],
                      "country": countries, "cluster": clusters + 1, "x": xy[:, 0],
                      "y": xy[:, 1]}).to_csv(tmp, index=False)  # fmt: skip
    report = {"model": str(path), "source": fs.source, "images": len(fs), "method": method,
              "clusters": [s.__dict__ for s in summaries]}  # fmt: skip
    for s in summaries:
        console.print(f"  {s.label()}")
    console.print(f"clusters: [bold]{png}[/]")
    if joint:
        with torch.inference_mode():
            param = next(net.parameters())
            loc = torch.cat([net.encode_locations(c.to(param.device)).float().cpu()
                             for c in torch.as_tensor(fs.latlon, dtype=torch.float32).split(4096)]).numpy()  # fmt: skip
        if hasattr(net, "basis"):
            concept_emb = net.basis.concept_embeddings().detach().cpu().numpy()
            concept_names = net.concept_set.names
        else:
            fail(
                "the joint map needs concept embeddings: use a concept-aware model (or --no-joint)"
            )
        jpng, gap = joint_embedding_plot(
            emb, loc, concept_emb, concept_names, out / "joint_embeddings.png",
            method=method, seed=seed, title=name,
        )  # fmt: skip
        report["modality_gap"] = gap
        console.print(
            f"joint map: [bold]{jpng}[/] (paired image-location cosine "
            f"{gap['paired_image_location_cosine']:.3f}, image-concept gap {gap['gap_image_concept']:.3f})"
        )
    with atomic_output(out / "embeddings.json") as tmp:
        tmp.write_text(json.dumps(report, indent=2, default=str))
    with atomic_output(out / "image_embeddings_2d.npy") as tmp:
        np.save(tmp, xy)


@analyze_app.command("error-bins")
def error_bins(
    model: str = typer.Option(..., "--model", "-m", help="Concept-aware checkpoint or run folder."),
    benchmark: str = typer.Option(None, help="Benchmark (e.g. im2gps3k)."),
    features: str = typer.Option(None, help="Or a feature store / .npz / scene-labels:NAME."),
    gallery: str = typer.Option("geoclip-100k", help="GPS gallery for the predictions."),
    edges: str = typer.Option("0,25,200,750", help="Error-interval edges in km."),
    top: int = typer.Option(8, help="Concepts listed per interval (top and lowest)."),
    min_count: int = typer.Option(
        5, help="A concept must be active in this many photos of an interval."
    ),
    top_k: int = typer.Option(None, help="Concepts kept per image (default: the model's, 20)."),
    out: Path = typer.Option(Path("analysis"), "--out", "-o", help="Output folder."),
) -> None:
    """Median concept activation per geolocation-error interval (the concept-aware paper's
    Table 3): which concepts the well-located and the badly located photos express."""
    import torch

    from geoalign.geo.distance import haversine_km
    from geoalign.interpret.data import image_embeddings, retrieve_top1
    from geoalign.interpret.error_bins import activation_by_error_bin, format_table3
    from geoalign.nn.concept_basis import top_k_sparse

    try:
        bins = [float(x) for x in edges.split(",")]
    except ValueError:
        fail(f"--edges must be numbers separated by commas, got {edges!r}")
    net, path, fs = _data(model, features, benchmark, require_concepts=True)
    console.print(f"[cyan]•[/] predicting {len(fs):,} photos ({fs.source}) against {gallery}")
    emb = image_embeddings(net, fs.features)
    pred = retrieve_top1(net, emb, gallery)
    dist = haversine_km(fs.latlon[:, 0], fs.latlon[:, 1], pred[:, 0], pred[:, 1])
    with torch.inference_mode():
        acts = top_k_sparse(
            net.image_concepts(torch.from_numpy(emb)), top_k or net.concept_config.top_k
        )
    table = activation_by_error_bin(
        acts.numpy(), dist, net.concept_set.names, edges=bins, min_count=min_count
    )
    out.mkdir(parents=True, exist_ok=True)
    with atomic_output(out / "concepts_by_error_bin.csv") as tmp:
        table.to_csv(tmp, index=False)
    md = format_table3(table, top)
    with atomic_output(out / "concepts_by_error_bin.md") as tmp:
        tmp.write_text(md + "\n")
    counts = table.groupby("bin", sort=False)["n_images"].first()
    console.print(", ".join(f"{b}: {n} photos" for b, n in counts.items()))
    print_result(md)
    console.print(f"table: [bold]{out / 'concepts_by_error_bin.md'}[/]")


def register(app: typer.Typer) -> None:
    app.add_typer(analyze_app, name="analyze")
