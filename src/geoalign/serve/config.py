"""What a service instance is configured with: the model, the batching knobs and the limits.

One frozen dataclass, serialisable to JSON, so that `uvicorn --workers N` can hand the same
settings to every worker process through an environment variable.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from geoalign.errors import GeoalignError

ENV_VAR = "GEOALIGN_SERVE_CONFIG"


@dataclass(frozen=True)
class ServeConfig:
    """Settings of one service; every limit is per request unless it says otherwise."""

    model: str = "geoclip"
    backbone: str = "auto"
    gallery: str = "auto"  # the model's (else geoclip-100k), as predict and the Python API
    device: str = "cpu"
    places: bool = True
    max_batch: int = 16  # images per backbone batch
    max_wait_ms: float = 5.0  # how long the first image of a batch waits for company
    max_queue: int = 64  # images waiting for the backbone (per worker); more -> 503
    max_upload_mb: float = 20.0  # the whole request body
    max_pixels: int = 40_000_000  # per image, checked from the header before decoding
    max_images: int = 16  # image parts per request
    max_top_k: int = 100
    timeout_s: float = 60.0  # from the first byte received to the last byte sent
    api_key_file: str | None = None
    cors_origins: tuple[str, ...] = field(default_factory=tuple)
    tiles: str | None = None  # a tile-server URL template for the page ({z}/{x}/{y})

    def __post_init__(self) -> None:
        for name in ("max_batch", "max_queue", "max_pixels", "max_images", "max_top_k"):
            if getattr(self, name) < 1:
                raise GeoalignError(f"--{name.replace('_', '-')} must be at least 1")
        for name in ("max_wait_ms",):
            if getattr(self, name) < 0:
                raise GeoalignError(f"--{name.replace('_', '-')} must not be negative")
        for name in ("max_upload_mb", "timeout_s"):
            if getattr(self, name) <= 0:
                raise GeoalignError(f"--{name.replace('_', '-')} must be positive")
        object.__setattr__(self, "cors_origins", tuple(self.cors_origins))

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)

    def api_key(self) -> str | None:
        """The key clients must send (X-API-Key), read from its file; None: no key needed."""
        if self.api_key_file is None:
            return None
        path = Path(self.api_key_file)
        try:
            key = path.read_text(encoding="utf-8").strip()
        except OSError as err:
            raise GeoalignError(f"--api-key-file {path}: cannot read it ({err.strerror})") from err
        if len(key) < 16:
            raise GeoalignError(
                f"--api-key-file {path}: the key must be at least 16 characters (it has "
                f"{len(key)}); e.g. `python -c 'import secrets; print(secrets.token_urlsafe())'`"
            )
        return key

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> ServeConfig:
        data = json.loads(text)
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    @classmethod
    def from_env(cls) -> ServeConfig:
        text = os.environ.get(ENV_VAR)
        return cls() if not text else cls.from_json(text)
