"""`geoalign serve`: the HTTP API and web page (needs the `serve` extra)."""

from __future__ import annotations

from pathlib import Path

import typer

from geoalign.cli.common import console, fail


def serve(
    model: str = typer.Option("geoclip", help="Checkpoint name or folder."),
    backbone: str = typer.Option("auto", help="Backbone spec; auto = the model's."),
    gallery: str = typer.Option(
        "auto", help="Gallery name or CSV/Parquet file; auto = the model's."
    ),
    host: str = typer.Option("127.0.0.1", help="Address to bind; 0.0.0.0 exposes the service."),
    port: int = typer.Option(8000, min=1, max=65535),
    workers: int = typer.Option(1, min=1, help="Worker processes (each loads the model once)."),
    device: str = typer.Option("cpu"),
    max_batch: int = typer.Option(16, min=1, help="Images per backbone batch."),
    max_wait_ms: float = typer.Option(5.0, min=0, help="How long a batch waits to fill."),
    max_queue: int = typer.Option(64, min=1, help="Images waiting per worker; more -> 503."),
    max_upload_mb: float = typer.Option(20.0, min=0.01, help="Largest request body."),
    max_pixels: int = typer.Option(40_000_000, min=1, help="Largest image (pixels)."),
    max_images: int = typer.Option(16, min=1, help="Images per request."),
    timeout_s: float = typer.Option(60.0, min=0.1, help="Per-request time limit."),
    api_key_file: Path | None = typer.Option(
        None, help="File holding the key clients send in X-API-Key (none: no key needed)."
    ),
    cors: list[str] = typer.Option(
        [], "--cors", help="Origin allowed to call the API from a browser (repeatable)."
    ),
    tiles: str | None = typer.Option(
        None, help="Tile URL template for the page's map, e.g. http://tiles.local/{z}/{x}/{y}.png"
    ),
    places: bool = typer.Option(True, help="Add nearest city, region and country."),
) -> None:
    """Serve predictions over HTTP: POST /v1/predict, /v1/verify, /v1/explain; GET /v1/models,
    /healthz, /readyz, /metrics, /docs; the web page at /."""
    import os

    try:
        import uvicorn

        from geoalign.serve.config import ENV_VAR, ServeConfig
    except ModuleNotFoundError as err:
        fail(f"geoalign serve needs {err.name!r}: pip install 'geoalign[serve]'")
    if device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            fail(f"--device {device}: no CUDA GPU is visible here; use --device cpu")
    config = ServeConfig(
        model=model,
        backbone=backbone,
        gallery=gallery,
        device=device,
        places=places,
        max_batch=max_batch,
        max_wait_ms=max_wait_ms,
        max_queue=max_queue,
        max_upload_mb=max_upload_mb,
        max_pixels=max_pixels,
        max_images=max_images,
        timeout_s=timeout_s,
        api_key_file=None if api_key_file is None else str(api_key_file.resolve()),
        cors_origins=tuple(cors),
        tiles=tiles,
    )
    config.api_key()  # a missing or short key file fails here, not in every worker
    os.environ[ENV_VAR] = config.to_json()
    if host not in ("127.0.0.1", "localhost", "::1") and api_key_file is None:
        console.print(f"[yellow]warning:[/] serving on {host} without --api-key-file")
    console.print(f"geoalign serve: http://{host}:{port}/ (API docs at /docs); loading {model}")
    uvicorn.run(
        "geoalign.serve.app:factory",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=10,
    )


def register(app: typer.Typer) -> None:
    app.command("serve")(serve)
