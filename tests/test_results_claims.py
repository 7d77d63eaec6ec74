"""Claims that scripts print: every section of benchmarks/RESULTS.md is stamped by the benchmark
script that writes it, unchanged since (a hand edit breaks the digest); benchmark output has no
hand-typed figures; the training benchmark's child reports its own peak RSS."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))
import _results  # noqa: E402


def _written_titles(script: Path) -> set[str]:
    """Section titles a script passes to write_section as string literals."""
    titles = set()
    for node in ast.walk(ast.parse(script.read_text())):
        if (
            isinstance(node, ast.Call)
            and getattr(node.func, "id", getattr(node.func, "attr", None)) == "write_section"
            and node.args
            and isinstance(node.args[0], ast.Constant)
        ):
            titles.add(node.args[0].value)
    return titles


def _problems(text: str) -> list[str]:
    problems = []
    for title, content in _results.sections(text).items():
        first, _, rest = content.partition("\n")
        stamp = _results.STAMP.match(first)
        if stamp is None:
            problems.append(f"{title!r}: no 'written by benchmarks/<script>' stamp")
            continue
        script = BENCH / stamp["script"]
        if not script.is_file():
            problems.append(f"{title!r}: its script {script.name} does not exist")
        elif title not in _written_titles(script):
            problems.append(f"{title!r}: {script.name} does not write this section")
        if _results.text_digest(rest) != stamp["digest"]:
            problems.append(f"{title!r}: edited after {script.name} wrote it (digest differs)")
    return problems


def test_every_results_section_is_written_by_its_script_and_unedited():
    text = (BENCH / "RESULTS.md").read_text()
    assert _results.sections(text), "RESULTS.md has no sections"
    assert _problems(text) == []


def test_the_check_catches_hand_edits_and_orphan_sections(tmp_path, monkeypatch):
    monkeypatch.setattr(_results, "RESULTS", tmp_path / "RESULTS.md")
    monkeypatch.setattr(_results, "machine", lambda: "test machine")
    _results.write_section(
        "Location encoder (100K gallery)", "| a | 1.0 |", script="location_encoder.py"
    )
    good = _results.RESULTS.read_text()
    assert _problems(good) == []
    assert _problems(good.replace("| a | 1.0 |", "| a | 2.0 |")) == [
        "'Location encoder (100K gallery)': edited after location_encoder.py wrote it "
        "(digest differs)"
    ]
    orphan = good + "\n## Something typed by hand\n\n165 GFLOP/s\n"
    assert _problems(orphan) == [
        "'Something typed by hand': no 'written by benchmarks/<script>' stamp"
    ]
    wrong = good.replace("## Location encoder (100K gallery)", "## Location encoder (1M gallery)")
    assert _problems(wrong) == [
        "'Location encoder (1M gallery)': location_encoder.py does not write this section"
    ]
    # rewriting a section replaces it in place (one section, new digest)
    _results.write_section(
        "Location encoder (100K gallery)", "| a | 3.0 |", script="location_encoder.py"
    )
    again = _results.RESULTS.read_text()
    assert again.count("## Location encoder") == 1 and _problems(again) == []


# "~97%", "about 3x" typed into a string a script prints: a figure no measurement produced.
_TYPED_FIGURE = re.compile(r"~\s?\d|\d\s?%|\b(about|roughly|around|nearly) \d", re.I)


def _printed_literals(script: Path) -> list[str]:
    """String constants of a script outside docstrings and argparse help texts."""
    tree = ast.parse(script.read_text())
    skip: set[int] = set()
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr):
            if isinstance(body[0].value, ast.Constant):
                skip.add(id(body[0].value))
        if isinstance(node, ast.keyword) and node.arg == "help":
            skip.update(id(n) for n in ast.walk(node.value))
    return [
        n.value
        for n in ast.walk(tree)
        if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in skip
    ]


@pytest.mark.parametrize("script", sorted(BENCH.glob("*.py")), ids=lambda p: p.name)
def test_benchmark_output_has_no_hand_typed_figures(script):
    typed = [s for s in _printed_literals(script) if _TYPED_FIGURE.search(s)]
    assert typed == [], f"{script.name} prints figures no measurement made: {typed}"


def test_the_training_benchmark_child_measures_its_own_peak():
    source = (BENCH / "train.py").read_text()
    probe = re.search(r'STORE_PROBE = r"""(.*?)"""', source, re.S)
    assert probe and "ru_maxrss" not in probe[1] and "VmHWM" in probe[1]


def test_peak_rss_of_a_child_is_its_own_not_the_parents():
    # the parent holds ~400 MB, then starts a small child: the child's figure must be far below it
    child = f"import sys; sys.path.insert(0, {str(BENCH)!r}); import _results; "
    child += "print(_results.peak_rss_mb())"
    code = (
        "import subprocess, sys, numpy as np\n"
        "big = np.ones(50_000_000)\n"
        f"print(subprocess.run([sys.executable, '-c', {child!r}], capture_output=True, "
        "text=True, check=True).stdout.strip())\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert float(out.stdout.split()[-1]) < 300
