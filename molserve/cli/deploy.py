"""`molserve deploy modal|ray`: the worker tier on Modal (printed steps, `--check` of the
account, optionally `modal deploy`) or on Ray Serve (deployed here and kept up until Ctrl-C,
by `deploy.ray_app`)."""

from __future__ import annotations

import importlib.util
import json
import sys
from typing import Annotated, Literal

import typer

from molserve.cli.common import group, settings
from molserve.errors import InvalidInput

app = group()

# In the order a first deployment works: the secret before anything starts a Worker, the
# Volumes created (by --check) before `volume put` writes to one, models uploaded before deploying.
MODAL_GUIDE = """\
Deploy the worker tiers on Modal:

  1. modal token new                                   # once, authenticates this machine
  2. modal secret create {secret} MOLSERVE_WORKER_TOKEN=<a long random token>
  3. molserve deploy modal --check                     # checks the token, secret and image pins;
                                                       # creates the Volumes and progress Dict
  4. modal volume put molserve-registry registry/ /    # upload fine-tuned models
  5. {command}    # or: molserve deploy modal --execute
  6. point the gateway at the URL Modal prints for Worker.web:
       MOLSERVE_WORKER_URLS='["https://<workspace>--{app}-worker-web.modal.run"]' \\
       MOLSERVE_WORKER_TOKEN=<the same token> molserve serve

Settings (environment, read at deploy time and baked into the image): MOLSERVE_MODAL_GPU (L4),
MOLSERVE_MODAL_TRAIN_GPU (A10G), MOLSERVE_MODAL_MIN_CONTAINERS (0: scale to zero),
MOLSERVE_MODAL_SCALEDOWN_S (300), MOLSERVE_MODAL_MAX_CONTAINERS (10), MOLSERVE_MODAL_MAX_BATCH (128),
MOLSERVE_MODAL_SECRET. Credentials live in Modal secrets and your Modal token, never in a request body.
"""


def modal_deploy_command() -> list[str]:
    """`modal deploy <app file>` run by this Python (not whatever `modal` is on PATH: outside
    an activated virtual environment that is another install, or none)."""
    # Located, not imported: importing the app would need modal installed.
    spec = importlib.util.find_spec("molserve.deploy.modal_app")
    return [sys.executable, "-m", "modal", "deploy",
            str(spec.origin if spec else "molserve/deploy/modal_app.py")]


def _resources(text: str | None) -> dict[str, float] | None:
    if not text:
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise InvalidInput(f"--resources must be a JSON object such as '{{\"molserve\": 1}}': {error}",
                           code="bad_resources") from None
    if not isinstance(value, dict) or not all(isinstance(v, int | float) for v in value.values()):
        raise InvalidInput("--resources must be a JSON object of resource names to amounts, such as "
                           "'{\"molserve\": 1}'", code="bad_resources")
    return {str(k): float(v) for k, v in value.items()}


@app.command("deploy", help="run the worker tier on Modal or Ray Serve")
def deploy(
    ctx: typer.Context,
    target: Annotated[Literal["modal", "ray"], typer.Argument(show_default=False)],
    execute: Annotated[bool, typer.Option("--execute", help="modal: run `modal deploy` too")] = False,
    check: Annotated[bool, typer.Option(
        "--check", help="modal: check the token, secret and image pins; create the Volumes and Dict")
    ] = False,
    address: Annotated[str | None, typer.Option(
        help="ray: cluster address (default: start a local instance)", show_default=False)] = None,
    host: Annotated[str | None, typer.Option(
        help="ray: address Serve's proxies bind (default: 127.0.0.1 locally, 0.0.0.0 on a remote "
             "cluster)", show_default=False)] = None,
    port: Annotated[int, typer.Option(min=1, max=65535)] = 8100,
    backend: Annotated[Literal["torch", "onnx", "onnx-int8"], typer.Option()] = "torch",
    gpus_per_replica: Annotated[float, typer.Option("--gpus-per-replica", min=0)] = 0,
    min_replicas: Annotated[int, typer.Option("--min-replicas", min=0)] = 1,
    max_replicas: Annotated[int, typer.Option("--max-replicas", min=1)] = 4,
    resources: Annotated[str | None, typer.Option(
        help="ray: custom resources each replica needs, as JSON (e.g. '{\"gpu_node\": 1}')",
        show_default=False)] = None,
    proxy_location: Annotated[Literal["EveryNode", "HeadOnly"], typer.Option(
        "--proxy-location", help="ray: where Serve runs HTTP proxies")] = "EveryNode",
    batch_endpoint: Annotated[list[str] | None, typer.Option(
        "--batch-endpoint", help="ray: also deploy a BatchPredictor for this endpoint (repeatable)",
        show_default=False)] = None,
    pip_from_lock: Annotated[bool, typer.Option(
        "--pip-from-lock", help="ray: have Ray install the worker's locked dependencies on each node")
    ] = False,
) -> int:
    if target == "modal":
        from molserve.config import ModalDeploySettings

        modal_settings = ModalDeploySettings()
        if check:
            from molserve.deploy.modal_setup import check as check_setup

            report = check_setup(modal_settings, say=lambda line: print(line, flush=True))
            print("ready to deploy" + (" (see the warnings above)" if report.warnings else ""))
            if not execute:
                return 0
        command = modal_deploy_command()
        if not check:
            print(MODAL_GUIDE.format(command=" ".join(["modal", *command[3:]]), secret=modal_settings.secret,
                                     app=modal_settings.app))
        if execute:
            import subprocess

            return subprocess.run(command, check=False).returncode
        return 0
    from molserve.deploy import ray_app

    config = settings(ctx)
    replica_resources = _resources(resources)

    def ready(url: str) -> None:
        print(f"worker tier on Ray Serve at {url}; point the gateway at it with "
              f"MOLSERVE_WORKER_URLS='[\"{url}\"]'", flush=True)

    ray_app.serve_until_stopped(
        registry=config.registry, address=address, host=host, port=port, on_ready=ready,
        backend=backend, token=config.remote.worker_token, num_gpus=gpus_per_replica,
        min_replicas=min_replicas, max_replicas=max_replicas, resources=replica_resources,
        proxy_location=proxy_location, batch_endpoints=tuple(batch_endpoint or ()),
        pip_from_lock=pip_from_lock)
    return 0
