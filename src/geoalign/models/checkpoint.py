"""The geoalign checkpoint format, in one place.

A checkpoint is a folder with `model.safetensors` (tensors keyed by component: `location_encoder.`,
`image_head.`, `logit_scale`, `queue.`, `concept.`, `geo.`, ...) and `config.json` (the method
name, its component configs, provenance, and the sha256 of `model.safetensors`). Training runs hold
one in `model/`, `last/` or `best/`; `resolve_checkpoint_dir` accepts the run folder too, the same
way for every command.

Loading verifies what saving recorded: a weights file whose bytes changed (a bad copy, a disk
error) fails its sha256, and a tensor holding NaN or inf is refused by name, so damage is an
error at load rather than NaN probabilities later. Checkpoints from before the sha256 was recorded
still load (only the finite check applies).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from geoalign.errors import WeightsNotFoundError
from geoalign.io_atomic import atomic_write

FORMAT = "geoalign-checkpoint"
FORMAT_VERSION = 1
SHA256_KEY = "weights_sha256"  # config.json key: sha256 of model.safetensors, written at save
DAMAGED_HINT = (
    "retrain or re-export it (for the official 'geoclip' weights: delete this folder and it is "
    "converted again)"
)
RUN_SUBDIRS = (
    "model",
    "last",
    "best",
)  # where training runs put the exported model, preferred first


def flush_subnormals_(state: dict[str, torch.Tensor]) -> int:
    """Zero subnormal floats in place; returns how many there were.

    About 1% of the released location-encoder weights are subnormal; x86 CPUs take a slow microcode
    path on them (up to ~3x slower matmuls on some chips), while their value is below 1.2e-38 and
    changes no output.
    """
    flushed = 0
    for t in state.values():
        if t.is_floating_point():
            mask = (t != 0) & (t.abs() < torch.finfo(t.dtype).tiny)
            flushed += int(mask.sum())
            t[mask] = 0
    return flushed


@dataclass
class Checkpoint:
    """A checkpoint read once. `method` is decided by `registry.checkpoint_method`, the one
    place that reads it out of a config (`registry.load_checkpoint` builds checkpoints)."""

    path: Path
    config: dict[str, Any]
    state: dict[str, torch.Tensor]
    method: str

    def component(self, prefix: str) -> dict[str, torch.Tensor]:
        p = prefix + "."
        return {k[len(p) :]: v for k, v in self.state.items() if k.startswith(p)}


def is_checkpoint_dir(path: Path) -> bool:
    return (path / "model.safetensors").is_file() and (path / "config.json").is_file()


def find_checkpoint_dir(path: str | Path) -> Path:
    """A checkpoint folder, its model.safetensors, or a run folder holding one (model/, last/,
    best/, in that order)."""
    path = Path(path).expanduser()
    if path.is_file() and path.name in {"model.safetensors", "config.json"}:
        path = path.parent
    if is_checkpoint_dir(path):
        return path
    for sub in RUN_SUBDIRS:
        if is_checkpoint_dir(path / sub):
            return path / sub
    raise WeightsNotFoundError(
        f"no geoalign checkpoint at {path}: expected model.safetensors and config.json there or "
        f"in {', '.join(s + '/' for s in RUN_SUBDIRS)} (train one with `geoalign train CONFIG`, "
        "or name the official weights: 'geoclip')"
    )


def read_config(folder: Path) -> dict[str, Any]:
    """A checkpoint folder's config.json, checked to be ours (no weights read)."""
    path = folder / "config.json"
    try:
        config = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise WeightsNotFoundError(f"{path}: cannot read the checkpoint's config ({err})") from err
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise WeightsNotFoundError(f"{path} is not a {FORMAT} config")
    return config


def file_sha256(path: Path) -> str:
    """sha256 of a file, read in 1 MiB blocks (the official weights are ~40 MB)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def verify_weights_file(folder: Path, config: dict[str, Any]) -> None:
    """Check model.safetensors against the sha256 its config.json recorded (if it recorded one)."""
    expected = config.get(SHA256_KEY)
    if expected is None:
        return  # written before the sha256 was recorded
    path = folder / "model.safetensors"
    try:
        actual = file_sha256(path)
    except OSError as err:
        raise WeightsNotFoundError(f"{path}: cannot read the checkpoint weights ({err})") from err
    if actual != expected:
        raise WeightsNotFoundError(
            f"{path} is damaged: its sha256 {actual[:12]}... differs from the {expected[:12]}... "
            f"recorded in config.json when it was saved; {DAMAGED_HINT}"
        )


def check_finite(path: Path, state: dict[str, torch.Tensor]) -> None:
    """Refuse a checkpoint with a NaN or inf in any floating tensor, naming the tensor."""
    for name, t in state.items():
        if t.is_floating_point() and t.numel() and not bool(torch.isfinite(t).all()):
            bad = int((~torch.isfinite(t)).sum())
            raise WeightsNotFoundError(
                f"{path} is damaged: tensor {name!r} holds {bad:,} NaN/inf value(s) of "
                f"{t.numel():,}; {DAMAGED_HINT}"
            )


def read_state(folder: Path, config: dict[str, Any] | None = None) -> dict[str, torch.Tensor]:
    """The checkpoint's tensors, verified (the sha256 its config.json recorded, all finite) and
    with subnormals flushed (see `flush_subnormals_`). `config` saves re-reading config.json."""
    path = folder / "model.safetensors"
    verify_weights_file(folder, read_config(folder) if config is None else config)
    try:
        state = load_file(str(path), device="cpu")
    except (OSError, SafetensorError) as err:
        raise WeightsNotFoundError(
            f"{path}: damaged checkpoint weights ({err}); {DAMAGED_HINT}"
        ) from err
    check_finite(path, state)
    flush_subnormals_(state)
    return state


def _fsync(path: Path) -> None:
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())


def save_checkpoint(out_dir: Path, state: dict[str, torch.Tensor], config: dict[str, Any]) -> Path:
    """Write a checkpoint folder atomically (safetensors + config JSON holding its sha256).

    Each file goes to a temp file, is fsynced and renamed over the old one; a kill between the
    two renames leaves a pair whose sha256 disagrees, which loading reports as damaged."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu").contiguous() for k, v in state.items()}
    tmp = out_dir / "model.safetensors.tmp"
    save_file(state, str(tmp), metadata={"format": FORMAT})
    _fsync(tmp)
    config = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        **{k: v for k, v in config.items() if k != SHA256_KEY},
        SHA256_KEY: file_sha256(tmp),
    }
    tmpc = out_dir / "config.json.tmp"
    tmpc.write_text(json.dumps(config, indent=2))
    _fsync(tmpc)
    os.replace(tmp, out_dir / "model.safetensors")
    os.replace(tmpc, out_dir / "config.json")
    return out_dir


def record_in_config(folder: Path, entries: dict[str, Any]) -> dict[str, Any]:
    """Add `entries` to a checkpoint's config.json (atomically; the weights and their recorded
    sha256 are untouched): what training learns about a model after export, e.g. the gallery
    and benchmark its evaluation used, so later commands default to them."""
    folder = Path(folder)
    config = {**read_config(folder), **entries}
    atomic_write(folder / "config.json", lambda fh: fh.write(json.dumps(config, indent=2).encode()))
    return config
