"""Jobs: the store, and training and screens end to end through a real gateway process,
including SIGKILL of the gateway and of the job process mid-way."""

from __future__ import annotations

import csv
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from molserve.data.bundled import load_bundled
from molserve.jobs.store import SQLiteJobStore
from tests.conftest import free_port
from tests.processes import wait_for


def test_store_persists_claims_once_and_keeps_logs(tmp_path):
    store = SQLiteJobStore(tmp_path / "jobs.sqlite3")
    first = store.create("screen", {"x": 1})
    second = store.create("train", {"y": 2})
    assert first["state"] == "queued" and first["params"] == {"x": 1}
    claimed = store.claim_queued()
    assert claimed["id"] == first["id"] and claimed["state"] == "running" and claimed["attempts"] == 1
    assert store.claim_queued()["id"] == second["id"]
    assert store.claim_queued() is None
    store.update(first["id"], progress=0.5, step="half", checkpoint={"rows_done": 10})
    store.log(first["id"], "hello")
    reopened = SQLiteJobStore(tmp_path / "jobs.sqlite3")
    job = reopened.get(first["id"])
    assert job["progress"] == 0.5 and job["checkpoint"] == {"rows_done": 10}
    assert reopened.logs(first["id"])[0].endswith("hello")
    assert reopened.counts() == {"running": 2}


class Gateway:
    """A `molserve serve` process with a jobs directory that survives restarts."""

    def __init__(self, registry: Path, jobs_dir: Path, datasets: Path, database: str | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        # A short lease: a job whose process is killed is resumed within seconds.
        self.env = {**os.environ, "MOLSERVE_REGISTRY": str(registry), "MOLSERVE_JOBS_DIR": str(jobs_dir),
                    "MOLSERVE_DATASETS": str(datasets), "MOLSERVE_API_KEY": "k3y",
                    "MOLSERVE_JOB_LEASE_S": "3", **({"MOLSERVE_DATABASE_URL": database} if database else {})}
        self.process: subprocess.Popen | None = None

    def start(self) -> Gateway:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "molserve", "serve", "--port", str(self.port), "--log-level", "warning"],
            env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(f"{self.url}/readyz")
        return self

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)


KEY = {"x-api-key": "k3y"}


def wait_job(url: str, job_id: str, timeout: float = 240, until=("succeeded", "failed", "cancelled")):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = httpx.get(f"{url}/v1/jobs/{job_id}", timeout=5, headers=KEY).json()
        if job["state"] in until:
            return job
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} still {job['state']} after {timeout} s: {job}")


@pytest.fixture()
def job_env(tmp_path, trained_registry):
    registry = tmp_path / "registry"
    shutil.copytree(trained_registry.root, registry)
    return registry, tmp_path / "jobs", tmp_path / "datasets"


def _smiles_file(path: Path, n: int) -> list[str]:
    pool = load_bundled("bbb_penetration").smiles
    rows = [pool[i % len(pool)] for i in range(n)]
    rows[123] = "C1CC"  # one invalid record
    path.write_text("smiles\n" + "\n".join(rows) + "\n")
    return rows


def _check_result(csv_text: str, inputs: list[str]) -> None:
    rows = list(csv.DictReader(csv_text.splitlines()))
    assert len(rows) == len(inputs)
    assert [int(r["row"]) for r in rows] == list(range(len(inputs)))
    assert [r["input"] for r in rows] == inputs
    assert rows[123]["error"].startswith("unclosed ring")
    assert sum(1 for r in rows if r["solubility"]) >= len(inputs) - 10


def test_train_and_screen_over_http_then_use_the_new_model(job_env, tmp_path):
    registry, jobs_dir, datasets = job_env
    gateway = Gateway(registry, jobs_dir, datasets).start()
    try:
        with httpx.Client(base_url=gateway.url, timeout=30, headers=KEY) as client:
            inputs = _smiles_file(tmp_path / "screen.csv", 20_000)
            files = {"file": ("screen.csv", open(tmp_path / "screen.csv", "rb"))}
            upload = client.post("/v1/uploads", files=files)
            assert upload.status_code == 201
            submitted = client.post("/v1/jobs", json={
                "kind": "screen", "upload_id": upload.json()["upload_id"], "endpoints": ["solubility"],
                "chunk_size": 2000})
            assert submitted.status_code == 202 and submitted.json()["state"] == "queued"
            screen_id = submitted.json()["id"]

            logbb = load_bundled("logbb")
            train_csv = tmp_path / "train.csv"
            train_csv.write_text("smiles,y\n" + "\n".join(
                f"{s},{y}" for s, y in zip(logbb.smiles, logbb.labels, strict=True)) + "\n")
            train_upload = client.post("/v1/uploads", files={"file": ("train.csv", open(train_csv, "rb"))})
            body = {"kind": "train", "upload_id": train_upload.json()["upload_id"], "endpoint": "my_logbb",
                    "label_col": "y", "profile": "quick"}
            assert httpx.post(f"{gateway.url}/v1/jobs", json=body).status_code == 401  # needs the key
            train = client.post("/v1/jobs", json=body)
            assert train.status_code == 202

            screened = wait_job(gateway.url, screen_id)
            assert screened["state"] == "succeeded", screened
            assert screened["result"]["rows"] == 20_000 and screened["result"]["invalid"] >= 1
            assert screened["progress"] == 1.0 and screened["logs"]
            _check_result(client.get(f"/v1/jobs/{screen_id}/result").text, inputs)
            cli = [sys.executable, "-m", "molserve", "jobs", "--url", gateway.url, "--api-key", "k3y"]
            listing = subprocess.run([*cli, "list"], capture_output=True, text=True, timeout=60)
            assert screen_id in listing.stdout and "succeeded" in listing.stdout
            subprocess.run([*cli, "result", screen_id, "-o", str(tmp_path / "cli.csv")], check=True,
                           capture_output=True, timeout=60)
            _check_result((tmp_path / "cli.csv").read_text(), inputs)

            trained = wait_job(gateway.url, train.json()["id"])
            assert trained["state"] == "succeeded", trained
            assert trained["result"]["endpoint"] == "my_logbb" and "rmse" in trained["result"]["metrics"]
            deadline = time.monotonic() + 10
            while True:  # the gateway reloads models when a training job succeeds
                answer = client.post("/v1/predict", json={"molecules": ["CCO"], "endpoints": ["my_logbb"]})
                if answer.status_code == 200:
                    break
                assert time.monotonic() < deadline, answer.text
                time.sleep(0.2)
            provenance = answer.json()["results"][0]["predictions"]["my_logbb"]["provenance"]
            assert provenance["model_id"] == "my_logbb/gbm"

            bad = client.post("/v1/jobs", json={"kind": "screen", "upload_id": "0" * 32})
            assert bad.status_code == 404
            nameless = client.post("/v1/jobs", json={"kind": "train", "model": "graph"})
            assert nameless.status_code == 404 and nameless.json()["error"] == "no_endpoint"
            assert client.get("/v1/jobs/nope").status_code == 404
            assert client.get(f"/v1/jobs/{train.json()['id']}/result").status_code == 409
    finally:
        gateway.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request):
    """The job store: SQLite in the jobs folder, or PostgreSQL (a fleet's shared store)."""
    return None if request.param == "sqlite" else request.getfixturevalue("postgres").new_database()


def test_sigkill_mid_screen_and_mid_training_loses_nothing(job_env, tmp_path, database):
    from molserve.jobs.store import open_store

    registry, jobs_dir, datasets = job_env
    inputs = _smiles_file(tmp_path / "screen.smi", 20_000)
    gateway = Gateway(registry, jobs_dir, datasets, database).start()
    try:
        with httpx.Client(base_url=gateway.url, timeout=30, headers=KEY) as client:
            files = {"file": ("screen.smi", open(tmp_path / "screen.smi", "rb"))}
            upload = client.post("/v1/uploads", files=files)
            screen_id = client.post("/v1/jobs", json={
                "kind": "screen", "upload_id": upload.json()["upload_id"], "endpoints": ["solubility"],
                "chunk_size": 250}).json()["id"]
            wait_until = time.monotonic() + 120
            while client.get(f"/v1/jobs/{screen_id}").json()["progress"] < 0.15:
                assert time.monotonic() < wait_until
                time.sleep(0.1)
        # The machine "crashes": the gateway and the job's own process are killed.
        gateway.kill()
        pid = open_store(jobs_dir, database).get(screen_id)["pid"]
        os.kill(pid, signal.SIGKILL)
        time.sleep(0.3)
        gateway = Gateway(registry, jobs_dir, datasets, database).start()
        job = wait_job(gateway.url, screen_id)
        assert job["state"] == "succeeded", job
        assert job["attempts"] == 2
        assert any("resum" in line for line in job["logs"])
        _check_result(httpx.get(f"{gateway.url}/v1/jobs/{screen_id}/result", headers=KEY).text, inputs)

        # Training killed mid-way: no half-registered model, and the job ends with a state.
        before = {p.name for p in (registry / "solubility").iterdir()}
        train_id = httpx.post(f"{gateway.url}/v1/jobs", headers={"x-api-key": "k3y"}, json={
            "kind": "train", "dataset": "missing_dataset"}).json()
        assert train_id["error"] == "dataset_not_found"
        from molserve.data.store import DatasetStore

        logbb = load_bundled("logbb")
        DatasetStore(datasets).save("logbb_copy", [{"canonical_smiles": s, "label": y}
                                                   for s, y in zip(logbb.smiles, logbb.labels, strict=True)
                                                   if "." not in s][:600],
                                    task="regression", units="log", description="copy", source="test",
                                    licence="CC0-1.0", curation={})
        job = httpx.post(f"{gateway.url}/v1/jobs", headers={"x-api-key": "k3y"}, json={
            "kind": "train", "dataset": "logbb_copy", "endpoint": "solubility", "profile": "quick"}).json()
        deadline = time.monotonic() + 60
        store = open_store(jobs_dir, database)
        while store.get(job["id"])["step"] in (None, "curating"):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        os.kill(store.get(job["id"])["pid"], signal.SIGKILL)
        final = wait_job(gateway.url, job["id"], timeout=300)
        assert final["state"] in ("succeeded", "failed"), final
        after = sorted(p.name for p in (registry / "solubility").iterdir())
        from molserve.registry import Registry

        for artifact in Registry(registry).versions("solubility"):
            artifact.verify()  # every visible version is complete
        new = set(after) - before
        assert len(new) == (1 if final["state"] == "succeeded" else 0), (before, after, final)
    finally:
        gateway.stop()


def test_a_training_job_resumed_after_registering_does_not_register_twice(job_env):
    """The window between the registry write and the job's state update: a resumed attempt
    finds the model its earlier attempt registered instead of training a second one."""
    from molserve.data.store import DatasetStore
    from molserve.registry import Registry

    registry, jobs_dir, datasets = job_env
    logbb = load_bundled("logbb")
    DatasetStore(datasets).save("small", [{"canonical_smiles": s, "label": y} for s, y in
                                          zip(logbb.smiles, logbb.labels, strict=True) if "." not in s][:300],
                                task="regression", units="log", description="t", source="t",
                                licence="CC0-1.0", curation={})
    store = SQLiteJobStore(jobs_dir / "jobs.sqlite3")
    job = store.create("train", {"dataset": "small", "endpoint": "idempotent", "profile": "quick"})
    command = [sys.executable, "-m", "molserve.jobs.execute", "--job", job["id"], "--jobs-dir",
               str(jobs_dir), "--registry", str(registry), "--datasets", str(datasets)]
    store.claim_queued()
    subprocess.run(command, check=True, capture_output=True, timeout=300)
    first = store.get(job["id"])
    assert first["state"] == "succeeded" and first["result"]["version"] == 1
    # As if killed before this was recorded: its lease ran out, it was queued and claimed again.
    store.update(job["id"], state="queued", result=None, lease_owner=None)
    store.claim_queued()
    subprocess.run(command, check=True, capture_output=True, timeout=300)
    again = store.get(job["id"])
    assert again["state"] == "succeeded" and again["result"]["version"] == 1
    assert [a.version for a in Registry(registry).versions("idempotent")] == [1]
    assert any("registered by an earlier attempt" in line for line in store.logs(job["id"]))


def test_cancel_a_running_screen_and_a_queued_job(job_env, tmp_path):
    registry, jobs_dir, datasets = job_env
    gateway = Gateway(registry, jobs_dir, datasets).start()
    try:
        with httpx.Client(base_url=gateway.url, timeout=30, headers=KEY) as client:
            _smiles_file(tmp_path / "big.smi", 20_000)
            with open(tmp_path / "big.smi", "rb") as handle:
                upload = client.post("/v1/uploads", files={"file": ("big.smi", handle)}).json()
            body = {"kind": "screen", "upload_id": upload["upload_id"], "endpoints": ["solubility"],
                    "chunk_size": 100}
            running = client.post("/v1/jobs", json=body).json()["id"]
            queued = client.post("/v1/jobs", json=body).json()["id"]  # one job runs at a time
            deadline = time.monotonic() + 60
            while client.get(f"/v1/jobs/{running}").json()["progress"] <= 0:
                assert time.monotonic() < deadline
                time.sleep(0.1)
            assert client.post(f"/v1/jobs/{queued}/cancel").json()["state"] == "cancelled"
            client.post(f"/v1/jobs/{running}/cancel")
            final = wait_job(gateway.url, running, timeout=60)
            assert final["state"] == "cancelled" and final["progress"] < 1.0
            assert client.get(f"/v1/jobs/{running}/result").status_code == 409
    finally:
        gateway.stop()


def test_storage_faults_fail_a_job_with_where_and_what_to_do(tmp_path):
    import errno

    from molserve.jobs.execute import failure_reason

    full = OSError(errno.ENOSPC, "No space left on device")
    reason = failure_reason(full, tmp_path / "results")
    assert reason.startswith("disk full while writing to") and str(tmp_path / "results") in reason
    read_only = OSError(errno.EROFS, "Read-only file system", str(tmp_path / "registry" / ".staging"))
    assert "cannot write to" in failure_reason(read_only, tmp_path) and "Make it writable" in \
        failure_reason(read_only, tmp_path)
    assert failure_reason(ValueError("bad column"), tmp_path) == "ValueError: bad column"


def test_the_registry_write_check_leaves_nothing_behind(tmp_path):
    from molserve.registry import Registry

    registry = Registry(tmp_path / "registry")
    registry.check_writable()
    assert list((tmp_path / "registry" / ".staging").iterdir()) == []
    assert registry.endpoints() == []


def test_the_client_carries_an_anonymous_jobs_token_and_others_cannot_read_the_job(trained_registry,
                                                                                  tmp_path):
    """With anonymous jobs on, the client keeps the token its submission returned and sends it
    with every call about that job; a client without it finds nothing."""
    from fastapi.testclient import TestClient

    from molserve.client import GatewayClient
    from molserve.config import Settings
    from molserve.errors import NotFound
    from molserve.gateway.app import create_app
    from molserve.jobs.runner import JobRunner

    app = create_app(Settings(registry=trained_registry.root, jobs_dir=tmp_path / "jobs",
                              anonymous_jobs=True))
    app.state.jobs = JobRunner(tmp_path / "jobs", trained_registry.root, tmp_path / "d")  # not started
    served = TestClient(app)

    def forward(request: httpx.Request) -> httpx.Response:
        answer = served.request(request.method, request.url.raw_path.decode(), content=request.read(),
                                headers=dict(request.headers))
        return httpx.Response(answer.status_code, headers=answer.headers, content=answer.content)

    transport = httpx.MockTransport(forward)
    (tmp_path / "m.smi").write_text("CCO\n")
    with GatewayClient("http://testserver", transport=transport) as client:
        upload = client.upload(tmp_path / "m.smi")
        job = client.submit_screen(upload_id=upload.upload_id, endpoints=["tpsa"])
        assert job.token and client.job_tokens == {job.id: job.token}
        assert client.get(job.id).state == "queued"
        assert client.cancel(job.id).state == "cancelled"
    with GatewayClient("http://testserver", transport=transport) as stranger:
        with pytest.raises(NotFound):
            stranger.get(job.id)
    with GatewayClient("http://testserver", transport=transport, job_tokens={job.id: job.token}) as holder:
        assert holder.get(job.id).state == "cancelled"
