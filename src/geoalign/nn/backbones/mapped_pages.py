"""Give a frozen backbone's memory-mapped weight pages back after each module's forward.

Why: transformers reads a float32 safetensors checkpoint through a memory map (no copy), but
every page a forward pass touches then stays in this process's resident set: the ViT-L/14 vision
tower is 1.16 GB, more than half of a one-photo `geoalign predict`'s peak memory. Right after a
module's forward, its weights' pages are released with `madvise(MADV_DONTNEED)`; the next
forward reads them again from the page cache (no disk I/O while the file stays cached), so at
most one module's weights are resident at a time. The values are unchanged: a released page of
a file mapping is read back from the file, which holds exactly these weights.

Only what is provably safe is released:
- Linux only (`/proc/self/smaps` and `pagemap`, libc `madvise`); anywhere else nothing is done;
- only tensors lying inside a mapping of a regular file with no anonymous (copy-on-write,
  i.e. written) page at set-up: releasing a written page would revert it to the file;
- before each release, `/proc/self/pagemap` confirms that none of the module's pages has been
  written since (a `load_state_dict` into the weights, say); if one has, that module's pages
  are never released again (a warning says so);
- only while the tensor is where it was at set-up (same address: not moved to a GPU, not
  replaced) and the module is frozen (no parameter requires grad, so nothing updates it).
"""

from __future__ import annotations

import ctypes
import mmap
import os
import sys
import warnings
import weakref
from dataclasses import dataclass

import numpy as np
from torch import nn

MADV_DONTNEED = 4  # <sys/mman.h> on Linux


@dataclass(frozen=True)
class FileMapping:
    start: int
    end: int
    path: str
    anonymous_kb: int


def file_mappings() -> list[FileMapping]:
    """This process's mappings of regular files, with their anonymous (written) kB."""
    out: list[FileMapping] = []
    current: list = []
    with open("/proc/self/smaps") as fh:
        for line in fh:
            head = line.split(None, 5)
            if "-" in head[0] and len(head) >= 5 and ":" not in head[0]:  # a mapping's header
                lo, hi = (int(x, 16) for x in head[0].split("-"))
                path = head[5].strip() if len(head) > 5 else ""
                current = [lo, hi, path]
            elif head[0] == "Anonymous:" and current:
                if current[2].startswith("/") and os.path.isfile(current[2]):
                    out.append(FileMapping(current[0], current[1], current[2], int(head[1])))
                current = []
    return out


class _Released:
    """The page ranges of one module's own tensors, checked again before each release."""

    def __init__(
        self, ranges: list[tuple[int, int]], tensors: list, warned: list[bool], root: str
    ) -> None:
        self.ranges = ranges
        self.tensors = [(weakref.ref(t), t.data_ptr()) for t in tensors]
        self.on = True
        self.warned = warned  # shared by one root module's hooks: one warning, not hundreds
        self.root = root

    def __call__(self, module: nn.Module, args, output) -> None:
        if not self.on or any(p.requires_grad for p in module.parameters(recurse=False)):
            return  # (trainable now: its weights may be written)
        for ref, ptr in self.tensors:
            t = ref()
            if t is None or t.data_ptr() != ptr:
                return  # moved or replaced: these ranges are no longer its memory
        if written(self.ranges):
            self.on = False
            if not self.warned[0]:
                self.warned[0] = True
                warnings.warn(
                    f"weights of {self.root} were modified in place: their memory-mapped "
                    "pages are kept resident from now on",
                    stacklevel=2,
                )
            return
        for start, length in self.ranges:
            _LIBC.madvise(start, length, MADV_DONTNEED)


def written(ranges: list[tuple[int, int]]) -> bool:
    """Whether any page of these (page-aligned) ranges of a file mapping holds data the file
    does not: present but anonymous (a copy-on-write copy) or swapped out (only anonymous pages
    are). /proc/self/pagemap: one 64-bit entry per page, bit 63 present, 62 swapped, 61 a file
    page; readable by the process itself."""
    page = mmap.PAGESIZE
    fd = os.open("/proc/self/pagemap", os.O_RDONLY)
    try:
        for start, length in ranges:
            raw = os.pread(fd, (length // page) * 8, (start // page) * 8)
            e = np.frombuffer(raw, dtype="<u8")
            present, swapped, file = (e >> 63) & 1, (e >> 62) & 1, (e >> 61) & 1
            if (swapped | (present & (1 - file))).any():
                return True
    finally:
        os.close(fd)
    return False


def _libc():
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        return libc
    except (OSError, AttributeError):
        return None


_LIBC = _libc()


def release_pages_after_forward(module: nn.Module) -> int:
    """Release each submodule's memory-mapped weight pages after its forward (see the module
    doc); returns the bytes put under this (0: nothing mapped from a file, or not Linux).
    Frozen modules only: trainable ones are left alone."""
    if _LIBC is None or any(p.requires_grad for p in module.parameters()):
        return 0
    if getattr(module, "_geoalign_pages_released", False):
        return 0  # (hooked already: by another Geolocator sharing this backbone)
    try:
        maps = [m for m in file_mappings() if m.anonymous_kb == 0]
    except OSError:
        return 0
    if not maps:
        return 0
    page = mmap.PAGESIZE
    total = 0
    warned = [False]
    for sub in module.modules():
        own = [
            t
            for t in [*sub.parameters(recurse=False), *sub.buffers(recurse=False)]
            if t.device.type == "cpu" and t.numel()
        ]
        ranges, kept = [], []
        for t in own:
            lo = t.data_ptr()
            hi = lo + t.numel() * t.element_size()
            home = next((m for m in maps if m.start <= lo and hi <= m.end), None)
            if home is None:
                continue
            start = max(home.start, lo - lo % page)  # whole pages, within the mapping
            end = min(home.end, -(-hi // page) * page)
            ranges.append((start, end - start))
            kept.append(t)
        if ranges:
            sub.register_forward_hook(_Released(ranges, kept, warned, type(module).__name__))
            total += sum(length for _, length in ranges)
    module._geoalign_pages_released = True
    return total
