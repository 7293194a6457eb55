"""Load on the gateway over loopback with wrk: 50 concurrent connections for 60 s, single
molecules then batches of 100, each twice, with the gateway's RSS after every run (a second run
of the same length must not grow it).

Run: .venv/bin/python -m benchmarks.bench_load [--registry registry] [--seconds 60]
Needs wrk (Debian package `wrk`).
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from benchmarks.common import ensure_registry, free_port, rss_mb, start_gateway

LUA = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = [[%s]]
local errors = 0
response = function(status, headers, body)
  if status ~= 200 then errors = errors + 1 end
end
done = function(summary, latency, requests)
  io.write(string.format("RESULT requests=%%d non2xx=%%d socket_errors=%%d p50_us=%%d p99_us=%%d\\n",
    summary.requests, summary.errors.status, summary.errors.connect + summary.errors.read
    + summary.errors.write + summary.errors.timeout, latency:percentile(50), latency:percentile(99)))
end
"""


def run_wrk(url: str, body: dict, seconds: int, connections: int, folder: Path) -> dict:
    script = folder / "post.lua"
    script.write_text(LUA % json.dumps(body))
    out = subprocess.run(["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "--timeout", "30s",
                          "--latency", "-s", str(script), f"{url}/v1/predict"],
                         capture_output=True, text=True,
                         timeout=seconds + 60).stdout
    pattern = r"RESULT requests=(\d+) non2xx=(\d+) socket_errors=(\d+) p50_us=(\d+) p99_us=(\d+)"
    match = re.search(pattern, out)
    assert match, out
    requests, non2xx, socket_errors, p50, p99 = map(int, match.groups())
    return {"requests": requests, "per_s": round(requests / seconds, 1), "non_2xx": non2xx,
            "socket_errors": socket_errors, "p50_ms": p50 / 1000, "p99_ms": p99 / 1000}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--registry", default="registry")
    parser.add_argument("--seconds", type=int, default=60)
    parser.add_argument("--connections", type=int, default=50)
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed (apt-get install wrk)")
    registry = ensure_registry(Path(args.registry))
    from molserve.data.bundled import load_bundled

    batch = load_bundled("bbb_penetration").smiles[:100]
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        process, _ = start_gateway(registry, port, {"MOLSERVE_JOBS_DIR": f"{tmp}/jobs"})
        url = f"http://127.0.0.1:{port}"
        results = {"rss_mb_at_start": round(rss_mb(process.pid), 1), "runs": []}
        try:
            for label, body in (("single molecule, all bundled endpoints",
                                 {"molecules": ["CC(=O)Oc1ccccc1C(=O)O"]}),
                                ("batch of 100, all bundled endpoints", {"molecules": batch})):
                for repeat in (1, 2):
                    figures = run_wrk(url, body, args.seconds, args.connections, Path(tmp))
                    figures.update(kind=label, run=repeat, rss_mb_after=round(rss_mb(process.pid), 1))
                    results["runs"].append(figures)
                    print(json.dumps(figures), flush=True)
        finally:
            process.terminate()
            process.wait()
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
