"""Delegation figures, each pair measured in one run:

1. With the worker down and its breaker open, single-molecule p99 through a gateway that has a
   worker configured, against a gateway that serves the fast tier only (requests interleaved).
2. Transformer throughput through the gateway against the same worker called directly.

Run: .venv/bin/python -m benchmarks.bench_delegation [--registry registry]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from benchmarks.common import ensure_registry, free_port, percentiles

TOKEN = "bench-token"
MOLECULES = ["CC(=O)Oc1ccccc1C(=O)O", "CN1C=NC2=C1C(=O)N(C(=O)N2C)C", "CC(C)Cc1ccc(cc1)C(C)C(=O)O",
             "c1ccc2c(c1)c(c[nH]2)CCN", "OC[C@H]1OC(O)[C@H](O)[C@@H](O)[C@@H]1O"]


def wait(url: str, headers: dict | None = None, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, headers=headers, timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"{url} not ready")


def gateway(registry: Path, workers: list[str]) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {**os.environ, "MOLSERVE_REGISTRY": str(registry),
           "MOLSERVE_WORKER_URLS": json.dumps(workers), "MOLSERVE_WORKER_TOKEN": TOKEN}
    process = subprocess.Popen([sys.executable, "-m", "molserve", "serve", "--port", str(port),
                                "--log-level", "warning"], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait(f"http://127.0.0.1:{port}/readyz")
    return process, f"http://127.0.0.1:{port}"


def worker(registry: Path, port: int, backend: str = "onnx") -> subprocess.Popen:
    env = {**os.environ, "MOLSERVE_WORKER_TOKEN": TOKEN}
    process = subprocess.Popen([sys.executable, "-m", "molserve", "--registry", str(registry), "worker",
                                "--port", str(port), "--backend", backend, "--log-level", "warning"],
                               env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait(f"http://127.0.0.1:{port}/readyz", {"authorization": f"Bearer {TOKEN}"})
    return process


def breaker_open_latency(registry: Path, requests: int) -> dict:
    port = free_port()
    w = worker(registry, port)
    fast_only, fast_url = gateway(registry, [])
    routed, routed_url = gateway(registry, [f"http://127.0.0.1:{port}"])
    try:
        with httpx.Client() as client:
            body = {"molecules": ["CCO"], "endpoints": ["logbb"], "tier": "transformer"}
            for _ in range(100):  # until the gateway has seen the worker's models
                answer = client.post(f"{routed_url}/v1/predict", json=body).json()
                if answer["tiers"]["logbb"] == "transformer":
                    break
                time.sleep(0.1)
            w.send_signal(signal.SIGKILL)
            w.wait()
            for _ in range(10):  # open the breaker
                client.post(f"{routed_url}/v1/predict", json=body)
            state = client.get(f"{routed_url}/v1/status").json()["transformer"]["workers"][0]["breaker"]
            fast, degraded, reasons = [], [], {}
            for i in range(requests):
                payload = {"molecules": [MOLECULES[i % len(MOLECULES)]]}
                t = time.perf_counter()
                client.post(f"{fast_url}/v1/predict", json={**payload, "tier": "fast"})
                fast.append(time.perf_counter() - t)
                t = time.perf_counter()
                answer = client.post(f"{routed_url}/v1/predict",
                                     json={**payload, "tier": "transformer"}).json()
                degraded.append(time.perf_counter() - t)
                for reason in answer["degraded"].values():
                    reasons[reason] = reasons.get(reason, 0) + 1
    finally:
        for process in (fast_only, routed):
            process.terminate()
            process.wait()
    a, b = percentiles(fast), percentiles(degraded)
    return {"breaker_state_before": state, "fast_tier_only": a, "worker_down_breaker_open": b,
            "p99_difference_ms": round(b["p99_ms"] - a["p99_ms"], 3), "degraded_reasons": reasons}


def throughput(registry: Path, molecules: list[str], clients: int, batch: int) -> dict:
    port = free_port()
    w = worker(registry, port)
    g, url = gateway(registry, [f"http://127.0.0.1:{port}"])
    chunks = [molecules[i : i + batch] for i in range(0, len(molecules), batch)]
    headers = {"authorization": f"Bearer {TOKEN}"}

    def run(target: str) -> float:
        def one(chunk: list[str]) -> None:
            with httpx.Client(timeout=60) as client:
                if target == "worker":
                    r = client.post(f"http://127.0.0.1:{port}/v1/predict", headers=headers,
                                    json={"molecules": chunk, "endpoints": ["logbb"]})
                else:
                    r = client.post(f"{url}/v1/predict", json={
                        "molecules": chunk, "endpoints": ["logbb"], "tier": "transformer",
                        "deadline_ms": 60000})
                    assert r.json()["tiers"]["logbb"] == "transformer", r.text[:300]
                r.raise_for_status()

        started = time.perf_counter()
        with ThreadPoolExecutor(clients) as pool:
            list(pool.map(one, chunks))
        return len(molecules) / (time.perf_counter() - started)

    try:
        for _ in range(100):
            body = {"molecules": ["CCO"], "endpoints": ["logbb"], "tier": "transformer"}
            if httpx.post(f"{url}/v1/predict", json=body).json()["tiers"]["logbb"] == "transformer":
                break
            time.sleep(0.1)
        run("worker")  # warm-up
        direct = run("worker")
        routed = run("gateway")
        direct_again = run("worker")
    finally:
        for process in (g, w):
            process.terminate()
            process.wait()
    reference = (direct + direct_again) / 2
    return {"clients": clients, "molecules_per_request": batch, "molecules": len(molecules),
            "worker_direct_per_s": round(reference, 1), "through_gateway_per_s": round(routed, 1),
            "ratio": round(routed / reference, 3)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--registry", default="registry")
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--size", default="small", help="transformer size for the throughput run")
    args = parser.parse_args()
    source = ensure_registry(Path(args.registry))
    from molserve.data.bundled import load_bundled
    from molserve.models.transformer.pipeline import finetune_endpoint
    from molserve.registry import Registry

    with tempfile.TemporaryDirectory() as tmp:
        registry = Path(tmp) / "registry"
        shutil.copytree(source / "logbb", registry / "logbb")
        for name in ("solubility", "hydration_free_energy", "bbb_penetration", "pic50_chembl2321810"):
            if (source / name).exists():
                shutil.copytree(source / name, registry / name)
        finetune_endpoint(Registry(registry), "logbb", base=f"random:{args.size}", epochs=1,
                          learning_rate=1e-4)
        latency = breaker_open_latency(registry, args.requests)
        smiles = load_bundled("bbb_penetration").smiles[:2048]
        rate = throughput(registry, smiles, clients=8, batch=16)
    print(json.dumps({"worker_down": latency, "throughput": rate}, indent=2))


if __name__ == "__main__":
    main()
