"""The option vocabulary the README promises holds in every command (walked from the click tree,
so a new command is checked without being listed here)."""

from __future__ import annotations

import typer.main

from geoalign.cli import app


def _commands(group, path: tuple[str, ...] = ()):
    """(name, command) for every leaf command (typer ships its own click: test by shape)."""
    if hasattr(group, "commands"):
        for name, sub in group.commands.items():
            yield from _commands(sub, (*path, name))
    else:
        yield " ".join(path), group


def test_every_out_option_has_the_short_o():
    root = typer.main.get_command(app)
    missing = [
        name
        for name, command in _commands(root)
        for param in command.params
        if "--out" in getattr(param, "opts", []) and "-o" not in param.opts
    ]
    assert len(list(_commands(root))) > 40  # the walk reached the sub-commands
    assert missing == [], f"--out without -o in: {missing}"


def test_short_options_mean_one_thing():
    """-o is always --out, -k always --top-k, -m always --model, -q always --quiet."""
    meaning = {"-o": "--out", "-k": "--top-k", "-m": "--model", "-q": "--quiet"}
    root = typer.main.get_command(app)
    wrong = [
        (name, short, param.opts)
        for name, command in _commands(root)
        for param in command.params
        for short, long in meaning.items()
        if short in getattr(param, "opts", []) and long not in param.opts
    ]
    assert wrong == []
