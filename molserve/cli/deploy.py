"""`molserve deploy modal|ray`: the worker tier on Modal (printed steps, optionally `modal
deploy`) or on Ray Serve (deployed here and kept up until Ctrl-C, by `deploy.ray_app`)."""

from __future__ import annotations

import importlib.util
from typing import Annotated, Literal

import typer

from molserve.cli.common import group, settings

app = group()

MODAL_GUIDE = """\
Deploy the transformer worker tier on Modal:

  1. modal token new                                   # once, authenticates this machine
  2. modal secret create molserve-worker MOLSERVE_WORKER_TOKEN=<a long random token>
  3. modal volume put molserve-registry registry/ /    # upload fine-tuned models
  4. {command}
  5. point the gateway at the URL Modal prints for Worker.web:
       MOLSERVE_WORKER_URLS='["https://<workspace>--molserve-worker-worker-web.modal.run"]' \\
       MOLSERVE_WORKER_TOKEN=<the same token> molserve serve

Settings (environment, read at deploy time): MOLSERVE_MODAL_GPU (L4), MOLSERVE_MODAL_TRAIN_GPU
(A10G), MOLSERVE_MODAL_MIN_CONTAINERS (0: scale to zero), MOLSERVE_MODAL_SCALEDOWN_S (300),
MOLSERVE_MODAL_MAX_CONTAINERS (10), MOLSERVE_MODAL_MAX_BATCH (128), MOLSERVE_MODAL_SECRET.
Credentials live in Modal secrets and your Modal token, never in a request body.
"""


@app.command("deploy", help="run the worker tier on Modal or Ray Serve")
def deploy(
    ctx: typer.Context,
    target: Annotated[Literal["modal", "ray"], typer.Argument(show_default=False)],
    execute: Annotated[bool, typer.Option("--execute", help="modal: run `modal deploy` too")] = False,
    address: Annotated[str | None, typer.Option(
        help="ray: cluster address (default: start a local instance)", show_default=False)] = None,
    host: Annotated[str, typer.Option()] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535)] = 8100,
    backend: Annotated[Literal["torch", "onnx", "onnx-int8"], typer.Option()] = "torch",
    gpus_per_replica: Annotated[float, typer.Option("--gpus-per-replica", min=0)] = 0,
    min_replicas: Annotated[int, typer.Option("--min-replicas", min=0)] = 1,
    max_replicas: Annotated[int, typer.Option("--max-replicas", min=1)] = 4,
) -> int:
    if target == "modal":
        # Located, not imported: importing the app would need modal installed.
        spec = importlib.util.find_spec("molserve.deploy.modal_app")
        command = ["modal", "deploy", str(spec.origin if spec else "molserve/deploy/modal_app.py")]
        print(MODAL_GUIDE.format(command=" ".join(command)))
        if execute:
            import subprocess

            return subprocess.run(command, check=False).returncode
        return 0
    from molserve.deploy import ray_app

    config = settings(ctx)

    def ready(url: str) -> None:
        print(f"worker tier on Ray Serve at {url}; point the gateway at it with "
              f"MOLSERVE_WORKER_URLS='[\"{url}\"]'", flush=True)

    ray_app.serve_until_stopped(
        registry=config.registry, address=address, host=host, port=port, on_ready=ready,
        backend=backend, token=config.remote.worker_token, num_gpus=gpus_per_replica,
        min_replicas=min_replicas, max_replicas=max_replicas)
    return 0
