"""Shared benchmark plumbing: timing, machine description, and RESULTS.md sections.

Each `## ` section of RESULTS.md is written by one script through `write_section`, which stamps it
with the script's name and a digest of its text; tests/test_results_claims.py checks every stamp,
so a section edited by hand (or one no script writes) fails the fast suite. Change a section by
changing its script and rerunning it.
"""

from __future__ import annotations

import hashlib
import os
import platform
import re
import resource
import sys
import time
from collections.abc import Callable
from datetime import date
from pathlib import Path

RESULTS = Path(__file__).with_name("RESULTS.md")


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import torch

    return (
        f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, Python {platform.python_version()}"
    )


def best_time(fn: Callable[[], object], repeats: int = 3, warmup: int = 1) -> float:
    """Best wall time of `repeats` runs after `warmup` runs (the least-disturbed measurement)."""
    for _ in range(warmup):
        fn()
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def peak_rss_mb() -> float:
    """Peak RSS of this process's own address space.

    VmHWM, not getrusage's ru_maxrss: Linux carries ru_maxrss over an exec, so a child started
    from a large benchmark process would report the parent's peak instead of its own.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


STAMP = re.compile(
    r"^<!-- written by benchmarks/(?P<script>[\w.]+\.py); text sha256 (?P<digest>[0-9a-f]{16})"
    r"(?P<note>; [^>]*)? -->$"
)
PREAMBLE = "# Benchmark results\n\nRun on demand; each section is rewritten by its script.\n"


def text_digest(body: str) -> str:
    """The digest a section's stamp records: sha256 of its stripped text, 16 hex digits."""
    return hashlib.sha256(body.strip().encode()).hexdigest()[:16]


def sections(text: str) -> dict[str, str]:
    """RESULTS.md split into {section title: everything after its `## ` header line}."""
    parts = re.split(r"^## (.+)\n", text, flags=re.M)
    return {parts[i].strip(): parts[i + 1] for i in range(1, len(parts), 2)}


def write_section(name: str, body: str, *, script: str | None = None) -> None:
    """Replace (or append) the section `## name` in RESULTS.md, stamped with machine and date,
    the script that wrote it (the caller's file unless given) and a digest of its text."""
    script = script or Path(sys._getframe(1).f_code.co_filename).name
    header = f"## {name}"
    text_part = f"_{date.today().isoformat()} · {machine()}_\n\n{body.strip()}"
    stamp = f"<!-- written by benchmarks/{script}; text sha256 {text_digest(text_part)} -->"
    block = f"{header}\n{stamp}\n\n{text_part}\n"
    text = RESULTS.read_text() if RESULTS.exists() else PREAMBLE
    pattern = re.compile(rf"^{re.escape(header)}\n.*?(?=^## |\Z)", re.S | re.M)
    text = (
        pattern.sub(lambda _: block + "\n", text)
        if pattern.search(text)
        else text.rstrip() + "\n\n" + block
    )
    RESULTS.write_text(text)
    print(block)
