"""`geoalign locate-text`: where does a description point? (GeoCLIP §4.4 text queries)."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from geoalign.cli.common import console, fail, print_result


def locate_text(
    texts: list[str] = typer.Argument(..., help='Descriptions, e.g. "snowy mountains".'),
    model: str = typer.Option("geoclip", help="Checkpoint name or folder (CLIP features)."),
    text_encoder: str = typer.Option(
        "auto", help="CLIP text tower (auto = the one of the model's backbone; hf-clip:<dir>)."
    ),
    gallery: str = typer.Option("auto", help="Gallery; auto = the model's."),
    top_k: int = typer.Option(5, "--top-k", "-k", min=1),
    map_out: Path | None = typer.Option(None, "--map", help="Interactive HTML map of the top-k."),
    json_out: str | None = typer.Option(None, "--json", metavar="-", help="- prints JSON lines."),
) -> None:
    """Rank the gallery for text descriptions: CLIP text tower -> the model's image head ->
    similarity with the gallery's locations, as for a photo."""
    from geoalign.inference.locator import Geolocator
    from geoalign.inference.prediction import Prediction
    from geoalign.inference.text_queries import text_encoder_for, text_queries
    from geoalign.nn.text_encoders import load_text_encoder

    if json_out not in (None, "-"):
        fail(f"--json {json_out}: only - (stdout) is supported; redirect it to a file")
    with console.status("loading model and gallery"):
        geo = Geolocator.from_pretrained(model, backbone=None, gallery=gallery)
    spec = text_encoder_for(geo.model.backbone_spec) if text_encoder == "auto" else text_encoder
    encoder = load_text_encoder(spec, vocabulary=texts)  # (only the tiny test encoder uses it)
    ranked = geo.rank(text_queries(geo, encoder, texts), top_k=top_k, places=True)
    preds = [Prediction(text, cands) for text, cands in zip(texts, ranked, strict=True)]
    if json_out == "-":
        for p in preds:
            print_result(json.dumps(p.to_dict({"model": model, "text_encoder": spec})))
    else:
        from geoalign.cli.predict import _print_prediction

        for p in preds:
            _print_prediction(p)
    if map_out is not None:
        from geoalign.geo.maps import save_interactive_map

        p = preds[0]
        save_interactive_map(
            map_out,
            [(c.lat, c.lon) for c in p.candidates],
            [c.prob for c in p.candidates],
            title=p.source,
        )
        console.print(f"[green]map[/] {map_out}")


def register(app: typer.Typer) -> None:
    app.command("locate-text")(locate_text)
