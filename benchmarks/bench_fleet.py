"""A fleet under fire: two gateways as separate processes with separate local directories, one
PostgreSQL and one S3-compatible object store (both started here: Debian's PostgreSQL binaries,
moto's server), mixed jobs submitted across both while one gateway is killed with SIGKILL and
restarted twice.

Counted from the side effects, not the status rows:
- a screen writes its result once per attempt that finished (`results/<job>/attempt-<n>/`):
  more than one such object for a job means it ran twice to the end; its rows must be its inputs,
  each once, in order;
- a training registers a model version naming its job: more than one version naming a job means
  it ran twice;
- `lost`: a job that did not succeed, or a side effect missing;
- `failed_downloads`: a screen's result that did not download, identical, from both gateways;
- `trainings_not_served_everywhere`: trainings whose model does not answer on both gateways;
- `publish_to_served_s`: from a training job's end (on gateway A, after the storm) to its model
  answering on gateway B;
- `revoke_to_refused_s`: from revoking a key in the database to both gateways refusing it.

The figures are printed last as one JSON line (keys `jobs`, `ran_twice`, `lost`,
`failed_downloads`, `publish_to_served_s`, `revoke_to_refused_s`).

Run: .venv/bin/python -m benchmarks.bench_fleet [--jobs 1000] [--quick] [--registry PATH]
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from benchmarks.common import ensure_registry
from tests.processes import stop


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Gateway:
    def __init__(self, root: Path, env: dict[str, str]) -> None:
        self.root = root
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {**os.environ, **env, "MOLSERVE_REGISTRY": str(root / "registry"),
                    "MOLSERVE_JOBS_DIR": str(root / "jobs"), "MOLSERVE_DATASETS": str(root / "datasets")}
        self.process: subprocess.Popen | None = None
        self.kills = 0

    def start(self) -> Gateway:
        log = open(self.root / "gateway.log", "ab")  # noqa: SIM115 (the process owns it)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "molserve", "serve", "--port", str(self.port), "--log-level", "warning"],
            env=self.env, stdout=log, stderr=log)
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code < 500:
                    return self
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "a gateway did not start"
            time.sleep(0.2)

    def kill(self) -> None:
        """SIGKILL: the gateway and nothing else (its job processes live on, as on a machine
        whose gateway crashed; their leases still run)."""
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()
        self.kills += 1

    def stop(self) -> None:
        if self.process is not None:
            stop(self.process)


def _screen_input(i: int) -> list[str]:
    rng = random.Random(i)
    return [f"C{'C' * rng.randrange(12)}{rng.choice('ONS')}" for _ in range(20)]


def _training_input(i: int) -> str:
    rows = [f"C{'C' * (k // 2)}{'O' if k % 2 else 'N'}C{'C' * (i % 3)},{(k * 7 + i) % 11}" for k in range(40)]
    return "smiles,y\n" + "\n".join(rows) + "\n"


def run(jobs: int, trainings: int, work: Path, registry: Path | None = None) -> dict:
    from molserve.gateway.keys import KeyStore
    from molserve.storage import ObjectStore
    from tests.objectstore import S3Server
    from tests.postgres import PostgresServer

    registry = registry or ensure_registry(work / "registry")
    postgres = PostgresServer().start()
    s3 = S3Server().start()
    gateways: list[Gateway] = []
    try:
        database = postgres.new_database()
        storage = s3.bucket("fleet") + "/molserve"
        os.environ.update(s3.env)
        keys = KeyStore(None, database_url=database)
        admin = {"x-api-key": keys.create("admin", ["admin"])[0]}
        env = {**s3.env, "MOLSERVE_DATABASE_URL": database, "MOLSERVE_STORAGE_URL": storage,
               "MOLSERVE_SYNC_INTERVAL_S": "0.5", "MOLSERVE_JOB_LEASE_S": "4",
               "MOLSERVE_MAX_CONCURRENT_JOBS": "4", "MOLSERVE_QUOTA_QUEUED_JOBS": str(jobs + 10),
               "MOLSERVE_QUOTA_RUNNING_JOBS": "4"}
        for name in ("a", "b"):
            root = work / name
            root.mkdir(parents=True)
            shutil.copytree(registry, root / "registry", ignore=shutil.ignore_patterns(".embeddings"))
            gateways.append(Gateway(root, env).start())
        a, b = gateways
        client = httpx.Client(timeout=60)
        submitted: dict[str, dict] = {}
        kill_at = {jobs // 3, 2 * jobs // 3}
        started = time.monotonic()
        for i in range(jobs):
            via = gateways[i % 2]
            if via.process is None or via.process.poll() is not None:
                via = gateways[(i + 1) % 2]
            train = i % max(1, jobs // max(1, trainings)) == 0 and sum(
                1 for j in submitted.values() if j["kind"] == "train") < trainings
            for attempt in range(20):  # the gateway asked may be the one just killed
                try:
                    if train:
                        upload = client.post(f"{via.url}/v1/uploads", headers=admin,
                                             files={"file": (f"t{i}.csv", _training_input(i))}).json()
                        response = client.post(f"{via.url}/v1/jobs", headers=admin, json={
                            "kind": "train", "upload_id": upload["upload_id"], "label_col": "y",
                            "endpoint": f"fleet_{i}", "profile": "quick", "split": "random"})
                        submitted[response.json()["id"]] = {"kind": "train", "endpoint": f"fleet_{i}"}
                    else:
                        molecules = _screen_input(i)
                        upload = client.post(f"{via.url}/v1/uploads", headers=admin, files={
                            "file": (f"s{i}.smi", "\n".join(molecules) + "\n")}).json()
                        response = client.post(f"{via.url}/v1/jobs", headers=admin, json={
                            "kind": "screen", "upload_id": upload["upload_id"], "endpoints": ["tpsa"]})
                        submitted[response.json()["id"]] = {"kind": "screen", "inputs": molecules}
                    break
                except (httpx.HTTPError, KeyError, ValueError):
                    via = gateways[(i + attempt + 1) % 2]
                    time.sleep(0.2)
            if i in kill_at:  # the machine of gateway A crashes, and comes back
                a.kill()
                time.sleep(2)
                a.start()
        # Wait for every job to end (any gateway answers for any job).
        deadline = time.monotonic() + 3600
        states: dict[str, dict] = {}
        while time.monotonic() < deadline:
            pending = 0
            for job_id in submitted:
                if states.get(job_id, {}).get("state") in ("succeeded", "failed", "cancelled"):
                    continue
                try:
                    states[job_id] = client.get(f"{gateways[len(states) % 2].url}/v1/jobs/{job_id}",
                                                headers=admin).json()
                except httpx.HTTPError:
                    pass
                if states.get(job_id, {}).get("state") not in ("succeeded", "failed", "cancelled"):
                    pending += 1
            if not pending:
                break
            time.sleep(1)
        elapsed = time.monotonic() - started
        store = ObjectStore(storage)
        ran_twice = lost = failed_downloads = not_served = 0
        from molserve.database import shared

        db = shared(database)
        for job_id, job in submitted.items():
            state = states.get(job_id, {})
            if state.get("state") != "succeeded":
                lost += 1
                continue
            if job["kind"] == "screen":
                finished = store.fs.glob(store._path(f"results/{job_id}/attempt-*/result.csv"))
                ran_twice += len(finished) > 1
                lost += not finished
                texts = []
                for gateway in gateways:
                    try:
                        response = client.get(f"{gateway.url}/v1/jobs/{job_id}/result", headers=admin)
                        texts.append(response.text if response.status_code == 200 else None)
                    except httpx.HTTPError:
                        texts.append(None)
                if None in texts or texts[0] != texts[1]:
                    failed_downloads += 1
                    continue
                rows = list(csv.DictReader(io.StringIO(texts[0])))
                if [r["input"] for r in rows] != job["inputs"]:
                    lost += 1
            else:
                with db.read() as conn:
                    rows = conn.execute("SELECT manifest FROM registry_versions WHERE endpoint = ? "
                                        "AND published IS NOT NULL", (job["endpoint"],)).fetchall()
                manifests = [json.loads(row["manifest"] or "{}") for row in rows]
                versions = sum(1 for m in manifests if m.get("job_id") == job_id)
                ran_twice += versions > 1
                lost += versions == 0
                # Every training served by both gateways (each from its own synced directory).
                answers = [client.post(f"{g.url}/v1/predict", headers=admin, json={
                    "molecules": ["CCO"], "endpoints": [job["endpoint"]]}).status_code for g in gateways]
                not_served += answers != [200, 200]
        # A fresh training measured live: its end to an answer on the other gateway.
        upload = client.post(f"{a.url}/v1/uploads", headers=admin,
                             files={"file": ("live.csv", _training_input(10**6))}).json()
        live = client.post(f"{a.url}/v1/jobs", headers=admin, json={
            "kind": "train", "upload_id": upload["upload_id"], "label_col": "y", "endpoint": "fleet_live",
            "profile": "quick", "split": "random"}).json()
        while client.get(f"{a.url}/v1/jobs/{live['id']}", headers=admin).json()["state"] not in (
                "succeeded", "failed"):
            time.sleep(0.05)
        finished = client.get(f"{a.url}/v1/jobs/{live['id']}", headers=admin).json()["finished"]
        while client.post(f"{b.url}/v1/predict", headers=admin, json={
                "molecules": ["CCO"], "endpoints": ["fleet_live"]}).status_code != 200:
            time.sleep(0.02)
        live_served = round(time.time() - finished, 3)
        # Revoke to refused.
        doomed_key, doomed = keys.create("doomed", ["predict"])
        body = {"molecules": ["CCO"], "endpoints": ["tpsa"]}
        for gateway in gateways:
            while client.post(f"{gateway.url}/v1/predict", headers={"x-api-key": doomed_key},
                              json=body).status_code != 200:
                time.sleep(0.05)
        keys.revoke(doomed.id)
        revoked = time.monotonic()
        while any(client.post(f"{g.url}/v1/predict", headers={"x-api-key": doomed_key},
                              json=body).status_code != 403 for g in gateways):
            time.sleep(0.01)
        revoke_to_refused = round(time.monotonic() - revoked, 3)
        kinds = [j["kind"] for j in submitted.values()]
        return {"jobs": len(submitted), "trainings": kinds.count("train"), "screens": kinds.count("screen"),
                "gateway_kills": a.kills, "seconds": round(elapsed, 1),
                "ran_twice": ran_twice, "lost": lost, "failed_downloads": failed_downloads,
                "trainings_not_served_everywhere": not_served,
                "publish_to_served_s": live_served, "revoke_to_refused_s": revoke_to_refused,
                "load": [round(x, 2) for x in os.getloadavg()]}
    finally:
        for gateway in gateways:
            gateway.stop()
        s3.stop()
        postgres.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--trainings", type=int, default=None, help="default: a tenth of the jobs")
    parser.add_argument("--quick", action="store_true", help="60 jobs (a shorter run of the same scenario)")
    parser.add_argument("--registry", type=Path, default=None,
                        help="copy the bundled models from this registry (default: train them here)")
    args = parser.parse_args()
    jobs = 60 if args.quick else args.jobs
    trainings = args.trainings if args.trainings is not None else max(2, jobs // 10)
    with tempfile.TemporaryDirectory(prefix="molserve-fleet-") as work:
        figures = run(jobs, trainings, Path(work), args.registry)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
