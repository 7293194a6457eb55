"""`molserve serve --workers N`: the models loaded once, N processes answering on one port,
all of them stopped by one SIGTERM."""

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import free_port


@pytest.mark.slow
def test_two_worker_processes_answer_on_one_port_and_stop_together(trained_registry, tmp_path):
    port = free_port()
    env = {**os.environ, "MOLSERVE_REGISTRY": str(trained_registry.root),
           "MOLSERVE_JOBS_DIR": str(tmp_path / "jobs")}
    process = subprocess.Popen(
        [sys.executable, "-m", "molserve", "serve", "--port", str(port), "--workers", "2",
         "--log-level", "warning"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        started = time.perf_counter()
        body = None
        while body is None and time.perf_counter() - started < 60:
            try:
                response = httpx.post(f"http://127.0.0.1:{port}/v1/predict",
                                      json={"molecules": ["CCO"]}, timeout=5)
                body = response.json() if response.status_code == 200 else None
            except httpx.TransportError:
                time.sleep(0.05)
        assert body is not None, "no answer within 60 s"
        children = [int(p) for p in
                    Path(f"/proc/{process.pid}/task/{process.pid}/children").read_text().split()]
        assert len(children) == 1
        # Every connection is answered, whichever process accepts it.
        with httpx.Client() as client:
            answers = [client.post(f"http://127.0.0.1:{port}/v1/predict",
                                   json={"molecules": ["c1ccccc1O"]}, headers={"connection": "close"})
                       for _ in range(20)]
        assert {a.status_code for a in answers} == {200}
        assert len({str(a.json()["results"][0]["predictions"]) for a in answers}) == 1
    finally:
        process.terminate()
        process.wait(timeout=15)
    assert process.returncode in (0, -15)
    for child in children:
        deadline = time.monotonic() + 5
        while Path(f"/proc/{child}").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not Path(f"/proc/{child}").exists()
    assert b"Traceback" not in process.stderr.read()


def test_workers_refuse_the_start_up_bootstrap():
    result = subprocess.run([sys.executable, "-m", "molserve", "serve", "--workers", "2", "--bootstrap"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert "bootstrap" in (result.stdout + result.stderr)
