"""Load a checkpoint's tensors straight into another dtype, one tensor at a time.

Why by hand: transformers reads a float32 safetensors file through a memory map and converts it
to bfloat16 afterwards, so a `--bf16` start holds every float32 page of the file *and* the bf16
copies at once (ViT-L/14: 1.16 GB + 0.58 GB, more than loading float32). Here the module is built
on the meta device (no storage), each tensor is read with a plain file read (page cache, not this
process's memory), converted, and assigned: the peak is the converted weights plus one tensor.
The values are the same as transformers' (`Tensor.to(dtype)` of the same bytes).
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import torch
from torch import nn

_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
}


def safetensors_header(path: Path) -> tuple[dict[str, dict], int]:
    """The tensor table of a .safetensors file and the offset its data starts at."""
    with open(path, "rb") as fh:
        (size,) = struct.unpack("<Q", fh.read(8))
        header = json.loads(fh.read(size))
    header.pop("__metadata__", None)
    return header, 8 + size


def read_state(
    path: Path, names: list[str], dtype: torch.dtype, *, strip: str = ""
) -> dict[str, torch.Tensor]:
    """The tensors `names` (looked up as `strip + name`) of `path`, floating ones in `dtype`.

    Raises KeyError naming a missing tensor, ValueError for a dtype this reader does not know."""
    header, start = safetensors_header(path)
    out: dict[str, torch.Tensor] = {}
    with open(path, "rb") as fh:
        for name in names:
            entry = header[strip + name]
            if entry["dtype"] not in _DTYPES:
                raise ValueError(f"{path}: tensor {name} has dtype {entry['dtype']}")
            begin, end = entry["data_offsets"]
            fh.seek(start + begin)
            buf = bytearray(end - begin)
            fh.readinto(buf)
            t = torch.frombuffer(buf, dtype=_DTYPES[entry["dtype"]]).reshape(entry["shape"])
            out[name] = t.to(dtype) if t.is_floating_point() else t.clone()
            del buf, t
    return out


def has_meta_tensors(module: nn.Module) -> bool:
    return any(t.is_meta for t in [*module.parameters(), *module.buffers()])


def assign_state(module: nn.Module, path: Path, dtype: torch.dtype) -> nn.Module:
    """Fill a meta-device `module` with its persistent tensors from `path` (strict)."""
    state = read_state(path, list(module.state_dict()), dtype)
    module.load_state_dict(state, strict=True, assign=True)
    return module
