"""Serving throughput against processes: `molserve serve` (one process) and `molserve serve
--workers N` (models loaded once, then forked), in the same run.

Load: `--clients` concurrent connections (one asyncio client process) each sending
single-molecule requests for every endpoint, for `--seconds`. Memory: the proportional set size
(PSS, shared pages divided between the processes that share them) summed over the gateway's
processes, and the RSS of the one-process gateway. The client runs on the same cores.

Run: .venv/bin/python -m benchmarks.bench_workers [--registry registry] [--workers 2]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from benchmarks.bench_gateway import MOLECULES
from benchmarks.common import ensure_registry, free_port, rss_mb


def pss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def tree(pid: int) -> list[int]:
    """The process and its children."""
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return [pid, *map(int, children)]


def start(registry: Path, port: int, workers: int, jobs_dir: Path) -> subprocess.Popen:
    env = {**os.environ, "MOLSERVE_REGISTRY": str(registry), "MOLSERVE_JOBS_DIR": str(jobs_dir)}
    process = subprocess.Popen([sys.executable, "-m", "molserve", "serve", "--port", str(port),
                                "--log-level", "warning", "--workers", str(workers)],
                               env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.post(f"http://127.0.0.1:{port}/v1/predict", json={"molecules": ["CCO"]},
                          timeout=5).status_code == 200:
                return process
        except httpx.TransportError:
            time.sleep(0.05)
    process.kill()
    raise RuntimeError("gateway did not answer within 60 s")


async def load(url: str, clients: int, seconds: float) -> int:
    done = 0
    stop = time.perf_counter() + seconds
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(limits=limits, timeout=30) as client:
        async def one(k: int) -> None:
            nonlocal done
            i = k
            while time.perf_counter() < stop:
                response = await client.post(url, json={"molecules": [MOLECULES[i % len(MOLECULES)]]})
                assert response.status_code == 200
                done += 1
                i += clients

        await asyncio.gather(*(one(k) for k in range(clients)))
    return done


def measure(registry: Path, workers: int, clients: int, seconds: float, jobs_dir: Path) -> dict:
    port = free_port()
    process = start(registry, port, workers, jobs_dir)
    try:
        url = f"http://127.0.0.1:{port}/v1/predict"
        asyncio.run(load(url, clients, 2.0))  # warm every process
        done = asyncio.run(load(url, clients, seconds))
        pids = tree(process.pid)
        return {"processes": len(pids), "requests_per_s": round(done / seconds, 1),
                "pss_total_mb": round(sum(pss_mb(p) for p in pids), 1),
                "rss_each_mb": [round(rss_mb(p), 1) for p in pids]}
    finally:
        process.terminate()
        process.wait()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--registry", default="registry")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=15.0)
    args = parser.parse_args()
    registry = ensure_registry(Path(args.registry).resolve())
    before = [round(x, 2) for x in os.getloadavg()]
    with tempfile.TemporaryDirectory() as tmp:
        one = measure(registry, 1, args.clients, args.seconds, Path(tmp) / "jobs1")
        many = measure(registry, args.workers, args.clients, args.seconds, Path(tmp) / "jobs2")
    print(json.dumps({
        "one_process": one, f"workers_{args.workers}": many,
        "throughput_ratio": round(many["requests_per_s"] / one["requests_per_s"], 2),
        "memory_ratio_pss": round(many["pss_total_mb"] / one["pss_total_mb"], 2),
        "cores": os.cpu_count(), "clients": args.clients, "seconds": args.seconds,
        "load_average_before_after": [before, [round(x, 2) for x in os.getloadavg()]],
    }, indent=2))


if __name__ == "__main__":
    main()
