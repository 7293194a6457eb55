"""Jobs run exactly once at a time: a claim records its lease (holder and deadline) in the same
transaction, only an expired lease returns a job to the queue, every state change names the
state (and lease) it expects, and quotas and the concurrency cap are checked inside the
transaction that acts on them."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import pytest

from molserve.jobs.runner import JobRunner
from molserve.jobs.store import QuotaFull, SQLiteJobStore, open_store


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request, tmp_path):
    """Where the store lives: SQLite in the jobs folder (one machine), or an empty PostgreSQL
    database (a fleet)."""
    if request.param == "sqlite":
        return None
    return request.getfixturevalue("postgres").new_database()


def _runner(tmp_path, database):
    return JobRunner(tmp_path, tmp_path / "registry", tmp_path / "datasets", database_url=database)


def test_a_claimed_job_returns_to_the_queue_only_when_its_lease_expires(tmp_path, database):
    """The double run the lease replaces: a job claimed by one runner whose process has not
    started yet (no pid) was taken for dead by another runner's recovery and queued again."""
    store = open_store(tmp_path, database)
    job = store.create("screen", {})
    first = _runner(tmp_path, database)
    other = _runner(tmp_path, database)
    claimed = store.claim(first.lease, lease_s=30)
    assert claimed["id"] == job["id"] and claimed["lease_owner"] == first.lease
    assert claimed["lease_until"] > time.time() + 25 and claimed["pid"] is None
    other.recover()  # no pid, and the first runner's process never started: still its job
    assert store.get(job["id"])["state"] == "running"
    assert store.claim(other.lease) is None
    # The lease runs out (its holder's machine died): the job returns, and only then.
    store.update(job["id"], lease_until=time.time() - 1)
    other.recover()
    back = store.get(job["id"])
    assert back["state"] == "queued" and back["lease_owner"] is None
    assert store.claim(other.lease)["attempts"] == 2


def test_every_state_change_names_the_state_and_lease_it_expects(tmp_path, database):
    store = open_store(tmp_path, database)
    runner = _runner(tmp_path, database)
    job = store.create("screen", {})
    claimed = store.claim("holder-a")
    # A holder that lost its lease (expired, claimed by another) changes nothing.
    store.update(job["id"], lease_until=time.time() - 1)
    store.expire_leases()
    assert store.claim("holder-b")["lease_owner"] == "holder-b"
    assert not store.renew(job["id"], claimed["lease_owner"])
    assert not store.transition(job["id"], ("running",), lease="holder-a", state="succeeded")
    assert store.transition(job["id"], ("running",), lease="holder-b", state="succeeded",
                            finished=time.time())
    # A cancel that arrives after the finish leaves the job finished.
    assert runner.cancel(job["id"])["state"] == "succeeded"
    assert not store.get(job["id"])["cancel_requested"]
    # Recovery does not touch a finished job whose lease was left behind.
    store.update(job["id"], lease_until=time.time() - 100)
    assert store.expire_leases() == [] and store.get(job["id"])["state"] == "succeeded"


def test_the_concurrency_cap_counts_every_runner_s_jobs(tmp_path, database):
    store = open_store(tmp_path, database)
    for _ in range(4):
        store.create("screen", {})
    assert store.claim("gateway-1", max_running=2) is not None
    assert store.claim("gateway-2", max_running=2) is not None
    assert store.claim("gateway-1", max_running=2) is None  # two run, wherever they run
    assert store.claim("gateway-3", max_running=2) is None
    assert store.counts() == {"running": 2, "queued": 2}


def test_quotas_hold_under_concurrent_submissions(tmp_path, database):
    store = open_store(tmp_path, database)
    outcomes: list[str] = []
    barrier = threading.Barrier(12)

    def submit() -> None:
        barrier.wait()
        try:
            store.create("screen", {}, owner="key:a", max_queued=5)
            outcomes.append("queued")
        except QuotaFull:
            outcomes.append("refused")

    threads = [threading.Thread(target=submit) for _ in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert outcomes.count("queued") == 5 and store.active_counts("key:a")["queued"] == 5
    with pytest.raises(QuotaFull):
        store.add_upload("u" * 32, "key:a", "f.csv", "/dev/null", 10, quota=5)
    store.add_upload("v" * 32, "key:a", "f.csv", "/dev/null", 5, quota=5)
    assert store.upload_bytes("key:a") == 5


def test_a_job_process_renews_its_lease_and_stops_when_it_has_lost_it(trained_registry, tmp_path):
    """A long screen: its process renews the lease while it runs; when the lease is taken over
    (as after a stall long enough for another gateway to resume the job) it stops and changes
    nothing, the new holder's record stands."""
    jobs = tmp_path / "jobs"
    store = SQLiteJobStore(jobs / "jobs.sqlite3")
    source = tmp_path / "many.smi"
    source.write_text("".join(f"{'C' * (1 + i % 30)}O\n" for i in range(200_000)))
    job = store.create("screen", {"input_path": str(source), "endpoints": ["solubility"],
                                  "chunk_size": 500})
    claimed = store.claim("runner-a", lease_s=3)
    process = subprocess.Popen(
        [sys.executable, "-m", "molserve.jobs.execute", "--job", job["id"], "--jobs-dir", str(jobs),
         "--registry", str(trained_registry.root), "--datasets", str(tmp_path / "d"),
         "--lease", claimed["lease_owner"], "--lease-s", "3"], stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while (store.get(job["id"])["progress"] or 0) == 0:
            assert process.poll() is None and time.monotonic() < deadline
            time.sleep(0.2)
        renewed = store.get(job["id"])["lease_until"]
        time.sleep(2.5)
        assert store.get(job["id"])["lease_until"] > renewed  # renewed while it works
        # Another holder takes the job over (what an expired lease and a new claim amount to).
        store.update(job["id"], lease_owner="runner-b", lease_until=time.time() + 60)
        assert process.wait(timeout=30) == 3
        assert "lease lost" in process.stderr.read()
        after = store.get(job["id"])
        assert after["state"] == "running" and after["lease_owner"] == "runner-b"
    finally:
        if process.poll() is None:
            process.kill()


def test_claims_from_many_processes_at_once_take_each_job_once(tmp_path, database):
    """Twelve claimers racing over one store (threads here; gateways on several machines in a
    fleet): every job is claimed by exactly one of them, and never more than the cap run."""
    store = open_store(tmp_path, database)
    ids = {store.create("screen", {}, owner=f"key:{i % 3}")["id"] for i in range(60)}
    taken: list[tuple[str, str]] = []
    lock = threading.Lock()
    barrier = threading.Barrier(12)

    def claimer(n: int) -> None:
        mine = open_store(tmp_path, database)
        barrier.wait()
        while True:
            job = mine.claim(f"claimer-{n}", max_running=5)
            if job is None:
                if not mine.counts().get("queued"):
                    return
                # Finish one of ours to make room under the cap.
                with lock:
                    ours = [j for j, who in taken if who == f"claimer-{n}"]
                for job_id in ours:
                    mine.transition(job_id, ("running",), lease=f"claimer-{n}", state="succeeded")
                time.sleep(0.01)
                continue
            running = mine.counts().get("running", 0)
            assert running <= 5, running
            with lock:
                taken.append((job["id"], f"claimer-{n}"))

    threads = [threading.Thread(target=claimer, args=(n,)) for n in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    claimed = [job_id for job_id, _ in taken]
    assert sorted(claimed) == sorted(ids)  # each job once, none lost
    assert all(store.get(j)["attempts"] == 1 for j in ids)


def test_the_postgresql_store_is_migrated_by_molserve_db_upgrade(postgres):
    from typer.testing import CliRunner

    from molserve.cli import app
    from molserve.database import MIGRATIONS, migration_state

    url = postgres.new_database()
    check = CliRunner().invoke(app, ["db", "upgrade", "--database-url", url, "--check"])
    missing = ", ".join(str(v) for v, _ in MIGRATIONS)
    assert check.exit_code == 1 and f'"missing": [{missing}]' in check.output
    done = CliRunner().invoke(app, ["db", "upgrade", "--database-url", url])
    assert done.exit_code == 0, done.output
    assert migration_state(url) == {"applied": [v for v, _ in MIGRATIONS], "missing": []}
    again = CliRunner().invoke(app, ["db", "upgrade", "--database-url", url])
    assert '"applied_now": []' in again.output  # nothing twice
    assert open_store("unused", url).counts() == {}
