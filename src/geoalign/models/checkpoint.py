"""The geoalign checkpoint format, in one place.

A checkpoint is a folder with `model.safetensors` (tensors keyed by component: `location_encoder.`,
`image_head.`, `logit_scale`, `queue.`, `concept.`, `geo.`, ...) and `config.json` (the method
name, its component configs, provenance). Training runs hold one in `model/`, `last/` or `best/`;
`resolve_checkpoint_dir` accepts the run folder too, the same way for every command.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from geoalign.errors import WeightsNotFoundError

FORMAT = "geoalign-checkpoint"
FORMAT_VERSION = 1
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
    path: Path
    config: dict[str, Any]
    state: dict[str, torch.Tensor]

    @property
    def method(self) -> str:
        return str(self.config.get("method", "geoclip"))

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


def read_state(folder: Path) -> dict[str, torch.Tensor]:
    """The checkpoint's tensors (subnormals flushed, see `flush_subnormals_`)."""
    path = folder / "model.safetensors"
    try:
        state = load_file(str(path), device="cpu")
    except (OSError, SafetensorError) as err:
        raise WeightsNotFoundError(f"{path}: damaged checkpoint weights ({err})") from err
    flush_subnormals_(state)
    return state


def save_checkpoint(out_dir: Path, state: dict[str, torch.Tensor], config: dict[str, Any]) -> Path:
    """Write a checkpoint folder atomically (safetensors + config JSON)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    config = {"format": FORMAT, "format_version": FORMAT_VERSION, **config}
    state = {k: v.detach().to("cpu").contiguous() for k, v in state.items()}
    tmp = out_dir / "model.safetensors.tmp"
    save_file(state, str(tmp), metadata={"format": FORMAT})
    os.replace(tmp, out_dir / "model.safetensors")
    tmpc = out_dir / "config.json.tmp"
    tmpc.write_text(json.dumps(config, indent=2))
    os.replace(tmpc, out_dir / "config.json")
    return out_dir
