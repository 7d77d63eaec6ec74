"""JSONL resume rules on files written by hand: torn tails, foreign lines, settings, errors."""

import json

import pytest

from geoalign.cli.output import PREDICTION_SCHEMA, prepare_jsonl
from geoalign.errors import GeoalignError

SETTINGS = {"model": "geoclip", "gallery": "geoclip-100k", "top_k": 5, "prior": None}


def _record(source, error=None, **settings):
    body = {"error": error} if error else {"predictions": [{"rank": 1, "lat": 1.0, "lon": 2.0}]}
    return {"schema": PREDICTION_SCHEMA, "source": source, **body, "settings": settings}


def _write(path, records, tail=""):
    path.write_text("".join(json.dumps(r) + "\n" for r in records) + tail)


def test_a_lone_torn_line_leaves_an_empty_file(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text('{"schema": "geoalign.predic')
    state = prepare_jsonl(path, SETTINGS)
    assert state.torn and state.records == [] and path.read_text() == ""


def test_errors_are_dropped_once_and_duplicates_merged(tmp_path):
    path = tmp_path / "p.jsonl"
    records = [
        _record("a.jpg", **SETTINGS),
        _record("b.jpg", error="truncated", **SETTINGS),
        _record("a.jpg", **SETTINGS),
        _record("c.jpg", error="empty", **SETTINGS),
        _record("c.jpg", **SETTINGS),  # failed once, then succeeded
    ]
    _write(path, records)
    state = prepare_jsonl(path, SETTINGS)
    assert [r["source"] for r in state.records] == ["a.jpg", "c.jpg"] and state.retried == 1
    assert [json.loads(line)["source"] for line in path.read_text().splitlines()] == [
        "a.jpg",
        "c.jpg",
    ]


def test_other_settings_are_named(tmp_path):
    path = tmp_path / "p.jsonl"
    _write(path, [_record("a.jpg", **{**SETTINGS, "top_k": 3, "prior": "within FR"})])
    with pytest.raises(GeoalignError) as err:
        prepare_jsonl(path, SETTINGS)
    message = str(err.value)
    assert "--top-k was 3, now 5" in message
    assert '--within/--near/--radius-km/--bbox/--land-only was "within FR", now null' in message
    assert "--overwrite" in message and "--model" not in message


@pytest.mark.parametrize(
    "line", ['{"source": "a.jpg", "predictions": []}', "not json at all", "[1, 2]"]
)
def test_foreign_lines_refuse_naming_the_line(tmp_path, line):
    path = tmp_path / "p.jsonl"
    _write(path, [_record("a.jpg", **SETTINGS)], tail=line + "\n")
    before = path.read_text()
    with pytest.raises(GeoalignError, match=r"p\.jsonl, line 2: not a geoalign\.prediction/v1"):
        prepare_jsonl(path, SETTINGS)
    assert path.read_text() == before


def test_overwrite_starts_afresh(tmp_path):
    path = tmp_path / "p.jsonl"
    _write(path, [_record("a.jpg", top_k=3)])
    assert prepare_jsonl(path, SETTINGS, overwrite=True).records == []
    assert path.read_text() == ""
