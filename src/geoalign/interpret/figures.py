"""Writing the interpretation figures: one place for layout, folder creation, size and cleanup."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from geoalign.io_atomic import atomic_output


def save_figure(fig: Any, path: str | Path, *, dpi: int = 150) -> Path:
    """Lay out, write (making the folder) and close a matplotlib figure; returns its path.

    Closing matters: the CLI draws one chart per photo, and open figures accumulate in pyplot.
    """
    import matplotlib.pyplot as plt

    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with atomic_output(path) as tmp:
            fig.savefig(tmp, dpi=dpi, bbox_inches="tight")
    finally:
        plt.close(fig)
    return path
