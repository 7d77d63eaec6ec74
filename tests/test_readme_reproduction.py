"""The README's "Reproducing the papers" section lists every table of the three papers, and every
config and command it names exists and parses (so each row runs, given the real data)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import typer

from geoalign.cli import app

ROOT = Path(__file__).resolve().parents[1]
# The tables of each paper (checked against the paper texts when written).
TABLES = {
    "**GeoCLIP**": {"1(a)", "1(b)", "2", "3(a)", "3(b)", "4", "5"},
    "**Concept-aware alignment**": {"1", "2", "3", "4", "5"},
    "**GeoSURGE**": {"I", "II", "III", "IV", "V", "VI", "VII", "VIII"},
}


def _section() -> str:
    readme = (ROOT / "README.md").read_text()
    return readme.split("\n## Reproducing the papers\n", 1)[1].split("\n## ", 1)[0]


def test_every_table_of_the_three_papers_has_a_row():
    section = _section()
    starts = sorted((section.index(f"\n{head}"), head) for head in TABLES)
    for i, (start, head) in enumerate(starts):
        end = starts[i + 1][0] if i + 1 < len(starts) else len(section)
        rows = [line for line in section[start:end].splitlines() if line.startswith("| ")]
        ids = [cell for row in rows[1:] for cell in row.split("|")[1].strip().split(", ")]
        assert sorted(ids) == sorted(TABLES[head]), head  # each table once, none missing
        for row in rows[1:]:
            assert len([c for c in row.split("|")[1:-1] if c.strip()]) == 3, row


def test_every_config_named_exists():
    configs = re.findall(r"configs/[\w/]+\.yaml", _section())
    assert len(configs) >= 25
    for path in configs:
        assert (ROOT / path).is_file(), path


def _options(command) -> set[str]:
    return {o for p in command.params for o in (*p.opts, *p.secondary_opts)}


def test_every_command_names_a_real_command_and_its_options():
    root = typer.main.get_command(app)
    commands = re.findall(r"`(geoalign [^`]+)`", _section())
    assert len(commands) >= 10
    for line in commands:
        words = shlex.split(line)[1:]
        command = root
        while hasattr(command, "commands") and words and words[0] in command.commands:
            command = command.commands[words.pop(0)]
        assert not hasattr(command, "commands"), f"{line}: not a command"
        known = _options(command)
        for word in words:
            if word.startswith("--"):
                assert word.split("=")[0] in known, f"{line}: {word}"
        if line.startswith("geoalign train ") and words[0] != "CONFIG":
            assert (ROOT / words[0]).is_file(), line
