"""Chaos: two real workers, one of which flaps, and sixteen clients in a hurry or not.

A gateway runs with two transformer workers (real `molserve worker` processes on loopback).
Worker A stays healthy. Worker B is reached through a small fault-injecting proxy in this process
and flaps, phase after phase:

1. calm (both healthy): the worker's p99 is measured here, at the proxy;
2. B answers every prediction 503 with Retry-After (overloaded), then recovers;
3. B hangs (SIGSTOP), then resumes (SIGCONT);
4. B dies (SIGKILL, its listener gone), then is started again.

Sixteen closed-loop clients ask for logBB from the transformer tier, each with its own deadline
(1 ms to 2 s, log-spaced) and a short think time. A second gateway, fast-only (no workers), runs at
the same time and gets the same load: each client alternates between the two, so both gateways
see the same requests and the same machine (on the fast-only one, logBB comes from the fast
tier). A seventeenth client measures the fast path: solubility from the fast tier, alternately
on the two gateways.

Figures: failed requests (goal 0); share of transformer answers for the clients whose deadline is
above the worker's p99 (goal >= 95%, worker A is healthy throughout); seconds from each recovery of
B to its first answered caller's call, not counting the gateway's health probes (goal <= two health
intervals); p99 of the fast path here minus on the fast-only gateway (goal <= 5 ms).

Run: .venv/bin/python -m benchmarks.bench_chaos [--quick] [--registry DIR] [--out FILE]
The last line printed is one JSON object with the keys requests, failed, transformer_share,
recovery_s, health_interval_s and fast_p99_delta_ms (plus the detail).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import numpy as np

from benchmarks.common import free_port, wait_http
from benchmarks.common import start_worker as start_worker_process

SMILES = ["CCO", "c1ccccc1O", "CC(=O)Oc1ccccc1C(=O)O", "CN1CCC[C@H]1c1cccnc1", "CCN(CC)CC",
          "Clc1ccc(Cl)cc1", "OC(=O)CCc1ccccc1", "CC(C)Cc1ccc(C(C)C(=O)O)cc1", "NCCc1ccc(O)c(O)c1",
          "COc1ccc2[nH]cc(CCN)c2c1", "CN1C=NC2=C1C(=O)N(C(=O)N2C)C", "OCC(O)CO"]
DEADLINES_MS = [int(round(d)) for d in np.geomspace(1, 2000, 16)]


def ensure_registry(path: Path) -> Path:
    """logBB (fast and transformer) and solubility (fast) are all this scenario needs."""
    subprocess.run([sys.executable, "-m", "molserve", "--registry", str(path), "bootstrap",
                    "--only", "logbb,solubility", "--quiet"], check=True)
    from molserve.models.transformer.pipeline import finetune_endpoint
    from molserve.registry import Registry

    if Registry(path).latest("logbb", kind="transformer") is None:
        finetune_endpoint(Registry(path), "logbb", base="random:tiny", epochs=1,
                          learning_rate=1e-3, batch_size=64, export=False)
    return path


def start_worker(registry: Path, port: int, log: Path) -> subprocess.Popen:
    process = start_worker_process(registry, port, log)
    wait_http(f"http://127.0.0.1:{port}/readyz")
    return process


def start_gateway(registry: Path, port: int, workers: list[str], log: Path,
                  health_interval_s: float) -> subprocess.Popen:
    env = {**os.environ, "MOLSERVE_REGISTRY": str(registry),
           "MOLSERVE_JOBS_DIR": tempfile.mkdtemp(prefix="molserve-chaos-jobs-"),
           "MOLSERVE_WORKER_URLS": json.dumps(workers),
           "MOLSERVE_HEALTH_INTERVAL_S": str(health_interval_s)}
    process = subprocess.Popen([sys.executable, "-m", "molserve", "serve", "--port", str(port),
                                "--log-level", "warning"], env=env, stdout=open(log, "ab"),
                               stderr=subprocess.STDOUT)
    wait_http(f"http://127.0.0.1:{port}/readyz")
    return process


class FaultProxy:
    """An HTTP proxy in front of worker B: forwards, or answers predictions 503, or is gone.

    Records every prediction it forwarded: (monotonic time, upstream status, seconds, probe?)."""

    def __init__(self, port: int, upstream: str) -> None:
        self.port, self.upstream = port, upstream
        self.mode = "pass"
        self.calls: list[tuple[float, int, float, bool]] = []
        self.server = None
        self.thread: threading.Thread | None = None

    def _app(self):
        from starlette.applications import Starlette
        from starlette.requests import Request
        from starlette.responses import JSONResponse, Response
        from starlette.routing import Route

        client = httpx.AsyncClient(timeout=120)

        async def forward(request: Request) -> Response:
            body = await request.body()
            is_predict = request.url.path == "/v1/predict"
            probe = bool(request.headers.get("x-molserve-probe"))
            if is_predict and self.mode == "503":
                return JSONResponse({"error": "overloaded"}, status_code=503,
                                    headers={"Retry-After": "1"})
            started = time.monotonic()
            headers = {k: v for k, v in request.headers.items()
                       if k.lower() not in ("host", "content-length")}
            try:
                upstream = await client.request(request.method, self.upstream + request.url.path,
                                                content=body, headers=headers)
            except httpx.HTTPError as error:
                return JSONResponse({"error": f"upstream: {type(error).__name__}"}, status_code=502)
            if is_predict:
                self.calls.append((started, upstream.status_code, time.monotonic() - started, probe))
            return Response(upstream.content, status_code=upstream.status_code,
                            media_type=upstream.headers.get("content-type"))

        routes = [Route("/{path:path}", forward, methods=["GET", "POST"])]
        return Starlette(routes=routes)

    def start(self) -> None:
        import uvicorn

        config = uvicorn.Config(self._app(), host="127.0.0.1", port=self.port, log_level="error",
                                timeout_graceful_shutdown=0)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        while not self.server.started:
            time.sleep(0.01)

    def stop(self) -> None:
        """The listener goes away: callers get connection refused, as from a dead host."""
        self.server.should_exit = True
        self.thread.join(timeout=10)


class Clients:
    """Sixteen transformer clients (one deadline each) and one fast-path client, in one thread."""

    def __init__(self, gateway: str, fast_only: str, think_s: float) -> None:
        self.gateway, self.fast_only, self.think_s = gateway, fast_only, think_s
        # (sent, status, seconds, tier, reason, deadline_ms)
        self.records: list[tuple[float, int, float, str, str | None, int]] = []
        self.fast: dict[str, list[float]] = {"gateway": [], "fast_only": []}
        self.fast_failed = 0
        self.mirrored_failed = 0
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)

    async def _transformer_client(self, index: int, deadline_ms: int, client: httpx.AsyncClient) -> None:
        i = index
        while not self.stopping.is_set():
            i += 1
            body = {"molecules": [SMILES[i % len(SMILES)]], "endpoints": ["logbb"],
                    "tier": "transformer", "deadline_ms": deadline_ms}
            if i % 2:  # the same request to the fast-only gateway: equal load on both
                try:
                    response = await client.post(f"{self.fast_only}/v1/predict", json=body, timeout=30)
                    self.mirrored_failed += response.status_code != 200
                except httpx.HTTPError:
                    self.mirrored_failed += 1
                await asyncio.sleep(self.think_s)
                continue
            sent = time.monotonic()
            tier, reason = "", None
            try:
                response = await client.post(f"{self.gateway}/v1/predict", json=body, timeout=30)
                status = response.status_code
                if status == 200:
                    data = response.json()
                    tier, reason = data["tiers"]["logbb"], data["degraded"].get("logbb")
            except httpx.HTTPError as error:
                status, reason = 0, type(error).__name__
            self.records.append((sent, status, time.monotonic() - sent, tier, reason, deadline_ms))
            await asyncio.sleep(self.think_s)

    async def _fast_client(self, client: httpx.AsyncClient) -> None:
        i = 0
        while not self.stopping.is_set():
            i += 1
            name, base = ("gateway", self.gateway) if i % 2 else ("fast_only", self.fast_only)
            body = {"molecules": [SMILES[i % len(SMILES)]], "endpoints": ["solubility"], "tier": "fast"}
            sent = time.perf_counter()
            try:
                response = await client.post(f"{base}/v1/predict", json=body, timeout=30)
                ok = response.status_code == 200 and response.json()["tiers"]["solubility"] == "fast"
            except httpx.HTTPError:
                ok = False
            if ok:
                self.fast[name].append(time.perf_counter() - sent)
            else:
                self.fast_failed += 1
            await asyncio.sleep(0.02)

    async def _run(self) -> None:
        async with httpx.AsyncClient(limits=httpx.Limits(max_connections=64)) as client:
            await asyncio.gather(*(self._transformer_client(i, d, client)
                                   for i, d in enumerate(DEADLINES_MS)), self._fast_client(client))

    def start(self) -> None:
        self.thread.start()

    def finish(self) -> None:
        self.stopping.set()
        self.thread.join(timeout=60)


def first_caller_answer(proxy: FaultProxy, since: float) -> float | None:
    """Seconds from `since` to the first caller's prediction B answered (health probes aside)."""
    done = [t + s for t, status, s, probe in list(proxy.calls)
            if not probe and status == 200 and t >= since]
    return round(min(done) - since, 3) if done else None


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="shorter phases (under 3 minutes)")
    parser.add_argument("--registry", default="benchmarks/out/chaos-registry")
    parser.add_argument("--phase-seconds", type=float, default=None)
    parser.add_argument("--health-interval", type=float, default=2.0)
    parser.add_argument("--think-ms", type=float, default=50.0)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    phase = args.phase_seconds or (6.0 if args.quick else 20.0)
    started = time.monotonic()
    registry = ensure_registry(Path(args.registry).resolve())
    setup_s = time.monotonic() - started
    logs = Path(tempfile.mkdtemp(prefix="molserve-chaos-"))

    a_port, b_port, proxy_port, g_port, f_port = (free_port() for _ in range(5))
    worker_a = start_worker(registry, a_port, logs / "worker-a.log")
    worker_b = start_worker(registry, b_port, logs / "worker-b.log")
    proxy = FaultProxy(proxy_port, f"http://127.0.0.1:{b_port}")
    proxy.start()
    urls = [f"http://127.0.0.1:{a_port}", f"http://127.0.0.1:{proxy_port}"]
    gateway = start_gateway(registry, g_port, urls, logs / "gateway.log", args.health_interval)
    fast_only = start_gateway(registry, f_port, [], logs / "fast-only.log", args.health_interval)
    base = f"http://127.0.0.1:{g_port}"
    deadline = time.monotonic() + 30
    while not all(w["models"] for w in httpx.get(f"{base}/v1/status").json()["transformer"]["workers"]):
        if time.monotonic() > deadline:
            raise RuntimeError("the gateway never saw both workers")
        time.sleep(0.1)

    clients = Clients(base, f"http://127.0.0.1:{f_port}", args.think_ms / 1000)
    clients.start()
    events: dict[str, dict] = {}
    try:
        t_calm = time.monotonic()
        time.sleep(phase)
        calm_calls = [s for t, status, s, probe in proxy.calls if t >= t_calm and status == 200 and not probe]
        worker_p99_ms = float(np.percentile(np.array(calm_calls) * 1000, 99)) if calm_calls else float("nan")

        proxy.mode = "503"
        time.sleep(phase)
        t = time.monotonic()
        proxy.mode = "pass"
        time.sleep(phase)
        events["overloaded_503"] = {"recovery_s": first_caller_answer(proxy, t)}

        worker_b.send_signal(signal.SIGSTOP)
        time.sleep(phase)
        t = time.monotonic()
        worker_b.send_signal(signal.SIGCONT)
        time.sleep(phase)
        events["hang"] = {"recovery_s": first_caller_answer(proxy, t)}

        worker_b.kill()
        worker_b.wait()
        proxy.stop()
        time.sleep(phase)
        t_restart = time.monotonic()
        worker_b = start_worker(registry, b_port, logs / "worker-b.log")
        proxy.start()
        t = time.monotonic()
        time.sleep(phase)
        events["died"] = {"restart_to_ready_s": round(t - t_restart, 2),
                          "recovery_s": first_caller_answer(proxy, t)}
    finally:
        clients.finish()
        for process in (gateway, fast_only, worker_a, worker_b):
            process.terminate()
        for process in (gateway, fast_only, worker_a, worker_b):
            process.wait(timeout=30)
        proxy.stop()

    records = clients.records
    qualifying = [r for r in records if r[5] > worker_p99_ms]
    share = (sum(1 for r in qualifying if r[3] == "transformer") / len(qualifying)) if qualifying else None
    per_client = {}
    for deadline_ms in DEADLINES_MS:
        mine = [r for r in records if r[5] == deadline_ms]
        per_client[str(deadline_ms)] = {
            "requests": len(mine),
            "transformer_share": round(sum(1 for r in mine if r[3] == "transformer") / max(1, len(mine)), 4),
            "degraded": dict(Counter(r[4] for r in mine if r[4]))}
    fast = {name: float(np.percentile(np.array(samples) * 1000, 99)) if samples else float("nan")
            for name, samples in clients.fast.items()}
    recoveries = [e["recovery_s"] for e in events.values()]
    result = {
        "requests": len(records),
        "failed": sum(1 for r in records if r[1] != 200) + clients.fast_failed + clients.mirrored_failed,
        "transformer_share": round(share, 4) if share is not None else None,
        "recovery_s": max(recoveries) if all(r is not None for r in recoveries) else None,
        "health_interval_s": args.health_interval,
        "fast_p99_delta_ms": round(fast["gateway"] - fast["fast_only"], 2),
        "detail": {
            "quick": args.quick, "phase_s": phase, "think_ms": args.think_ms, "setup_s": round(setup_s, 1),
            "wall_s": round(time.monotonic() - started, 1),
            "worker_p99_ms": round(worker_p99_ms, 2),
            "qualifying_deadlines_ms": sorted({r[5] for r in qualifying}),
            "events": events, "fast_p99_ms": {k: round(v, 2) for k, v in fast.items()},
            "fast_p50_ms": {k: round(float(np.percentile(np.array(v) * 1000, 50)), 2) if v else None
                            for k, v in clients.fast.items()},
            "fast_requests": {k: len(v) for k, v in clients.fast.items()},
            "degraded_by_reason": dict(Counter(r[4] for r in records if r[4])),
            "per_client": per_client, "logs": str(logs)},
    }
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
