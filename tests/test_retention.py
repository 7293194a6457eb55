"""Bounds on jobs: per-key quotas, retention of uploads and results under a fake clock (nothing
a running job reads or writes is removed), the fair queue, time limits, and job databases
written before jobs had owners."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time

from fastapi.testclient import TestClient

from molserve.config import Settings
from molserve.gateway.app import create_app
from molserve.gateway.keys import KeyStore
from molserve.jobs.runner import TIME_LIMIT_GRACE_S, JobRunner
from molserve.jobs.store import SQLiteJobStore

DAY = 86400.0


class FakeClock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def test_quotas_fill_then_retention_frees_them_and_spares_the_running_job(trained_registry, tmp_path):
    keys_file = tmp_path / "keys.json"
    store = KeyStore(keys_file)
    mine, other = (store.create(name, ["predict"])[0] for name in ("mine", "other"))
    app = create_app(Settings(registry=trained_registry.root, api_keys_file=keys_file,
                              jobs_dir=tmp_path / "jobs", quota_upload_bytes=3000,
                              quota_queued_jobs=2))
    clock = FakeClock()
    runner = app.state.jobs = JobRunner(tmp_path / "jobs", trained_registry.root, tmp_path / "d",
                                        retention_s=7 * DAY, clock=clock)
    client = TestClient(app)
    headers = {"x-api-key": mine}
    molecules = b"CCO\n" * 250  # 1,000 bytes

    def upload(key=mine):
        return client.post("/v1/uploads", headers={"x-api-key": key},
                           files={"file": ("m.smi", molecules)})

    uploads = [upload() for _ in range(4)]
    assert [u.status_code for u in uploads] == [201, 201, 201, 429]
    full = uploads[-1].json()
    assert full["error"] == "quota_exceeded" and full["details"] == {
        "quota": "upload_bytes", "used": 3000, "limit": 3000}
    assert upload(other).status_code == 201  # quotas are per key
    ids = [u.json()["upload_id"] for u in uploads[:3]]

    def submit(upload_id):
        return client.post("/v1/jobs", headers=headers,
                           json={"kind": "screen", "upload_id": upload_id, "endpoints": ["tpsa"]})

    first, second, third = submit(ids[0]), submit(ids[1]), submit(ids[2])
    assert (first.status_code, second.status_code, third.status_code) == (202, 202, 429)
    assert third.json()["details"]["quota"] == "queued_jobs"

    # The first screen runs (its partial result on disk); the second finishes with a result.
    running = runner.store.claim_queued()
    assert running["id"] == first.json()["id"]
    partial = tmp_path / "jobs" / "results" / running["id"]
    partial.mkdir(parents=True)
    (partial / "result.csv.partial").write_text("row\n")
    finished_id = second.json()["id"]
    runner.store.claim_queued()
    done = tmp_path / "jobs" / "results" / finished_id
    done.mkdir(parents=True)
    (done / "result.csv").write_text("row\n0\n")
    runner.store.update(finished_id, state="succeeded", finished=time.time(),
                        result={"path": str(done / "result.csv"), "rows": 1})
    assert client.get(f"/v1/jobs/{finished_id}/result", headers=headers).status_code == 200

    clock.now += 6 * DAY  # younger than the retention period: nothing goes
    assert runner.clean() == {"uploads": 0, "results": 0}

    clock.now += 2 * DAY
    removed = runner.clean()
    # The finished job's upload and result, the unused upload and the other key's: all older
    # than 7 days. The running job's input and its partial output stay.
    assert removed == {"uploads": 3, "results": 1}
    upload_dir = tmp_path / "jobs" / "uploads"
    remaining = sorted(p.name for p in upload_dir.iterdir())
    assert remaining == [os.path.basename(running["params"]["input_path"])]
    assert (partial / "result.csv.partial").exists() and not done.exists()
    expired = client.get(f"/v1/jobs/{finished_id}/result", headers=headers)
    assert expired.status_code == 404 and expired.json()["error"] == "result_expired"
    assert client.get(f"/v1/jobs/{finished_id}", headers=headers).json()["state"] == "succeeded"
    gone = client.post("/v1/jobs", headers=headers,
                       json={"kind": "screen", "upload_id": ids[2], "endpoints": ["tpsa"]})
    assert gone.status_code == 404
    # The freed bytes count again: two uploads fit where one did before.
    assert [upload().status_code for _ in range(2)] == [201, 201]


def test_one_key_with_many_queued_jobs_does_not_starve_another(tmp_path):
    store = SQLiteJobStore(tmp_path / "jobs.sqlite3")
    flood = [store.create("screen", {"n": i}, owner="key:a")["id"] for i in range(5)]
    late = store.create("train", {}, owner="key:b")["id"]
    first = store.claim_queued(max_running_per_owner=1)
    assert first["id"] == flood[0]
    assert store.claim_queued(max_running_per_owner=1)["id"] == late  # a is at its running quota
    assert store.claim_queued(max_running_per_owner=1) is None
    store.update(first["id"], state="succeeded")
    assert store.claim_queued(max_running_per_owner=1)["id"] == flood[1]
    # Without a running quota, owners still alternate: fewest running first.
    again = SQLiteJobStore(tmp_path / "other.sqlite3")
    a = [again.create("screen", {}, owner="key:a")["id"] for _ in range(3)]
    b = [again.create("screen", {}, owner="key:b")["id"] for _ in range(2)]
    order = [again.claim_queued()["id"] for _ in range(5)]
    assert order == [a[0], b[0], a[1], b[1], a[2]]


def test_a_job_past_its_time_limit_fails_itself_with_the_reason(trained_registry, tmp_path):
    from tests.test_jobs import _smiles_file

    store = SQLiteJobStore(tmp_path / "jobs" / "jobs.sqlite3")
    # Far more than a second's work even on a fast path (20,000 rows once finished in under one).
    _smiles_file(tmp_path / "big.smi", 300_000)
    job = store.create("screen", {"input_path": str(tmp_path / "big.smi"), "endpoints": ["solubility"],
                                  "chunk_size": 100})
    store.claim_queued()
    registry = str(trained_registry.root)
    started = time.monotonic()
    subprocess.run([sys.executable, "-m", "molserve.jobs.execute", "--job", job["id"], "--jobs-dir",
                    str(tmp_path / "jobs"), "--registry", registry, "--datasets", str(tmp_path / "d"),
                    "--time-limit", "1"], capture_output=True, timeout=120)
    failed = store.get(job["id"])
    assert failed["state"] == "failed" and "time limit" in failed["error"], failed
    assert time.monotonic() - started < 60
    assert not (tmp_path / "jobs" / "results" / job["id"]).exists()


def test_a_job_that_ignores_its_time_limit_is_killed(tmp_path):
    clock = FakeClock()
    runner = JobRunner(tmp_path / "jobs", tmp_path / "registry", tmp_path / "d",
                       time_limits={"train": 60.0}, clock=clock)
    job = runner.store.create("train", {}, owner="key:a")
    runner.store.claim_queued()
    stuck = subprocess.Popen([sys.executable, "-c", "import signal, time; "
                              "signal.signal(signal.SIGALRM, signal.SIG_IGN); time.sleep(120)"],
                             start_new_session=True)
    try:
        runner.store.update(job["id"], pid=stuck.pid)
        clock.now += 60 + TIME_LIMIT_GRACE_S - 1
        runner.enforce_time_limits()
        assert runner.store.get(job["id"])["state"] == "running" and stuck.poll() is None
        clock.now += 2
        runner.enforce_time_limits()
        assert stuck.wait(timeout=10) == -signal.SIGKILL
        killed = runner.store.get(job["id"])
        assert killed["state"] == "failed" and "time limit of 60 s" in killed["error"]
    finally:
        if stuck.poll() is None:
            stuck.kill()


def test_a_job_database_from_before_owners_opens_and_its_jobs_are_admin_only(trained_registry, tmp_path):
    path = tmp_path / "jobs" / "jobs.sqlite3"
    path.parent.mkdir()
    with sqlite3.connect(path) as db:  # the first release's table
        db.execute("CREATE TABLE jobs (id TEXT PRIMARY KEY, kind TEXT NOT NULL, state TEXT NOT NULL, "
                   "params TEXT NOT NULL, progress REAL NOT NULL DEFAULT 0, step TEXT, eta_s REAL, "
                   "metrics TEXT, result TEXT, error TEXT, checkpoint TEXT, attempts INTEGER NOT NULL "
                   "DEFAULT 0, pid INTEGER, cancel_requested INTEGER NOT NULL DEFAULT 0, created REAL "
                   "NOT NULL, started REAL, finished REAL, heartbeat REAL)")
        db.execute("INSERT INTO jobs (id, kind, state, params, created) VALUES "
                   "('old0000000000000', 'screen', 'succeeded', '{}', 1.0)")
    store = SQLiteJobStore(path)
    assert store.get("old0000000000000")["owner"] is None
    keys_file = tmp_path / "keys.json"
    keys = KeyStore(keys_file)
    user, admin = keys.create("user", ["read", "predict"])[0], keys.create("admin", ["admin"])[0]
    app = create_app(Settings(registry=trained_registry.root, api_keys_file=keys_file,
                              jobs_dir=tmp_path / "jobs"))
    app.state.jobs = JobRunner(tmp_path / "jobs", trained_registry.root, tmp_path / "d")
    client = TestClient(app)
    assert client.get("/v1/jobs/old0000000000000", headers={"x-api-key": user}).status_code == 404
    assert client.get("/v1/jobs/old0000000000000", headers={"x-api-key": admin}).status_code == 200
