"""`geoalign backbone`: which image backbones exist, and does this machine have their weights."""

from __future__ import annotations

import json

import typer

from geoalign.cli.common import console, fail, out

backbone_app = typer.Typer(help="Image backbones: list specs, check weights.", no_args_is_help=True)


@backbone_app.command("list")
def list_specs(
    as_json: bool = typer.Option(False, "--json", help="JSON lines instead of text."),
) -> None:
    """Print the accepted backbone spec forms."""
    from geoalign.nn.backbones import ALIASES, DEFAULT_BACKBONE, SPEC_FORMS

    for form in SPEC_FORMS:
        if as_json:
            record = {
                "spec": form,
                "alias_of": ALIASES.get(form),
                "default": form == DEFAULT_BACKBONE,
            }
            typer.echo(json.dumps(record))
            continue
        note = f"  = {ALIASES[form]}" if form in ALIASES else ""
        default = "  (default)" if form == DEFAULT_BACKBONE else ""
        out.print(f"{form}{note}{default}", highlight=False, markup=False)


@backbone_app.command("check")
def check(
    spec: str = typer.Argument("clip-vit-l14", help="Backbone spec, e.g. clip-vit-l14."),
    offline: bool = typer.Option(False, "--offline", help="Never download, even if online."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object instead of text."),
) -> None:
    """Load a backbone (downloading only when online) and print what it produces."""
    from rich.markup import escape

    from geoalign.errors import GeoalignError
    from geoalign.nn.backbones import load_backbone

    try:
        with console.status(f"loading {spec} ..."):
            backbone = load_backbone(spec, local_files_only=True if offline else None)
    except GeoalignError as err:
        fail(str(err))
    n_params = sum(p.numel() for p in backbone.parameters())
    cfg = backbone.preprocess
    if as_json:
        record = {
            "spec": spec,
            "name": backbone.name,
            "parameters": n_params,
            "embed_dim": backbone.embed_dim,
            "token_dim": backbone.token_dim,
            "preprocess": {
                "image_size": cfg.image_size,
                "shortest_side": cfg.shortest_side,
                "interpolation": str(cfg.interpolation),
                "mean": list(cfg.mean),
                "std": list(cfg.std),
            },
        }
        typer.echo(json.dumps(record))
        return
    out.print(f"[bold]{escape(backbone.name)}[/]: {n_params / 1e6:.1f} M parameters")
    out.print(f"pooled embedding: {backbone.embed_dim}; token dim: {backbone.token_dim}")
    out.print(
        f"input: {cfg.image_size}x{cfg.image_size}, shortest side resized to {cfg.shortest_side} "
        f"({cfg.interpolation}), mean {cfg.mean}, std {cfg.std}",
        highlight=False,
        markup=False,
    )


def register(app: typer.Typer) -> None:
    app.add_typer(backbone_app, name="backbone")
