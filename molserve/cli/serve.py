"""`molserve serve` (the HTTP gateway) and `molserve worker` (the worker tiers' service).

Both only build their settings from the options and hand the app to uvicorn.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import typer

from molserve.cli.common import group, settings

app = group()

# uvicorn's levels; anything else would only fail after the models are loaded.
LogLevel = Literal["critical", "error", "warning", "info", "debug", "trace"]
Host = Annotated[str | None, typer.Option(help="default: the settings' host", show_default=False)]
Port = Annotated[int | None, typer.Option(min=1, max=65535, help="default: the settings' port",
                                          show_default=False)]


@app.command("serve", help="serve the HTTP gateway")
def serve(
    ctx: typer.Context,
    host: Host = None,
    port: Port = None,
    bootstrap: Annotated[bool, typer.Option(
        "--bootstrap", help="train the bundled endpoints the registry lacks in the background; each "
        "is served as soon as it is trained")] = False,
    local_worker: Annotated[bool, typer.Option(
        "--local-worker", help="also start a worker process on this machine for the worker "
        "tiers' models in the registry (and, with --bootstrap, train the foundation tier's heads "
        "in the background after the fast models); each is served as it lands")] = False,
    log_level: Annotated[LogLevel, typer.Option("--log-level")] = "info",
    workers: Annotated[int, typer.Option(
        "--workers", min=1, help="processes serving the port; the models are loaded once and "
        "shared (forked after loading)")] = 1,
) -> int:
    import uvicorn

    from molserve.gateway.app import create_app

    config = settings(ctx)
    if bootstrap:
        config = config.with_overrides(bootstrap=True)
    if local_worker:
        config = config.with_overrides(local_worker=True)
    if workers > 1 and config.gateway.bootstrap:
        raise typer.BadParameter("the start-up bootstrap trains in one process: run it with one "
                                 "worker, then restart with --workers", param_hint="--workers")
    app_ = create_app(config)
    host, port = host or config.gateway.host, port or config.gateway.port
    if workers > 1:
        from molserve.gateway import prefork

        prefork.serve(app_, host, port, workers, log_level)
        return 0
    uvicorn.run(app_, host=host, port=port, log_level=log_level, access_log=False, loop="auto",
                http="auto")
    return 0


@app.command("worker", help="serve the worker tiers' models (transformer, graph, foundation)")
def worker(
    ctx: typer.Context,
    host: Host = None,
    port: Port = None,
    backend: Annotated[Literal["torch", "onnx", "onnx-int8"] | None, typer.Option()] = None,
    device: Annotated[str | None, typer.Option(help="auto (default), cpu, cuda")] = None,
    reload_s: Annotated[float, typer.Option(
        "--reload-s", min=0, help="look for newly registered models at most this often (seconds, "
        "on a request) and serve them without a restart; 0: serve the models found at start")] = 0,
    log_level: Annotated[LogLevel, typer.Option("--log-level")] = "info",
) -> int:
    import uvicorn

    from molserve.config import WorkerSettings
    from molserve.worker.app import create_worker_app

    overrides: dict[str, object] = {k: v for k, v in {"backend": backend, "device": device}.items() if v}
    registry: Path | None = ctx.meta.get("molserve.registry")
    if registry is not None:
        overrides["registry"] = registry
    config = WorkerSettings(**overrides)
    served = create_worker_app(config)
    if reload_s:
        from molserve.deploy.reloading import ReloadingApp, registry_generation

        served = ReloadingApp(lambda: create_worker_app(config),
                              lambda: registry_generation(config.registry), check_s=reload_s)
    uvicorn.run(served, host=host or config.host, port=port or config.port,
                log_level=log_level, access_log=False)
    return 0
