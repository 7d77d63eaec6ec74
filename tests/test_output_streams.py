"""The output contract: results on stdout, messages on stderr, help readable at 80 columns."""

import subprocess
import sys

import click
import pytest
import typer
from click.testing import CliRunner as ClickRunner
from typer.testing import CliRunner

from geoalign.cli import app

runner = CliRunner()


def test_version_prints_and_exits_zero():
    from geoalign._version import __version__

    res = runner.invoke(app, ["--version"])
    assert res.exit_code == 0, res.output
    assert res.stdout.strip() == f"geoalign {__version__}"


def test_downstream_tasks_table_is_on_stdout():
    res = runner.invoke(app, ["downstream", "tasks"])
    assert res.exit_code == 0, res.output
    assert "temperature" in res.stdout and "encoder" in res.stdout
    assert res.stderr == ""


def test_backbone_list_is_on_stdout():
    res = runner.invoke(app, ["backbone", "list"])
    assert res.exit_code == 0, res.output
    assert "clip-vit-l14" in res.stdout and res.stderr == ""


def test_result_table_in_a_pipe_is_not_wrapped(monkeypatch):
    """Piped, a table row stays on one line even when it is wider than rich's 80 columns."""
    from rich.table import Table

    from geoalign.cli.common import print_result

    monkeypatch.delenv("COLUMNS", raising=False)
    table = Table("method", "value")
    name = "concept-aware-alignment-with-a-long-method-name-" * 2
    table.add_row(name, "1.0")

    @click.command()
    def show() -> None:
        print_result(table)

    res = ClickRunner().invoke(show, [])
    assert name in res.stdout


def _all_commands(command: click.Command, path: tuple[str, ...] = ()):
    yield path, command
    if hasattr(command, "commands"):  # a group (typer may vendor its own click)
        for name, sub in command.commands.items():
            yield from _all_commands(sub, (*path, name))


def test_help_is_not_truncated_at_80_columns():
    """Every command's help wraps instead of cutting words ("Countries/region…")."""
    root = typer.main.get_command(app)
    seen = 0
    for path, _ in _all_commands(root):
        res = runner.invoke(app, [*path, "--help"], env={"COLUMNS": "80"}, terminal_width=80)
        assert res.exit_code == 0, (path, res.output)
        assert "…" not in res.stdout, (path, res.stdout)
        commands = res.stdout.split("Commands:")[-1] if "Commands:" in res.stdout else ""
        cut = [line for line in commands.splitlines() if line.rstrip().endswith("...")]
        assert cut == [], (path, cut)  # command lists: whole sentences, not click's "..." cut
        assert max(len(line) for line in res.stdout.splitlines()) <= 80, path
        seen += 1
    assert seen > 30


def test_python_m_geoalign_cli_runs():
    res = subprocess.run(
        [sys.executable, "-m", "geoalign.cli", "--version"], capture_output=True, text=True
    )
    assert res.returncode == 0 and res.stdout.startswith("geoalign "), res.stderr


@pytest.mark.parametrize(
    "args", [["places", "countries", "korea"], ["places", "prior", "--within", "FR"]]
)
def test_places_results_are_on_stdout(args):
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    assert res.stdout.strip() and res.stderr == ""


def test_transient_progress_leaves_nothing_in_a_log(capsys):
    from geoalign.cli.common import progress_bar

    with progress_bar(transient=True) as bar:
        bar.advance(bar.add_task("predicting", total=2), 2)
    assert capsys.readouterr().err == ""


HEAVY = ("torch", "transformers", "lightning", "open_clip")


def test_help_imports_no_heavy_library():
    """`geoalign --help` (and every command's help) stays instant: no torch behind it."""
    script = f"""
import sys
import typer
from typer.testing import CliRunner
from geoalign.cli import app

def walk(command, path=()):
    yield path
    for name, sub in getattr(command, "commands", {{}}).items():
        yield from walk(sub, (*path, name))

for path in walk(typer.main.get_command(app)):
    assert CliRunner().invoke(app, [*path, "--help"]).exit_code == 0, path
print(",".join(m for m in {HEAVY!r} if m in sys.modules))
"""
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "", f"imported by --help: {res.stdout}"


def test_concepts_list_table_is_on_stdout():
    res = runner.invoke(app, ["concepts", "list", "geography"])
    assert res.exit_code == 0, res.output
    assert "skyscraper" in res.stdout and "skyscraper" not in res.stderr


def test_inspecting_commands_print_json_on_stdout():
    import json

    res = runner.invoke(app, ["downstream", "tasks", "--json"])
    assert res.exit_code == 0, res.output
    listed = json.loads(res.stdout)
    assert {"task", "kind", "target"} <= set(listed["tasks"][0]) and listed["encoders"]

    res = runner.invoke(app, ["places", "countries", "korea", "--json"])
    assert res.exit_code == 0, res.output
    codes = {json.loads(line)["code"] for line in res.stdout.splitlines()}
    assert codes == {"KR", "KP"}

    res = runner.invoke(app, ["places", "prior", "--within", "FR", "--json"])
    assert res.exit_code == 0, res.output
    record = json.loads(res.stdout)
    assert record["total"] == 94_123 and 0 < record["kept"] < record["total"]  # deduplicated


def test_every_inspecting_command_has_json(tmp_path):
    """backbone list, data benchmarks/benchmark and places regions print JSON on stdout too."""
    import json

    res = runner.invoke(app, ["backbone", "list", "--json"])
    assert res.exit_code == 0, res.output
    forms = [json.loads(line) for line in res.stdout.splitlines()]
    assert sum(f["default"] for f in forms) == 1
    assert any(f["spec"] == "clip-vit-l14" and f["alias_of"] for f in forms)

    res = runner.invoke(app, ["data", "benchmarks", "--json"])
    assert res.exit_code == 0, res.output
    names = {json.loads(line)["name"]: json.loads(line) for line in res.stdout.splitlines()}
    assert names["im2gps3k"]["rows"] == 2997 and names["im2gps3k"]["label_files"]

    res = runner.invoke(app, ["data", "benchmark", "im2gps3k", str(tmp_path), "--json"])
    assert res.exit_code == 1, res.output  # nothing there: incomplete, and said in JSON
    status = json.loads(res.stdout)
    assert status["ok"] is False and status["labels"] is None and status["labels_tried"]

    res = runner.invoke(app, ["places", "regions", "JP", "--json"])
    assert res.exit_code == 0, res.output
    regions = [json.loads(line) for line in res.stdout.splitlines()]
    assert {"country": "JP", "region": "Tokyo", "within": "JP/Tokyo"} in regions
