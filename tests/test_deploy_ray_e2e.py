"""A real local Ray instance on CPU serves a tiny model through Ray Serve; the gateway routes to
it; a replica killed mid-load is restarted by Ray while the gateway degrades to the fast tier."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import free_port
from tests.processes import gateway, wait_for

pytest.importorskip("ray.serve")
pytestmark = pytest.mark.slow


def replica_pids() -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if "ServeReplica:molserve:molserve-worker" in command:
            pids.append(int(entry.name))
    return pids


def test_ray_serve_worker_survives_a_killed_replica(transformer_registry):
    port = free_port()
    env = {**os.environ, "MOLSERVE_WORKER_TOKEN": "t0ken", "RAY_USAGE_STATS_ENABLED": "0"}
    deploy = subprocess.Popen(
        [sys.executable, "-m", "molserve", "--registry", str(transformer_registry.root), "deploy", "ray",
         "--port", str(port), "--backend", "onnx", "--max-replicas", "1"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(f"{url}/readyz", timeout_s=240, headers={"authorization": "Bearer t0ken"})
        with gateway(transformer_registry.root, [url]) as (base, _), httpx.Client(timeout=30) as client:
            body = {"molecules": ["CCO", "c1ccccc1O"], "endpoints": ["logbb"], "tier": "transformer"}
            deadline = time.monotonic() + 30
            while client.post(f"{base}/v1/predict", json=body).json()["tiers"]["logbb"] != "transformer":
                assert time.monotonic() < deadline, "the gateway never routed to Ray Serve"
                time.sleep(0.2)
            first = client.post(f"{base}/v1/predict", json=body).json()
            assert first["results"][0]["predictions"]["logbb"]["provenance"]["kind"].startswith("roberta")

            victims = replica_pids()
            assert victims, "no Serve replica process found"
            for pid in victims:
                os.kill(pid, signal.SIGKILL)
            killed_at = time.monotonic()
            statuses, tiers, recovered = [], [], None
            while time.monotonic() - killed_at < 180:
                response = client.post(f"{base}/v1/predict", json={**body, "deadline_ms": 1000})
                statuses.append(response.status_code)
                answer = response.json()
                tiers.append(answer["tiers"]["logbb"])
                provenance = answer["results"][0]["predictions"]["logbb"]["provenance"]
                if answer["tiers"]["logbb"] == "fast":
                    assert provenance["degraded"] is True and provenance["degraded_reason"]
                elif set(replica_pids()) - set(victims):
                    recovered = time.monotonic() - killed_at
                    break
                time.sleep(0.2)
            assert all(status == 200 for status in statuses)
            assert recovered is not None, f"no answer from a restarted replica; tiers seen: {set(tiers)}"

        # A transformer training job dispatched to the same Ray cluster as a Ray task.
        import shutil
        import tempfile

        from molserve.jobs.store import SQLiteJobStore
        from molserve.registry import Registry

        scratch = Path(tempfile.mkdtemp(prefix="ray-job-"))
        registry = scratch / "registry"
        shutil.copytree(transformer_registry.root, registry)
        jobs = scratch / "jobs"
        store = SQLiteJobStore(jobs / "jobs.sqlite3")
        job = store.create("train", {"model": "transformer", "endpoint": "logbb", "base": "random:tiny",
                                     "epochs": 1, "learning_rate": 1e-3})
        store.claim_queued()
        before = Registry(registry).latest("logbb", kind="transformer").version
        run = subprocess.run(
            [sys.executable, "-m", "molserve.jobs.execute", "--job", job["id"], "--jobs-dir", str(jobs),
             "--registry", str(registry), "--datasets", str(jobs / "datasets")],
            env={**os.environ, "MOLSERVE_TRAINING_BACKEND": "ray", "MOLSERVE_RAY_ADDRESS": "auto"},
            capture_output=True, text=True, timeout=300)
        final = store.get(job["id"])
        assert final["state"] == "succeeded", (final, run.stdout[-2000:], run.stderr[-2000:])
        assert final["result"]["engine"] == "ray"
        assert Registry(registry).latest("logbb", kind="transformer").version == before + 1
    finally:
        os.killpg(deploy.pid, signal.SIGTERM)
        try:
            deploy.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(deploy.pid, signal.SIGKILL)
            deploy.wait()
