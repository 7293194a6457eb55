"""A fleet: two gateways as separate processes, each with its own local directories, sharing one
PostgreSQL database (jobs, leases, keys, rate limits, published versions) and one S3-compatible
object store (model versions, uploads, results). An upload made through one gateway is screened
by a job either may run, its result downloads from both, a model trained through one is served
by the other, a version deleted through one is dropped by the other, and a revoked key is
refused by both."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import free_port
from tests.processes import stop, wait_for


class FleetGateway:
    def __init__(self, root: Path, database: str, storage: str, s3_env: dict[str, str]) -> None:
        self.root = root
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {**os.environ, **s3_env, "MOLSERVE_REGISTRY": str(root / "registry"),
                    "MOLSERVE_JOBS_DIR": str(root / "jobs"), "MOLSERVE_DATASETS": str(root / "datasets"),
                    "MOLSERVE_DATABASE_URL": database, "MOLSERVE_STORAGE_URL": storage,
                    "MOLSERVE_SYNC_INTERVAL_S": "0.5", "MOLSERVE_JOB_LEASE_S": "3",
                    "MOLSERVE_HEALTH_INTERVAL_S": "0.5"}
        self.process: subprocess.Popen | None = None

    def start(self) -> FleetGateway:
        log = open(self.root / "gateway.log", "ab")  # noqa: SIM115 (the process owns it)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "molserve", "serve", "--port", str(self.port), "--log-level", "warning"],
            env=self.env, stdout=log, stderr=log)
        wait_for(f"{self.url}/readyz", timeout_s=120)
        return self

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()

    def stop(self) -> None:
        if self.process is not None:
            stop(self.process)


@pytest.fixture()
def fleet(trained_registry, postgres, s3, tmp_path):
    from molserve.gateway.keys import KeyStore

    database = postgres.new_database()
    storage = s3.bucket(f"fleet-{os.getpid()}-{int(time.time() * 1000) % 10**9}") + "/molserve"
    keys = KeyStore(None, database_url=database)
    admin = keys.create("admin", ["admin"])[0]
    trainer = keys.create("trainer", ["predict", "train"], rate_per_minute=6000)[0]
    limited = keys.create("limited", ["predict"], rate_per_minute=30)[0]
    gateways = []
    for name in ("a", "b"):
        root = tmp_path / name
        root.mkdir()
        # Each machine provisioned with the bundled models; what is trained later travels.
        shutil.copytree(trained_registry.root, root / "registry",
                        ignore=shutil.ignore_patterns(".embeddings"))
        gateways.append(FleetGateway(root, database, storage, s3.env))
    try:
        for gateway in gateways:
            gateway.start()
        yield gateways, {"admin": admin, "trainer": trainer, "limited": limited}, database, keys
    finally:
        for gateway in gateways:
            gateway.stop()


def _until(check, timeout_s: float, what: str) -> float:
    started = time.monotonic()
    while not check():
        assert time.monotonic() - started < timeout_s, what
        time.sleep(0.05)
    return time.monotonic() - started


def test_two_gateways_share_jobs_uploads_results_models_and_keys(fleet, tmp_path):
    (a, b), keys, database, store = fleet
    trainer = {"x-api-key": keys["trainer"]}
    admin = {"x-api-key": keys["admin"]}
    with httpx.Client(timeout=60) as client:
        # An upload through A, screened by a job submitted through B: the job runs on whichever
        # gateway claims it, reading the upload from the object store.
        molecules = [f"C{'C' * (i % 12)}O" for i in range(400)] + ["not a smiles"]
        upload = client.post(f"{a.url}/v1/uploads", headers=trainer,
                             files={"file": ("m.csv", "smiles\n" + "\n".join(molecules) + "\n")})
        assert upload.status_code == 201, upload.text
        screen = client.post(f"{b.url}/v1/jobs", headers=trainer, json={
            "kind": "screen", "upload_id": upload.json()["upload_id"], "endpoints": ["solubility"]})
        assert screen.status_code == 202, screen.text
        screen_id = screen.json()["id"]
        _until(lambda: client.get(f"{a.url}/v1/jobs/{screen_id}", headers=trainer).json()["state"]
               in ("succeeded", "failed"), 120, "the screen did not finish")
        done = client.get(f"{b.url}/v1/jobs/{screen_id}", headers=trainer).json()
        assert done["state"] == "succeeded", done["error"]
        results = [client.get(f"{g.url}/v1/jobs/{screen_id}/result", headers=trainer) for g in (a, b)]
        assert all(r.status_code == 200 for r in results) and results[0].text == results[1].text
        assert len(results[0].text.splitlines()) == len(molecules) + 1

        # A model trained through A is served by B (published, then synced).
        training = "smiles,y\n" + "".join(f"C{'C' * (i // 2)}{'O' if i % 2 else 'N'},{i % 7}\n"
                                           for i in range(60))
        upload = client.post(f"{a.url}/v1/uploads", headers=trainer, files={"file": ("t.csv", training)})
        job = client.post(f"{a.url}/v1/jobs", headers=trainer, json={
            "kind": "train", "upload_id": upload.json()["upload_id"], "label_col": "y",
            "endpoint": "fleet_assay", "profile": "quick", "split": "random",
            "visibility": "public"}).json()
        _until(lambda: client.get(f"{a.url}/v1/jobs/{job['id']}", headers=trainer).json()["state"]
               in ("succeeded", "failed"), 180, "the training did not finish")
        done = client.get(f"{a.url}/v1/jobs/{job['id']}", headers=trainer).json()
        assert done["state"] == "succeeded", done["error"]
        finished = time.monotonic()

        def served(gateway) -> bool:
            answer = client.post(f"{gateway.url}/v1/predict", headers=trainer,
                                 json={"molecules": ["CCO"], "endpoints": ["fleet_assay"]})
            return answer.status_code == 200

        _until(lambda: served(a) and served(b), 10, "the new model was not served by both gateways")
        published_to_served = time.monotonic() - finished
        assert published_to_served < 5
        version = client.get(f"{b.url}/v1/models", headers=admin).json()
        assert any(m["endpoint"] == "fleet_assay" for m in version)
        # Version numbers are the fleet's: a second training through B takes the next one.
        first = max(m["version"] for m in version if m["endpoint"] == "fleet_assay")

        # Deleted through B: A drops it too.
        assert client.delete(f"{b.url}/v1/models/fleet_assay/{first}", headers=admin).status_code == 200
        _until(lambda: not served(a) and not served(b), 10, "the deleted model was still served")

        # A revoked key is refused by both within a second.
        limited = {"x-api-key": keys["limited"]}
        body = {"molecules": ["CCO"], "endpoints": ["tpsa"]}
        assert client.post(f"{a.url}/v1/predict", headers=limited, json=body).status_code == 200
        store.revoke(keys["limited"].split("_")[1])
        revoked = time.monotonic()
        _until(lambda: all(client.post(f"{g.url}/v1/predict", headers=limited, json=body).status_code == 403
                           for g in (a, b)), 2, "a revoked key was still accepted")
        assert time.monotonic() - revoked < 1.5


def test_the_rate_limit_is_the_keys_across_the_fleet(fleet):
    (a, b), keys, _, store = fleet
    limited = {"x-api-key": keys["limited"]}  # 30 a minute
    body = {"molecules": ["CCO"], "endpoints": ["tpsa"]}
    statuses = []
    with httpx.Client(timeout=30) as client:
        for i in range(40):
            gateway = (a, b)[i % 2]
            statuses.append(client.post(f"{gateway.url}/v1/predict", headers=limited, json=body).status_code)
    # Two gateways grant the key its rate once, not twice: 30 (and a token or two refilled).
    assert 30 <= statuses.count(200) <= 32 and statuses.count(429) >= 8, statuses
