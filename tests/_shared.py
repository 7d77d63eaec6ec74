"""Where the project's shared reference data lives: `shared/` beside the clone (as CI lays it out),
else the workplace copy."""

from pathlib import Path

_CANDIDATES = [Path(__file__).resolve().parents[2] / "shared" / "data", Path("/work/shared/data")]
SHARED_DATA = next((p for p in _CANDIDATES if p.is_dir()), _CANDIDATES[0])
