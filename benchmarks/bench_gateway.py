"""Gateway figures: cold start, single-molecule latency over loopback, RSS after 1,000 requests.

With `--baseline REV`, the same figures for the code at git revision REV are measured in the
same run, alternating with this tree's (start by start, then a block of requests each), so both
sides see the same machine; the ratios are printed.

Run: .venv/bin/python -m benchmarks.bench_gateway [--registry registry] [--baseline REV]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import tarfile
import tempfile
import time
from pathlib import Path

import httpx

from benchmarks.common import ROOT, ensure_registry, free_port, percentiles, rss_mb, start_gateway

MOLECULES = ["CC(=O)Oc1ccccc1C(=O)O", "CN1C=NC2=C1C(=O)N(C(=O)N2C)C", "CC(C)Cc1ccc(cc1)C(C)C(=O)O",
             "c1ccc2c(c1)c(c[nH]2)CCN", "OC[C@H]1OC(O)[C@H](O)[C@@H](O)[C@@H]1O"]


def export(revision: str, into: Path) -> Path:
    """The source tree at `revision` (git archive), to run the baseline from."""
    archive = into / "src.tar"
    subprocess.run(["git", "-C", str(ROOT), "archive", "-o", str(archive), revision], check=True)
    with tarfile.open(archive) as tar:
        tar.extractall(into / "src", filter="data")
    return into / "src"


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--registry", default="registry")
    parser.add_argument("--starts", type=int, default=5)
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--baseline", help="git revision to measure side by side")
    args = parser.parse_args()
    registry = ensure_registry(Path(args.registry).resolve())

    with tempfile.TemporaryDirectory() as tmp:
        # `python -m molserve` puts the working directory first on sys.path: start each side
        # from elsewhere so PYTHONPATH alone says which code runs.
        os.chdir(tmp)
        sides = {"this": {"PYTHONPATH": str(ROOT)}}
        if args.baseline:
            sides["baseline"] = {"PYTHONPATH": str(export(args.baseline, Path(tmp)))}
        jobs_env = {"MOLSERVE_JOBS_DIR": str(Path(tmp) / "jobs")}
        before = load_average()
        cold: dict[str, list[float]] = {side: [] for side in sides}
        for _ in range(args.starts):
            for side, env in sides.items():
                process, seconds = start_gateway(registry, free_port(), {**env, **jobs_env})
                cold[side].append(seconds)
                process.terminate()
                process.wait()

        processes, urls = {}, {}
        try:
            for side, env in sides.items():
                port = free_port()
                processes[side], _ = start_gateway(registry, port, {**env, **jobs_env})
                urls[side] = f"http://127.0.0.1:{port}/v1/predict"
            latencies: dict[str, list[float]] = {side: [] for side in sides}
            block = 50
            with httpx.Client() as client:
                for start in range(0, args.requests, block):
                    for side in sides:
                        for i in range(start, min(start + block, args.requests)):
                            body = {"molecules": [MOLECULES[i % len(MOLECULES)]]}  # every endpoint
                            t = time.perf_counter()
                            response = client.post(urls[side], json=body)
                            latencies[side].append(time.perf_counter() - t)
                            assert response.status_code == 200
            rss = {side: rss_mb(p.pid) for side, p in processes.items()}
            endpoints = len(response.json()["endpoints"])
        finally:
            for process in processes.values():
                process.terminate()
                process.wait()
    result: dict = {"endpoints_per_request": endpoints, "requests": args.requests,
                    "load_average_before_after": [before, load_average()]}
    for side in sides:
        result[side] = {
            "cold_start_s": {"median": round(statistics.median(cold[side]), 3),
                             "all": [round(c, 3) for c in cold[side]]},
            "single_molecule_all_endpoints": {k: round(v, 3) if isinstance(v, float) else v
                                              for k, v in percentiles(latencies[side]).items()},
            "rss_after_requests_mb": round(rss[side], 1),
        }
    if "baseline" in sides:
        new, old = result["this"], result["baseline"]
        result["baseline_revision"] = args.baseline
        result["speedup_p50"] = round(old["single_molecule_all_endpoints"]["p50_ms"]
                                      / new["single_molecule_all_endpoints"]["p50_ms"], 2)
        result["rss_ratio"] = round(new["rss_after_requests_mb"] / old["rss_after_requests_mb"], 3)
        result["cold_start_ratio"] = round(new["cold_start_s"]["median"] / old["cold_start_s"]["median"], 3)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
