"""Gateway figures: cold start, single-molecule latency over loopback, RSS after 1,000 requests.

Run: .venv/bin/python benchmarks/bench_gateway.py [--registry registry]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import httpx

from benchmarks.common import ensure_registry, free_port, percentiles, rss_mb, start_gateway

MOLECULES = ["CC(=O)Oc1ccccc1C(=O)O", "CN1C=NC2=C1C(=O)N(C(=O)N2C)C", "CC(C)Cc1ccc(cc1)C(C)C(=O)O",
             "c1ccc2c(c1)c(c[nH]2)CCN", "OC[C@H]1OC(O)[C@H](O)[C@@H](O)[C@@H]1O"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--registry", default="registry")
    parser.add_argument("--starts", type=int, default=5)
    parser.add_argument("--requests", type=int, default=1000)
    args = parser.parse_args()
    registry = ensure_registry(Path(args.registry))

    cold = []
    for _ in range(args.starts):
        process, seconds = start_gateway(registry, free_port())
        cold.append(seconds)
        process.terminate()
        process.wait()

    port = free_port()
    process, _ = start_gateway(registry, port)
    try:
        url = f"http://127.0.0.1:{port}/v1/predict"
        latencies = []
        with httpx.Client() as client:
            for i in range(args.requests):
                body = {"molecules": [MOLECULES[i % len(MOLECULES)]]}  # all bundled endpoints
                t = time.perf_counter()
                response = client.post(url, json=body)
                latencies.append(time.perf_counter() - t)
                assert response.status_code == 200
        rss = rss_mb(process.pid)
    finally:
        process.terminate()
        process.wait()
    result = {
        "cold_start_s": {"median": statistics.median(cold), "all": [round(c, 3) for c in cold]},
        "single_molecule_all_bundled_endpoints": percentiles(latencies),
        "rss_after_requests_mb": round(rss, 1),
        "requests": args.requests,
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
