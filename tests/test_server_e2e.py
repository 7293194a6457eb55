"""The real server process on a loopback port, as `make serve` runs it."""

import os
import subprocess
import sys
import time

import httpx

from tests.conftest import free_port


def test_served_process_answers_and_shuts_down_cleanly(trained_registry):
    port = free_port()
    env = {**os.environ, "MOLSERVE_REGISTRY": str(trained_registry.root),
           "MOLSERVE_JOBS_DIR": str(trained_registry.root.parent / "e2e-jobs")}
    started = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, "-m", "molserve", "serve", "--port", str(port), "--log-level", "warning"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    try:
        body = None
        while time.perf_counter() - started < 30:
            try:
                response = httpx.post(f"http://127.0.0.1:{port}/v1/predict",
                                      json={"molecules": ["CCO", "C1CC"]}, timeout=2)
                if response.status_code == 200:
                    body = response.json()
                    break
            except httpx.TransportError:
                time.sleep(0.05)
        assert body is not None, "server did not answer within 30 s"
        assert body["results"][0]["predictions"]["solubility"]["provenance"]["tier"] == "fast"
        assert body["results"][1]["error"].startswith("unclosed ring")
        assert httpx.get(f"http://127.0.0.1:{port}/readyz").status_code == 200
    finally:
        process.terminate()
        process.wait(timeout=10)
    # uvicorn re-raises the SIGTERM it handled after a graceful shutdown.
    assert process.returncode in (0, -15)
    assert b"Traceback" not in process.stderr.read()
