"""Result files for scripts: one prediction record, written as JSON Lines, CSV or GeoJSON.

Every writer takes the same record (`prediction_record`) and a target that is a path or `-`
(stdout). A CSV or GeoJSON file appears whole or not at all (temp file, fsync, rename); a JSONL
file is appended to record by record so that an interrupted run can resume (see `jsonl_resume`).
"""

from __future__ import annotations

import csv
import io
import json
import os
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from geoalign.inference.prediction import SCHEMA as PREDICTION_SCHEMA  # versioned record type

STDOUT = "-"

CSV_COLUMNS = (
    "source",
    "rank",
    "lat",
    "lon",
    "prob",
    "gallery_index",
    "city",
    "region",
    "country_code",
    "country_name",
    "place_km",
    "error",
)
"""One row per candidate; a failed input is one row with only `source` and `error`."""


def prediction_record(prediction: Any, settings: Mapping[str, Any]) -> dict[str, Any]:
    """The one JSON form of a prediction (`geoalign.inference.prediction.Prediction.to_dict`,
    shared with the Python API and the service), with the settings that shaped it: a resumed
    JSONL file refuses records made with other settings."""
    return prediction.to_dict(settings)


# ----------------------------------------------------------------------------- targets


class AtomicFile:
    """A text file that replaces `path` only on `commit` (fsynced); `discard` leaves no trace."""

    def __init__(self, path: Path) -> None:
        if path.is_dir():
            from geoalign.errors import GeoalignError

            raise GeoalignError(f"{path}: is a folder; give a file name")
        self.path = path
        self.temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        path.parent.mkdir(parents=True, exist_ok=True)
        self.handle: IO[str] = self.temp.open("w", encoding="utf-8", newline="")

    def commit(self) -> None:
        self.handle.flush()
        os.fsync(self.handle.fileno())
        self.handle.close()
        os.replace(self.temp, self.path)

    def discard(self) -> None:
        self.handle.close()
        self.temp.unlink(missing_ok=True)


@contextmanager
def open_target(target: str | Path) -> Iterator[IO[str]]:
    """A text stream for `target`: stdout for `-`, else an atomic file kept only on success."""
    if str(target) == STDOUT:
        yield sys.stdout
        sys.stdout.flush()
        return
    file = AtomicFile(Path(target))
    try:
        yield file.handle
    except BaseException:
        file.discard()
        raise
    file.commit()


# ----------------------------------------------------------------------------- writers


class CsvWriter:
    """Candidates as CSV rows (see CSV_COLUMNS), header first."""

    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream
        self.writer = csv.DictWriter(stream, fieldnames=CSV_COLUMNS, lineterminator="\n")
        self.writer.writeheader()

    def write(self, record: Mapping[str, Any]) -> None:
        if "error" in record:
            self.writer.writerow({"source": record["source"], "error": record["error"]})
        for c in record.get("predictions", []):
            place = c.get("place") or {}
            self.writer.writerow(
                {
                    "source": record["source"],
                    "rank": c["rank"],
                    "lat": c["lat"],
                    "lon": c["lon"],
                    "prob": c["prob"],
                    "gallery_index": c["gallery_index"],
                    "city": place.get("city", ""),
                    "region": place.get("region", ""),
                    "country_code": place.get("country_code", ""),
                    "country_name": place.get("country_name", ""),
                    "place_km": place.get("distance_km", ""),
                }
            )
        self.stream.flush()

    def close(self) -> None:
        self.stream.flush()


class GeoJsonWriter:
    """A FeatureCollection with one Point per candidate (failed inputs have no point), and,
    when asked for, each input's point estimate and region outlines (`add_distribution`).

    Properties: source, rank, prob, place (one line) and the place fields; coordinates are
    [lon, lat] as GeoJSON (RFC 7946) requires. Written whole on close.
    """

    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream
        self.features: list[dict[str, Any]] = []

    def write(self, record: Mapping[str, Any]) -> None:
        for c in record.get("predictions", []):
            place = c.get("place") or {}
            label = ", ".join(
                str(place[k]) for k in ("city", "region", "country_name") if place.get(k)
            )
            self.features.append(
                {
                    "type": "Feature",
                    "geometry": {"type": "Point", "coordinates": [c["lon"], c["lat"]]},
                    "properties": {
                        "source": record["source"],
                        "rank": c["rank"],
                        "prob": c["prob"],
                        "place": label or None,
                        **{f"place_{k}": v for k, v in place.items()},
                    },
                }
            )

    def add_distribution(self, source: str, collection: Mapping[str, Any]) -> None:
        """The point estimate and region outlines of one input (`Distribution.to_geojson`)."""
        for feature in collection["features"]:
            props = {"source": source, **feature["properties"]}
            self.features.append({**feature, "properties": props})

    def close(self) -> None:
        collection = {"type": "FeatureCollection", "features": self.features}
        self.stream.write(json.dumps(collection, ensure_ascii=False) + "\n")
        self.stream.flush()


class JsonlWriter:
    """One record per line, flushed as it goes (a kill loses at most the line being written)."""

    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream

    def write(self, record: Mapping[str, Any]) -> None:
        self.stream.write(json.dumps(record, ensure_ascii=False) + "\n")
        self.stream.flush()

    def close(self) -> None:
        self.stream.flush()
        if not isinstance(self.stream, io.TextIOWrapper) or self.stream is sys.stdout:
            return
        try:
            os.fsync(self.stream.fileno())
        except (OSError, io.UnsupportedOperation):
            pass


# ----------------------------------------------------------------------------- JSONL resume


SETTING_OPTIONS = {
    "prior": "--within/--near/--radius-km/--bbox/--land-only",
    "top_k": "--top-k",
}
"""Option names for settings keys whose name is not simply `--key-with-dashes`."""


@dataclass
class Resumed:
    """What an earlier run left in a JSONL file that `prepare_jsonl` made ready for appending."""

    records: list[dict[str, Any]] = field(default_factory=list)
    """Successful records kept; their inputs are skipped."""
    retried: int = 0
    """Error records removed: their inputs are tried again (so each input is recorded once)."""
    torn: bool = False
    """The last line was cut by a kill and has been truncated away."""


def _setting_name(key: str) -> str:
    return SETTING_OPTIONS.get(key, "--" + key.replace("_", "-"))


def settings_diff(records: list[Mapping[str, Any]], settings: Mapping[str, Any]) -> list[str]:
    """One 'option: old vs now' phrase per setting the records disagree with."""
    now = json.loads(json.dumps(dict(settings)))
    found: dict[str, list[Any]] = {}
    for record in records:
        for key in sorted(set(record.get("settings", {})) | set(now)):
            value = record.get("settings", {}).get(key)
            if value != now.get(key) and value not in found.setdefault(key, []):
                found[key].append(value)
    return [
        f"{_setting_name(k)} was {' / '.join(json.dumps(v) for v in old)}, now {json.dumps(now.get(k))}"
        for k, old in found.items()
        if old
    ]


def prepare_jsonl(path: Path, settings: Mapping[str, Any], *, overwrite: bool = False) -> Resumed:
    """Make `path` ready to append records made with `settings`, and say what it holds.

    A torn last line (a kill mid-write) is cut off; earlier error records are removed so their
    inputs are retried and recorded once; records made with other settings, or lines that are
    not prediction records, refuse with a message naming the difference and the way out.
    """
    from geoalign.errors import GeoalignError

    if path.is_dir():
        raise GeoalignError(f"--json {path}: is a folder; give a file name")
    if overwrite or not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")
        return Resumed()
    data = path.read_bytes()
    state = Resumed(torn=bool(data) and not data.endswith(b"\n"))
    if state.torn:
        data = data[: data.rfind(b"\n") + 1]
    way_out = "give another --json file, or --overwrite to start this one afresh"
    records: list[dict[str, Any]] = []
    for number, line in enumerate(data.decode("utf-8", errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            record = None
        if not isinstance(record, dict) or record.get("schema") != PREDICTION_SCHEMA:
            raise GeoalignError(
                f"{path}, line {number}: not a {PREDICTION_SCHEMA} record (another program's "
                f"file, or one from an older geoalign); {way_out}"
            )
        records.append(record)
    differences = settings_diff(records, settings)
    if differences:
        raise GeoalignError(
            f"{path} holds predictions made with other settings ({'; '.join(differences)}); "
            f"{way_out}"
        )
    kept = {r["source"]: r for r in records if "predictions" in r}
    state.records = list(kept.values())
    state.retried = len({r["source"] for r in records if "error" in r} - set(kept))
    if state.torn or len(state.records) != len(records):
        with open_target(path) as handle:
            for record in state.records:
                handle.write(json.dumps(record, ensure_ascii=False) + "\n")
    return state
