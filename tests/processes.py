"""Start real gateway and worker processes on loopback ports for end-to-end tests."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from contextlib import contextmanager

import httpx

from tests.conftest import free_port


def wait_for(url: str, timeout_s: float = 60, headers: dict | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=1, headers=headers).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"{url} did not come up within {timeout_s} s")


def start_worker(registry, port: int, token: str = "t0ken", backend: str = "onnx") -> subprocess.Popen:
    env = {**os.environ, "MOLSERVE_WORKER_TOKEN": token, "MOLSERVE_WORKER_MAX_WAIT_MS": "2"}
    process = subprocess.Popen(
        [sys.executable, "-m", "molserve", "--registry", str(registry), "worker", "--port", str(port),
         "--backend", backend, "--log-level", "warning"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for(f"http://127.0.0.1:{port}/readyz", headers={"authorization": f"Bearer {token}"})
    return process


@contextmanager
def gateway(registry, worker_urls: list[str], token: str = "t0ken", **env_overrides):
    import tempfile

    port = free_port()
    env = {
        **os.environ,
        "MOLSERVE_JOBS_DIR": tempfile.mkdtemp(prefix="molserve-jobs-"),
        "MOLSERVE_REGISTRY": str(registry),
        "MOLSERVE_WORKER_URLS": json.dumps(worker_urls),
        "MOLSERVE_WORKER_TOKEN": token,
        "MOLSERVE_WORKER_TIMEOUT_MS": "500",
        "MOLSERVE_BREAKER_FAILURES": "3",
        "MOLSERVE_BREAKER_RESET_S": "1",
        "MOLSERVE_HEALTH_INTERVAL_S": "0.3",
        **{k: str(v) for k, v in env_overrides.items()},
    }
    # Logs go to a file, not a pipe: a pipe nobody drains would stall a chatty server.
    log_file = tempfile.NamedTemporaryFile(prefix="molserve-gateway-", suffix=".log", delete=False)
    process = subprocess.Popen(
        [sys.executable, "-m", "molserve", "serve", "--port", str(port), "--log-level", "warning"],
        env=env, stdout=subprocess.DEVNULL, stderr=log_file)
    process.log_path = log_file.name
    try:
        wait_for(f"http://127.0.0.1:{port}/readyz")
        yield f"http://127.0.0.1:{port}", process
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()


def stop(process: subprocess.Popen, sig=signal.SIGTERM) -> None:
    if process.poll() is None:
        process.send_signal(sig)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")
