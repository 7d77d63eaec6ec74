"""Root typer app. Every module in `geoalign.cli` that defines `register(app)` adds its commands.

Command modules keep heavy imports (torch, transformers) inside the command functions so that
`geoalign --help` stays instant.
"""

import importlib
import pkgutil

import typer
from typer.core import TyperGroup


class _GeoalignGroup(TyperGroup):
    """Turns user-caused errors (GeoalignError) into a one-line message and exit code 2."""

    def invoke(self, ctx):
        from geoalign.errors import GeoalignError

        try:
            return super().invoke(ctx)
        except GeoalignError as err:
            from rich.markup import escape

            from geoalign.cli.common import console

            console.print(f"[bold red]error:[/] {escape(str(err))}")
            ctx.exit(2)


app = typer.Typer(
    cls=_GeoalignGroup,
    name="geoalign",
    help="Worldwide image geo-localization: predict, explain, train and evaluate.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    add_completion=False,
)


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", help="Print the version and exit."),
) -> None:
    """Worldwide image geo-localization: predict, explain, train and evaluate."""
    if version:
        from geoalign._version import __version__

        typer.echo(f"geoalign {__version__}")
        raise typer.Exit()


def _register_command_modules() -> None:
    import geoalign.cli as package

    for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda m: m.name):
        if info.name in {"app", "common"} or info.name.startswith("_"):
            continue
        module = importlib.import_module(f"geoalign.cli.{info.name}")
        register = getattr(module, "register", None)
        if register is None:
            raise ImportError(f"geoalign.cli.{info.name} defines no register(app) function")
        register(app)


_register_command_modules()


def main() -> None:
    app()
