"""Option checks shared by commands: fail at parse time with the option's name, before any work.

(The leading underscore keeps `geoalign.cli.app` from treating this module as a command module.)
"""

from __future__ import annotations

from pathlib import Path

from geoalign.cli.common import fail


def check_decode(decode: str, device: str) -> None:
    """--decode: cpu or gpu, and gpu only where the model runs on CUDA (nvJPEG decodes there)."""
    if decode not in ("cpu", "gpu"):
        fail(f"--decode must be cpu or gpu, got {decode!r}")
    if decode == "gpu" and not device.startswith("cuda"):
        fail(
            f"--decode gpu decodes on the GPU the model runs on; give --device cuda (not {device})"
        )


def check_device(device: str, option: str = "--device") -> str:
    """`device` if torch can run on it here, else a usage error naming the option and the fix."""
    import torch

    try:
        parsed = torch.device(device)
    except (RuntimeError, ValueError):
        fail(f"{option} {device!r} is not a device; use cpu, cuda, cuda:1, ... or mps")
    if parsed.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            fail(f"{option} {device}: no CUDA GPU is visible on this machine; use {option} cpu")
        if parsed.index is not None and parsed.index >= count:
            fail(f"{option} {device}: only {count} CUDA GPU(s) here (cuda:0..cuda:{count - 1})")
    elif parsed.type == "mps" and not torch.backends.mps.is_available():
        fail(f"{option} {device}: Apple MPS is not available here; use {option} cpu")
    elif parsed.type not in {"cpu", "cuda", "mps"}:
        fail(f"{option} {device!r}: geoalign runs on cpu, cuda or mps")
    return device


def check_output_file(path: Path, suffixes: tuple[str, ...] = (), option: str = "--out") -> str:
    """The lower-case suffix of an output file path; usage error if it is a folder, sits below a
    file, or has none of `suffixes` (compared case-insensitively: X.NPY is a .npy file; no
    suffixes: any name)."""
    suffix = path.suffix.lower()
    wanted = " or ".join(suffixes) if suffixes else "a file name"
    if path.is_dir():
        fail(
            f"{option} {path} is a folder; give a file name"
            + (f" ending in {wanted}" if suffixes else "")
        )
    if suffixes and suffix not in suffixes:
        fail(f"{option} must end in {wanted}, got {path.name}")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                fail(f"{option} {path}: {parent} is a file, not a folder")
            break
    return suffix


def write_json_file(path: Path, data: object) -> None:
    """Write `data` as indented JSON to `path` atomically (a kill never leaves half a report);
    `-` writes it to stdout instead."""
    import json

    import typer

    from geoalign.io_atomic import atomic_write, remove_stale_temps

    text = json.dumps(data, indent=2, default=str) + "\n"
    if str(path) == "-":
        typer.echo(text, nl=False)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path)
    atomic_write(path, lambda fh: fh.write(text.encode()))
