"""The `geoalign` command line: one typer app, one module per command group."""

from geoalign.cli.app import app, main

__all__ = ["app", "main"]
