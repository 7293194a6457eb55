"""The gateway application: wiring of settings, tiers, routes, errors and metrics."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from contextlib import asynccontextmanager
from pathlib import Path

import orjson
from fastapi import FastAPI

from molserve import __version__, logs
from molserve.asgi import BodyLimit
from molserve.config import Settings
from molserve.gateway import errors
from molserve.gateway.observability import GatewayMetrics
from molserve.gateway.routes import endpoints, health, jobs, models, predict, references, status, web
from molserve.prediction.router import Router
from molserve.processes import cancel_and_wait
from molserve.registry.store import Registry
from molserve.responses import JSONResponse

log = logging.getLogger("molserve.gateway")
access = logging.getLogger("molserve.access")

DESCRIPTION = """
Predictions of molecular properties and bioactivities from SMILES.

Every answer names the model, its version and the tier that produced it (`fast`: fingerprint
gradient-boosted ensembles in the gateway; `computed`: exact RDKit values), with units, an
uncertainty estimate and an applicability-domain score.
"""


# The routes whose body is JSON (a test checks this against the routes' own bodies).
JSON_ROUTES = {"/v1/predict", "/v1/jobs"}


class JsonOnly:
    """JSON routes read only JSON bodies (`application/json` or `application/*+json`) and answer
    any other media type with 415. A web page may POST text/plain or form bodies to another
    origin without a CORS preflight; reading those as JSON would let any site fire predictions
    and screens from a visitor's browser."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["method"] == "POST" and scope.get("path") in JSON_ROUTES:
            headers = dict(scope.get("headers") or ())
            media = headers.get(b"content-type", b"").split(b";")[0].strip().lower()
            has_body = headers.get(b"content-length", b"0") != b"0" or b"transfer-encoding" in headers
            is_json = media == b"application/json" or (media.startswith(b"application/")
                                                        and media.endswith(b"+json"))
            if (media or has_body) and not is_json:
                shown = media.decode("latin-1")[:100] or "none"
                body = orjson.dumps({
                    "error": "unsupported_media_type",
                    "message": f"{scope['path']} reads JSON: send the body with 'Content-Type: "
                               f"application/json' (this request's type: {shown})"})
                await send({"type": "http.response.start", "status": 415,
                            "headers": [(b"content-type", b"application/json"),
                                        (b"content-length", str(len(body)).encode())]})
                await send({"type": "http.response.body", "body": body})
                return
        return await self.app(scope, receive, send)


class Observe:
    """Count requests and time them by route template (plain ASGI: no per-request task)."""

    def __init__(self, app, metrics: GatewayMetrics, access_log: bool = False) -> None:
        self.app = app
        self.metrics = metrics
        self.access_log = access_log

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        status = 500
        incoming = dict(scope.get("headers") or ()).get(b"x-request-id", b"").decode("latin-1")
        # A caller's id is kept if it is short and printable; otherwise one is made.
        rid = incoming if 0 < len(incoming) <= 64 and incoming.isprintable() else uuid.uuid4().hex[:16]
        token = logs.request_id.set(rid)

        async def send_and_record(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message = {**message, "headers": [*message.get("headers", []),
                                                  (b"x-request-id", rid.encode())]}
            await send(message)

        try:
            await self.app(scope, receive, send_and_record)
        finally:
            route = scope.get("route")
            path = getattr(route, "path", "unmatched")
            elapsed = time.perf_counter() - started
            self.metrics.requests.labels(path, scope["method"], str(status)).inc()
            self.metrics.latency.labels(path).observe(elapsed)
            if self.access_log:
                access.info("%s %s %s %.1f ms", scope["method"], path, status, elapsed * 1000,
                            extra={"method": scope["method"], "path": path, "status": status,
                                   "ms": round(elapsed * 1000, 2), "request_id": rid})
            logs.request_id.reset(token)


async def _guide_not_built(scope, receive, send) -> None:
    """/guide where the documentation site was not built: a JSON 404 that says how to build it."""
    response = JSONResponse({"error": "guide_not_built", "message": "the documentation site is not "
                             "built on this server: run `make docs` (or read docs/ in the repository)"},
                            status_code=404)
    await response(scope, receive, send)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    logs.configure(json_lines=settings.log_json)
    from concurrent.futures import ThreadPoolExecutor

    # CPU work of large batches runs on as many threads as cores, not one per request, so
    # concurrent batches queue instead of thrashing (and memory stays bounded).
    compute = ThreadPoolExecutor(max_workers=settings.gateway.compute_threads, thread_name_prefix="predict")
    router = Router(Registry(settings.registry), max_batch=settings.gateway.max_batch, compute=compute)
    metrics = GatewayMetrics()
    metrics.private = router.private_owners
    router.observe_tier = lambda endpoint, tier, seconds: metrics.tier_latency.labels(
        metrics.endpoint(endpoint), tier).observe(seconds)
    from molserve.prediction.reference import ReferenceSets

    # Percentiles within a reference set: values a request finds missing are computed in a thread
    # while answers say they are pending.
    router.references = ReferenceSets(router.registry, router, background=True,
                                      default=settings.gateway.reference_default or None)

    def load_models() -> None:
        """Load the newest models (those already loaded at that version are kept)."""
        router.load()
        if settings.gateway.reference_warm and router.references.default is not None:
            router.references.warm()
        metrics.models_loaded.set(len(router.fast.models))
        for name, model in router.fast.models.items():
            metrics.model_load_seconds.labels(metrics.endpoint(name)).set(model.load_seconds)

    async def sync_fleet(fleet) -> None:
        """Versions other gateways published or withdrew: downloaded or deleted here, then
        served (every `sync_interval_s`)."""
        while True:
            try:
                if await asyncio.to_thread(fleet.sync, router.registry):
                    await asyncio.to_thread(load_models)
            except Exception:  # noqa: BLE001 - the database or store is away: the next round
                log.exception("fleet sync failed; retrying")
            await asyncio.sleep(settings.fleet.sync_interval_s)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        started = time.perf_counter()
        fleet = router.registry.fleet
        if fleet is not None:  # what the fleet published while this gateway was away, first
            await asyncio.to_thread(fleet.sync, router.registry)
        load_models()
        log.info("loaded %d fast models in %.3f s", len(router.fast.models),
                 time.perf_counter() - started)
        remote = settings.remote
        if settings.gateway.local_worker:
            from molserve.operations.local_worker import LocalWorker

            worker = LocalWorker(settings.registry, token=remote.worker_token)
            url = await asyncio.to_thread(worker.start)
            if url is not None:
                app.state.local_worker = worker
                remote = remote.model_copy(update={"worker_urls": [*remote.worker_urls, url],
                                                   "worker_token": worker.token})
        if remote.worker_urls:
            from molserve.prediction.remote import RemoteOptions, RemoteTier
            from molserve.prediction.router import REMOTE_TIERS

            # The same workers host every worker tier; each tier keeps its own breakers.
            for name in REMOTE_TIERS:
                router.remotes[name] = RemoteTier(RemoteOptions.from_settings(remote), name=name)
            await asyncio.gather(*(tier.start() for tier in router.remotes.values()))
        if settings.jobs.jobs_dir:
            from molserve.jobs.runner import JobRunner

            app.state.jobs = JobRunner(
                settings.jobs.jobs_dir, settings.registry, settings.datasets,
                max_concurrent=settings.jobs.max_concurrent_jobs, max_attempts=settings.jobs.job_max_attempts,
                on_model_registered=load_models, max_running_per_owner=settings.jobs.quota_running_jobs,
                time_limits=settings.jobs.job_time_limits,
                retention_s=settings.jobs.retention_days * 86400,
                database_url=settings.fleet.database_url, lease_s=settings.jobs.job_lease_s)
            app.state.jobs.start()
        if settings.gateway.bootstrap:
            from molserve.operations.bootstrap import BackgroundBootstrap

            app.state.bootstrap = BackgroundBootstrap(
                router.registry, load_models, only=settings.gateway.bootstrap_endpoints,
                profile=settings.gateway.bootstrap_profile,
                protocol=settings.gateway.bootstrap_protocol,
                foundation=app.state.local_worker is not None)
            router.pending = app.state.bootstrap.pending
            if app.state.bootstrap.start():
                log.info("training the missing bundled endpoints in the background; "
                         "GET /readyz shows progress")
        syncing = asyncio.create_task(sync_fleet(fleet)) if fleet is not None else None
        # The structural-alert catalog (about 11 MB, 20 ms) is built on first use, not here.
        yield
        await cancel_and_wait(syncing)
        if app.state.bootstrap is not None:
            await app.state.bootstrap.stop()
        if app.state.jobs is not None:
            await app.state.jobs.stop()
        for tier in router.remotes.values():
            await tier.stop()
        if app.state.local_worker is not None:
            await asyncio.to_thread(app.state.local_worker.stop)
        await asyncio.to_thread(router.references.close)

    app = FastAPI(
        title="molserve",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
        default_response_class=JSONResponse,
    )
    app.state.settings = settings
    from molserve.gateway.keys import KeyStore

    app.state.keys = KeyStore(settings.gateway.api_keys_file, settings.gateway.api_key,
                              database_url=settings.fleet.database_url)
    app.state.router = router
    app.state.load_models = load_models
    app.state.metrics = metrics
    app.state.jobs = None
    app.state.bootstrap = None
    app.state.local_worker = None
    app.state.pending_molecules = 0

    errors.install(app)
    for module in (predict, endpoints, models, jobs, status, health, web, references):
        app.include_router(module.router)
    from fastapi.staticfiles import StaticFiles

    app.mount("/static", StaticFiles(directory=web.STATIC), name="static")
    # The documentation site (`make docs`), linked from the page; /docs is the OpenAPI UI.
    guide = settings.gateway.guide_dir or Path(__file__).resolve().parents[2] / "site"
    if (guide / "index.html").is_file():
        app.mount("/guide", StaticFiles(directory=guide, html=True), name="guide")
    else:
        app.mount("/guide", _guide_not_built, name="guide")

    if settings.gateway.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=settings.gateway.cors_origins,
                           allow_methods=["GET", "POST", "DELETE"], allow_headers=["*"])
    app.add_middleware(JsonOnly)
    app.add_middleware(BodyLimit, limit=settings.gateway.max_body_bytes,
                       upload_limit=settings.jobs.max_upload_bytes)
    app.add_middleware(Observe, metrics=metrics, access_log=settings.gateway.access_log)
    return app
