"""Root typer app. Every module in `geoalign.cli` that defines `register(app)` adds its commands.

Command modules keep heavy imports (torch, transformers) inside the command functions so that
`geoalign --help` stays instant.
"""

import importlib
import logging
import os
import pkgutil
import warnings
from pathlib import Path

import typer
from typer.core import TyperGroup


def _first_sentence(text: str) -> str:
    """A help text's first sentence, whole (click cuts it at the column budget with "...")."""
    paragraph = text.strip().split("\n\n")[0]
    paragraph = " ".join(paragraph.split())
    cut = paragraph.find(". ")
    return paragraph if cut < 0 else paragraph[: cut + 1]


def _whole_short_help(command) -> None:
    """Give `command` (and, for a group, each of its commands) its whole first sentence as the
    short help, which click wraps in a command list instead of cutting off."""
    if command.short_help is None and command.help:
        command.short_help = _first_sentence(command.help)
    for sub in getattr(command, "commands", {}).values():
        _whole_short_help(sub)


class _GeoalignGroup(TyperGroup):
    """Turns user-caused errors (GeoalignError) into a one-line message and exit code 2, and
    lists commands with whole sentences at any width."""

    def get_command(self, ctx, cmd_name):
        command = super().get_command(ctx, cmd_name)
        if command is not None:
            _whole_short_help(command)
        return command

    def invoke(self, ctx):
        from geoalign.errors import GeoalignError

        _tame_third_party_output()
        try:
            return super().invoke(ctx)
        except GeoalignError as err:
            from rich.markup import escape

            from geoalign.cli.common import console

            console.print(f"[bold red]error:[/] {escape(str(err))}")
            ctx.exit(2)


_BANNER_LOGGERS = (
    "lightning.pytorch.utilities.rank_zero",  # "GPU available: ...", the litlogger tip, "stopped"
    "lightning.fabric.utilities.rank_zero",
)
_QUIET_CATEGORIES = (DeprecationWarning, PendingDeprecationWarning, FutureWarning)
_shown_warnings: set[tuple[str, str]] = set()


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """A warning as one line of ours on stderr, once per message: no source path or code line.
    Deprecations inside third-party code are dropped: a CLI user can do nothing about them."""
    ours = "geoalign" in Path(str(filename)).parts
    if not ours and issubclass(category, _QUIET_CATEGORIES):
        return
    lines = str(message).strip().splitlines()
    text = lines[0] if lines else category.__name__
    if (category.__name__, text) in _shown_warnings:
        return
    _shown_warnings.add((category.__name__, text))
    from rich.markup import escape

    from geoalign.cli.common import console

    console.print(f"[yellow]warning:[/] {escape(text)}")


def _tame_third_party_output() -> None:
    """Libraries announce themselves (Lightning's accelerator banner and logger tip,
    transformers' advisories) before any geoalign output; their info logs are dropped and every
    warning goes through `_one_line_warning`. Environment settings only reach libraries not yet
    imported, which is the case for a command line."""
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    for name in _BANNER_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.showwarning = _one_line_warning


app = typer.Typer(
    cls=_GeoalignGroup,
    name="geoalign",
    help="Worldwide image geo-localization: predict, explain, train and evaluate.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    add_completion=False,
)


def _print_version(value: bool) -> None:
    """Eager, so that `geoalign --version` works without a command."""
    if value:
        from geoalign._version import __version__

        typer.echo(f"geoalign {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", is_eager=True, callback=_print_version, help="Print the version."
    ),
) -> None:
    """Worldwide image geo-localization: predict, explain, train and evaluate."""


def _register_command_modules() -> None:
    here = [str(Path(__file__).parent)]  # this package's folder, not `geoalign.cli` (a cycle)
    for info in sorted(pkgutil.iter_modules(here), key=lambda m: m.name):
        if info.name in {"app", "common", "output"} or info.name.startswith("_"):
            continue
        module = importlib.import_module(f"geoalign.cli.{info.name}")
        register = getattr(module, "register", None)
        if register is None:
            raise ImportError(f"geoalign.cli.{info.name} defines no register(app) function")
        register(app)


def _plain_help(typer_app: typer.Typer) -> None:
    """Click's own help layout for every command: it wraps option help at 80 columns, where
    rich's boxed panels truncate it ("Countries/region…"), and it reads the same in a pipe."""
    typer_app.rich_markup_mode = None
    for group in typer_app.registered_groups:
        if group.typer_instance is not None:
            _plain_help(group.typer_instance)


_register_command_modules()
_plain_help(app)


def main() -> None:
    app()
