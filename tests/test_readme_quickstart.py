"""The README's quickstart table is copied from the committed report the quickstart wrote."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _rows(text: str) -> list[str]:
    start = text.index("| method | 1 km")
    block = text[start : text.index("\n\n", start)]
    return [line for line in block.splitlines() if "published" not in line]


def test_readme_table_equals_the_committed_report():
    report = (ROOT / "reports" / "quickstart" / "report.md").read_text()
    readme = (ROOT / "README.md").read_text()
    assert _rows(readme) == _rows(report)
    wall = report.split("Wall time of the whole quickstart: ")[1].split(" s")[0]
    assert f"Whole run: {wall} s." in readme
