"""What `geoalign evaluate` prints and copies once a report is written (shared by the command and
its webdataset-shard path, `_evaluate_shards`)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from geoalign.cli.common import console, print_result

STDOUT = "-"


def show_report(run: Any, name: str, json_out: str | None) -> None:
    """The accuracy table on stdout (or the report's JSON with --json -); where it went on stderr."""
    from geoalign.evaluation.report import table

    ev = run.evaluation
    report_json = run.paths["json"]
    if json_out == STDOUT:
        sys.stdout.write(report_json.read_text().rstrip("\n") + "\n")  # not through rich markup
        sys.stdout.flush()
    else:
        title = f"{name}: {len(ev.truth):,} queries, gallery {ev.gallery}"
        print_result(accuracy_table(table(ev), title))
        if json_out is not None:
            _copy_atomic(report_json, Path(json_out))
            console.print(f"report JSON: [bold]{json_out}[/]")
    console.print(f"report: [bold]{run.paths['markdown']}[/]")


def accuracy_table(frame: Any, title: str) -> Any:
    """The report's accuracy table as a rich Table (model rows bold, published rows dim)."""
    import pandas as pd
    from rich.table import Table

    from geoalign.evaluation.report import ACC_KEYS

    tbl = Table(title=title, title_justify="left")
    tbl.add_column("method")
    for key in ACC_KEYS:
        tbl.add_column(key.removeprefix("acc@").replace("km", " km"), justify="right")
    tbl.add_column("median km", justify="right")
    for _, r in frame.iterrows():
        cells = [("–" if pd.isna(r[k]) else f"{r[k]:.1f}") for k in ACC_KEYS]
        med = "–" if pd.isna(r["median_km"]) else f"{r['median_km']:,.0f}"
        style = "bold" if r["kind"] == "model" else ("dim" if r["kind"] == "published" else None)
        tbl.add_row(str(r["method"]), *cells, med, style=style)
    return tbl


def _copy_atomic(src: Path, dst: Path) -> None:
    from geoalign.io_atomic import atomic_write

    data = json.loads(src.read_text())  # a copy that is valid JSON or nothing
    atomic_write(dst, lambda fh: fh.write((json.dumps(data, indent=2) + "\n").encode()))
