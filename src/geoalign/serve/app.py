"""The FastAPI app: routes, error handlers and the start-up that loads the model.

create_app(config)          # loads the model in the background; /readyz says when
create_app(config, engine)  # an already loaded Engine (tests, benchmarks)
factory()                   # for `uvicorn --factory`: the config from GEOALIGN_SERVE_CONFIG
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.cors import CORSMiddleware
from starlette.middleware.gzip import GZipMiddleware
from starlette.requests import ClientDisconnect

from geoalign._version import __version__
from geoalign.errors import GeoalignError
from geoalign.serve.batching import Batcher, QueueFull
from geoalign.serve.config import ServeConfig
from geoalign.serve.engine import Engine, Options, basemap_geojson
from geoalign.serve.errors import ApiError, error_body
from geoalign.serve.guard import BodyTooLarge, Guard
from geoalign.serve.metrics import Metrics
from geoalign.serve.openapi import UPLOAD_FIELD, openapi_body
from geoalign.serve.options import (
    check_gallery,
    parse_concept_top_k,
    parse_options,
    parse_prior,
)
from geoalign.serve.page import PAGE_ROUTES, page_response
from geoalign.serve.uploads import Decoded, decode_upload

log = logging.getLogger("geoalign.serve")


class State:
    """What the routes share: the config, the engine once loaded, the batcher, the metrics."""

    def __init__(self, config: ServeConfig, metrics: Metrics) -> None:
        self.config = config
        self.metrics = metrics
        self.engine: Engine | None = None
        self.batcher: Batcher | None = None
        self.load_error: str | None = None
        self.explaining = 0  # images in /v1/explain calls now (bounded by max_queue)

    def attach(self, engine: Engine) -> None:
        self.engine = engine
        self.batcher = Batcher(
            engine.embed,
            engine.executor,
            max_batch=self.config.max_batch,
            max_wait_s=self.config.max_wait_ms / 1000,
            max_queue=self.config.max_queue,
            on_batch=self.metrics.batch_size.observe,
        )
        self.metrics.ready.set(1)


def create_app(config: ServeConfig | None = None, engine: Engine | None = None) -> FastAPI:
    config = config or ServeConfig()
    metrics = Metrics()
    state = State(config, metrics)
    api_key = config.api_key()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        loop = asyncio.get_running_loop()
        if engine is not None:
            state.attach(engine)
            state.batcher.start()
        else:
            ready = asyncio.Event()

            def load() -> None:
                try:
                    loaded = Engine.load(config)
                except Exception as err:  # reported by /readyz and the log, not a crash loop
                    log.exception("could not load the model")
                    state.load_error = f"{type(err).__name__}: {err}"
                    loop.call_soon_threadsafe(ready.set)
                    return

                def done() -> None:
                    state.attach(loaded)
                    state.batcher.start()
                    log.info("model loaded: %s", loaded.card["method"])
                    ready.set()

                loop.call_soon_threadsafe(done)

            threading.Thread(target=load, name="geoalign-load", daemon=True).start()
        try:
            yield
        finally:
            if state.batcher is not None:
                await state.batcher.stop()

    app = FastAPI(
        title="geoalign",
        version=__version__,
        summary="Where was this photo taken? Top-k locations, regions and claim checks.",
        lifespan=lifespan,
        docs_url=None,  # served below from vendored Swagger UI files: /docs works offline
        redoc_url=None,
    )
    app.state.geoalign = state

    @app.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url="/openapi.json",
            title="geoalign API",
            swagger_js_url="/static/vendor/swagger-ui/swagger-ui-bundle.js",
            swagger_css_url="/static/vendor/swagger-ui/swagger-ui.css",
            swagger_favicon_url="/static/vendor/swagger-ui/favicon-32x32.png",
            swagger_ui_parameters={"validatorUrl": None},  # its default badge calls a server
        )

    # -- errors: one JSON shape --------------------------------------------------------------
    @app.exception_handler(ApiError)
    async def _api_error(_: Request, err: ApiError) -> JSONResponse:
        return JSONResponse(err.body(), status_code=err.status, headers=err.headers)

    @app.exception_handler(BodyTooLarge)
    async def _too_large(_: Request, err: BodyTooLarge) -> JSONResponse:
        message = f"the request body is larger than the upload limit of {config.max_upload_mb:g} MB"
        return JSONResponse(error_body(413, message, UPLOAD_FIELD), status_code=413)

    @app.exception_handler(ClientDisconnect)
    async def _gone(_: Request, err: ClientDisconnect) -> JSONResponse:
        log.info("client disconnected before the body was complete")
        return JSONResponse(error_body(400, "the client disconnected", None), status_code=400)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, err: RequestValidationError) -> JSONResponse:
        first = err.errors()[0] if err.errors() else {}
        field = str(first.get("loc", ["?"])[-1])
        message = f"{field}: {first.get('msg', 'invalid value')}"
        return JSONResponse(error_body(422, message, field), status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, err: StarletteHTTPException) -> JSONResponse:
        message = str(err.detail)
        if err.status_code == 404:
            message = "no such endpoint; see /docs"
        return JSONResponse(error_body(err.status_code, message, None), status_code=err.status_code)

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, err: Exception) -> JSONResponse:
        log.exception("unexpected error")
        return JSONResponse(
            error_body(500, f"internal error ({type(err).__name__}); see the service log", None),
            status_code=500,
        )

    # -- probes and metrics --------------------------------------------------------------------
    @app.get("/healthz", tags=["operations"])
    async def healthz() -> dict[str, str]:
        """The process answers (liveness)."""
        return {"status": "ok"}

    @app.get("/readyz", tags=["operations"])
    async def readyz() -> JSONResponse:
        """The model is loaded and requests can be served (readiness)."""
        if state.engine is not None:
            return JSONResponse({"status": "ready", "model": config.model})
        if state.load_error is not None:
            return JSONResponse(
                error_body(503, f"the model failed to load: {state.load_error}"), status_code=503
            )
        return JSONResponse(
            {"status": "loading", "model": config.model},
            status_code=503,
            headers={"Retry-After": "5"},
        )

    @app.get("/metrics", tags=["operations"])
    async def prometheus() -> Response:
        """Prometheus text format: requests, latencies, batch sizes, queue depth."""
        metrics.queue_depth.set(state.batcher.depth if state.batcher else 0)
        return Response(metrics.render(), media_type="text/plain; version=0.0.4")

    # -- API --------------------------------------------------------------------------------------
    @app.get("/v1/models", tags=["api"])
    async def models() -> dict[str, Any]:
        """The model card: method, backbone, gallery and calibration of the served model."""
        return {"models": [_engine(state).card]}

    @app.post("/v1/predict", tags=["api"], openapi_extra=openapi_body(verify=False))
    async def predict(request: Request) -> JSONResponse:
        """Where was each photo taken: one `geoalign.prediction/v1` record per image, the same
        record `geoalign predict --json` writes."""
        rid, options, decoded, results = await _serve(state, request, verify=False)
        body: dict[str, Any] = {"request_id": rid, "results": [r["record"] for r in results]}
        if options.geojson:
            body["geojson"] = [r.get("geojson") for r in results]
        if options.check_exif:
            body["verification"] = [r.get("verification") for r in results]
        return JSONResponse(body)

    @app.post("/v1/verify", tags=["api"], openapi_extra=openapi_body(verify=True))
    async def verify(request: Request) -> JSONResponse:
        """Does each photo support the location it claims (its EXIF GPS, or `claimed`)? The
        claim is inconsistent at `alpha` when it lies outside the (1 - alpha)-region."""
        rid, options, decoded, results = await _serve(state, request, verify=True)
        items = []
        for d, r in zip(decoded, results, strict=True):
            item: dict[str, Any] = {"source": d.name, "prediction": r["record"]}
            if "verification" in r:
                item["verification"] = r["verification"]
            else:
                item["verification"] = {"error": r["record"].get("error", "not verified")}
            if options.geojson:
                item["geojson"] = r.get("geojson")
            items.append(item)
        if (
            len(items) == 1
            and "error" in items[0]["verification"]
            and "error" not in items[0]["prediction"]
        ):
            raise ApiError(
                422,
                f"claimed: {items[0]['verification']['error']}; send claimed=lat,lon",
                field="claimed",
            )
        return JSONResponse({"request_id": rid, "results": items})

    @app.post(
        "/v1/explain",
        tags=["api"],
        openapi_extra=openapi_body(explain=True),
        responses={409: {"description": "The served model is not concept-aware."}},
    )
    async def explain(request: Request) -> JSONResponse:
        """The concept explanation of each photo (concept-aware models): its strongest
        concepts, the country the concept bottleneck reads from them with each concept's share,
        and the model's top locations; one `geoalign.explanation/v1` record per image, the
        record `geoalign explain --json` prints. Other models: 409 (see `explain` in
        /v1/models)."""
        rid, records = await _explain(state, request)
        return JSONResponse({"request_id": rid, "results": records})

    # -- the page ---------------------------------------------------------------------------------
    @app.get("/page-config.json", include_in_schema=False)
    async def page_config() -> dict[str, Any]:
        return {
            "tiles": config.tiles,
            "api_key_required": api_key is not None,
            "max_images": config.max_images,
            "max_upload_mb": config.max_upload_mb,
            "version": __version__,
            # None while the model loads (the page asks again); then whether /v1/explain works
            "explain": None if state.engine is None else state.engine.explainer is not None,
        }

    @app.get("/basemap.geojson", include_in_schema=False)
    async def basemap() -> Response:
        data = await asyncio.to_thread(basemap_geojson)
        return Response(
            data,
            media_type="application/geo+json",
            headers={"Cache-Control": "public, max-age=86400"},
        )

    for path in PAGE_ROUTES:
        app.add_api_route(path, _page_route(path), methods=["GET"], include_in_schema=False)

    app.add_middleware(GZipMiddleware, minimum_size=4096)
    app.add_middleware(  # around the routes and gzip: id, key, limits, timeout, metrics
        Guard,
        max_body=config.max_upload_bytes,
        timeout_s=config.timeout_s,
        api_key=api_key,
        metrics=metrics,
    )
    if config.cors_origins:
        # Outermost, around Guard: a browser's preflight (OPTIONS) never carries the API key,
        # so it is answered here before the key check, and Guard's own refusals (401, 413,
        # 503) still carry the CORS headers a cross-origin page needs to read them.
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(config.cors_origins),
            allow_methods=["GET", "POST"],
            allow_headers=["X-API-Key", "X-Request-ID", "Content-Type"],
            expose_headers=["X-Request-ID", "Retry-After"],
        )
    return app


def _page_route(path: str):
    async def route() -> Response:
        return page_response(path)

    return route


def _engine(state: State) -> Engine:
    if state.engine is None:
        if state.load_error is not None:
            raise ApiError(503, f"the model failed to load: {state.load_error}")
        raise ApiError(
            503, "the model is still loading; retry shortly", headers={"Retry-After": "5"}
        )
    return state.engine


async def _read_form(request: Request, max_images: int):
    try:
        return await request.form(max_files=max_images, max_fields=64, max_part_size=64 * 1024)
    except StarletteHTTPException as err:  # the multipart parser's own refusals
        raise ApiError(400, f"body: {err.detail}", field="body") from None
    except (ValueError, KeyError, AssertionError) as err:
        raise ApiError(
            400, f"body: not a valid multipart/form-data body ({err})", field="body"
        ) from None


async def _read_uploads(
    state: State, request: Request, engine: Engine, parse: Callable[[dict[str, str]], Any]
) -> tuple[Any, list[Decoded]]:
    """The request's options (`parse` of its query and text fields, awaited; checked before
    any image is decoded) and its uploads decoded off the event loop, in order."""
    config = state.config
    kind = request.headers.get("content-type", "")
    if not kind.startswith("multipart/form-data"):
        raise ApiError(
            415,
            f"send the images as multipart/form-data in the field `{UPLOAD_FIELD}` "
            f"(got Content-Type {kind or 'none'!r}); e.g. curl -F {UPLOAD_FIELD}=@photo.jpg",
            field="Content-Type",
        )
    form = await _read_form(request, config.max_images)
    try:
        params: dict[str, str] = dict(request.query_params)
        for key, value in form.multi_items():
            if isinstance(value, str):
                params[key] = value
        options = await parse(params)
        uploads = [v for v in form.getlist(UPLOAD_FIELD)]
        if not uploads:
            raise ApiError(
                422,
                f"{UPLOAD_FIELD}: no image; send one or more files in the multipart field "
                f"`{UPLOAD_FIELD}` (curl -F {UPLOAD_FIELD}=@photo.jpg)",
                field=UPLOAD_FIELD,
            )
        if any(not isinstance(u, UploadFile) for u in uploads):
            raise ApiError(
                422, f"{UPLOAD_FIELD}: must be a file upload, not a text field", field=UPLOAD_FIELD
            )
        names = [_source_name(u.filename, i) for i, u in enumerate(uploads)]
        blobs = [await u.read() for u in uploads]
    finally:
        await form.close()
    decoded = list(
        await asyncio.gather(
            *(
                asyncio.to_thread(decode_upload, b, n, engine.transform, config.max_pixels)
                for b, n in zip(blobs, names, strict=True)
            )
        )
    )
    del blobs
    for d in decoded:
        state.metrics.images.labels("ok" if d.pixels is not None else "unreadable").inc()
    if not any(d.pixels is not None for d in decoded):
        first = decoded[0]
        status = 413 if "pixels is above the limit" in (first.error or "") else 422
        raise ApiError(status, f"{UPLOAD_FIELD} {first.name}: {first.error}", field=UPLOAD_FIELD)
    return options, decoded


async def _serve(
    state: State, request: Request, *, verify: bool
) -> tuple[str, Options, list[Decoded], list[dict[str, Any]]]:
    """Read, decode, batch and finish one predict/verify request."""
    from geoalign.serve.context import request_id

    engine = _engine(state)

    async def parse(params: dict[str, str]) -> Options:
        options = parse_options(params, max_top_k=state.config.max_top_k, verify=verify)
        check_gallery(params.get("gallery"), engine.galleries)
        options.prior = await asyncio.to_thread(parse_prior, params)
        return options

    options, decoded = await _read_uploads(state, request, engine, parse)
    readable = [d for d in decoded if d.pixels is not None]
    assert state.batcher is not None
    try:
        queries = await state.batcher.submit_many([d.pixels for d in readable])
    except QueueFull:
        raise _at_capacity() from None
    loop = asyncio.get_running_loop()
    try:
        results = await loop.run_in_executor(
            engine.executor, engine.finish, decoded, queries, options
        )
    except GeoalignError as err:
        field = "prior" if options.prior is not None else None
        raise ApiError(422, str(err), field=field) from None
    return request_id(), options, decoded, results


def _at_capacity() -> ApiError:
    return ApiError(
        503,
        "the service is at capacity (queue full); retry after the Retry-After seconds",
        headers={"Retry-After": "1"},
    )


async def _explain(state: State, request: Request) -> tuple[str, list[dict[str, Any]]]:
    """Read, decode and explain one /v1/explain request (a 409 before reading the body when
    the served model has no concept scores)."""
    from geoalign.serve.context import request_id

    engine = _engine(state)
    if engine.explainer is None:
        raise ApiError(
            409,
            f"the served model ({state.config.model}, method {engine.card['method']!r}) has no "
            "concept scores: /v1/explain needs a concept-aware model (trained with a "
            "configs/concept/*.yaml config); GET /v1/models says `explain: false`",
            field="model",
        )
    concepts = engine.card["concepts"]["count"]

    async def parse(params: dict[str, str]) -> int | None:
        return parse_concept_top_k(params, concepts)

    top_k, decoded = await _read_uploads(state, request, engine, parse)
    readable = sum(d.pixels is not None for d in decoded)
    if state.explaining + readable > state.config.max_queue:
        raise _at_capacity()
    state.explaining += readable
    try:
        loop = asyncio.get_running_loop()
        records = await loop.run_in_executor(engine.executor, engine.explain, decoded, top_k)
    except GeoalignError as err:
        raise ApiError(422, str(err), field=None) from None
    finally:
        state.explaining -= readable
    return request_id(), records


def _source_name(filename: str | None, index: int) -> str:
    """The record's `source`: the client's file name, printable and short (never a path here)."""
    name = (filename or "").replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(c for c in name if c.isprintable())[:200]
    return name or f"image-{index + 1}"


def factory() -> Any:
    """`uvicorn --factory geoalign.serve.app:factory`: one app per worker, same config."""
    from geoalign.serve.context import configure_logging

    configure_logging()
    return create_app(ServeConfig.from_env())
