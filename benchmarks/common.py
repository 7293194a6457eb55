"""Helpers shared by the benchmark scripts: a served gateway, RSS, percentiles."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def ensure_registry(path: Path, only: list[str] | None = None) -> Path:
    """Train the bundled models (standard profile; `only` these) if the registry lacks them."""
    subprocess.run([sys.executable, "-m", "molserve", "--registry", str(path), "bootstrap",
                    *(["--only", ",".join(only)] if only else [])], check=True)
    return path


def start_gateway(registry: Path, port: int, extra_env: dict | None = None) -> tuple[subprocess.Popen, float]:
    """Start `molserve serve`; return the process and seconds to its first successful predict."""
    env = {**os.environ, "MOLSERVE_REGISTRY": str(registry), **(extra_env or {})}
    started = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, "-m", "molserve", "serve", "--port", str(port), "--log-level", "warning"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/v1/predict"
    body = {"molecules": ["CCO"]}
    with httpx.Client() as client:
        while time.perf_counter() - started < 60:
            try:
                if client.post(url, json=body, timeout=5).status_code == 200:
                    return process, time.perf_counter() - started
            except httpx.TransportError:
                time.sleep(0.005)
    process.kill()
    raise RuntimeError("gateway did not answer within 60 s")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def percentiles(samples_s: list[float]) -> dict[str, float]:
    ms = np.array(samples_s) * 1000
    return {"p50_ms": float(np.percentile(ms, 50)), "p90_ms": float(np.percentile(ms, 90)),
            "p99_ms": float(np.percentile(ms, 99)), "mean_ms": float(ms.mean()), "n": len(ms)}


def wait_http(url: str, timeout: float = 120.0, headers: dict | None = None) -> float:
    """Poll `url` until it answers 200; return the seconds that took."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        try:
            if httpx.get(url, timeout=2, headers=headers).status_code == 200:
                return time.monotonic() - started
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"{url} not ready after {timeout} s")


def start_worker(registry: Path, port: int, log: Path) -> subprocess.Popen:
    """A `molserve worker` on loopback (CPU, one thread), logging to `log`; not waited for."""
    env = {**os.environ, "MOLSERVE_WORKER_REGISTRY": str(registry), "MOLSERVE_WORKER_DEVICE": "cpu",
           "MOLSERVE_WORKER_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "molserve", "worker", "--port", str(port),
                             "--log-level", "warning"], env=env, stdout=open(log, "ab"),
                            stderr=subprocess.STDOUT)
