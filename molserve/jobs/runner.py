"""Start queued jobs as separate processes, watch them, and recover after crashes.

Runs as a background task in the gateway. Each job is its own OS process (in its own session,
so it outlives a gateway that is killed); the store is the only channel between them. A runner
claims a job under a lease of its own (`JobStore.claim`) and hands the lease to the job's
process, which renews it while it works; a job whose lease runs out (its process or machine
died) is queued again (resumed from its checkpoint) by whichever runner looks next, until it
has been attempted `max_attempts` times, then failed with the reason. No runner ever decides
from a process id whether a job still runs: several gateways on several machines share one
store.

It also keeps jobs bounded: the queue is fair between owners (`JobStore.claim`), a
job of a kind with a time limit is told its remaining time (it fails itself when that runs out;
one that does not is killed shortly after), and uploads and results older than the retention
period are deleted, never those a queued or running job reads or writes.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from molserve.config import child_environment
from molserve.jobs.store import FINAL, LEASE_S, new_lease, open_store
from molserve.processes import cancel_and_wait

log = logging.getLogger("molserve.jobs")

# How long past its limit a job may take to fail itself before it is killed.
TIME_LIMIT_GRACE_S = 30.0


def _remove(path: str) -> None:
    """A file, local or in the fleet's object store."""
    if "://" in path:
        import fsspec

        fs, inner = fsspec.core.url_to_fs(path)
        try:
            fs.rm(inner)
        except FileNotFoundError:
            pass
        return
    Path(path).unlink(missing_ok=True)


class JobRunner:
    def __init__(self, jobs_dir: Path, registry: Path, datasets: Path, *, max_concurrent: int = 1,
                 max_attempts: int = 3, poll_s: float = 0.3, idle_poll_s: float = 2.0,
                 on_model_registered: Callable[[], None] | None = None,
                 max_running_per_owner: int | None = None, time_limits: dict[str, float] | None = None,
                 retention_s: float | None = None, clean_every_s: float = 600.0,
                 clock: Callable[[], float] = time.time, lease_s: float = LEASE_S,
                 database_url: str | None = None) -> None:
        self.jobs_dir = jobs_dir
        self.database_url = database_url
        self.lease = new_lease()  # this runner's claims
        self.lease_s = lease_s
        self.store = open_store(jobs_dir, database_url)
        self.registry = registry
        self.datasets = datasets
        self.max_concurrent = max_concurrent
        self.max_attempts = max_attempts
        self.poll_s = poll_s
        # With no job running, the store is read every idle_poll_s (jobs another gateway queued,
        # crashed jobs to recover); a submission here wakes the loop at once.
        self.idle_poll_s = idle_poll_s
        self._wake: asyncio.Event | None = None
        self.busy = False
        self.on_model_registered = on_model_registered
        self.children: dict[str, subprocess.Popen] = {}
        self._task: asyncio.Task | None = None
        self._seen_success: set[str] = set()
        self.max_running_per_owner = max_running_per_owner
        self.time_limits = time_limits or {}
        self.retention_s = retention_s
        self.clean_every_s = clean_every_s
        self.clock = clock
        self._cleaned = float("-inf")

    def start(self) -> None:
        self.recover()
        self._wake = asyncio.Event()
        self._task = asyncio.create_task(self._loop())

    def wake(self) -> None:
        """Look at the store now (a job was submitted or cancelled)."""
        if self._wake is not None:
            self._wake.set()

    async def stop(self) -> None:
        await cancel_and_wait(self._task)

    def recover(self) -> None:
        """Jobs whose lease ran out (their process, or its machine, died): resume or fail them."""
        self.store.expire_leases(self.max_attempts)

    def _spawn(self, job: dict) -> None:
        """The job's process, handed this runner's lease on it (it renews it from then on)."""
        command = [sys.executable, "-m", "molserve.jobs.execute", "--job", job["id"],
                   "--jobs-dir", str(self.jobs_dir), "--registry", str(self.registry),
                   "--datasets", str(self.datasets), "--lease", job["lease_owner"],
                   "--lease-s", str(self.lease_s)]
        limit = self.time_limits.get(job["kind"])
        if limit is not None:  # counted from the first start: a resumed job does not start over
            remaining = limit - (self.clock() - (job["started"] or self.clock()))
            command += ["--time-limit", f"{max(1.0, remaining):.0f}"]
        log_path = self.jobs_dir / "logs"
        log_path.mkdir(parents=True, exist_ok=True)
        # The database's address travels in the environment (it may hold a password), never on
        # the command line other processes can read.
        env = child_environment(**({"MOLSERVE_DATABASE_URL": self.database_url} if self.database_url else {}))
        with open(log_path / f"{job['id']}.log", "ab") as output:
            process = subprocess.Popen(command, stdout=output, stderr=output, start_new_session=True,
                                       env=env)
        self.children[job["id"]] = process
        self.store.transition(job["id"], ("running",), lease=job["lease_owner"], pid=process.pid)

    def _kill(self, job: dict, sig: int) -> None:
        """Signal a job's process if it runs on this machine (its session: a screen's pool
        processes go with it). A job another machine runs stops by itself: it polls."""
        import socket

        process = self.children.get(job["id"])
        if process is not None and process.poll() is None:
            target = process.pid
        elif job.get("pid") and str(job.get("lease_owner") or "").split(":", 1)[0] == socket.gethostname():
            target = job["pid"]  # started by another gateway process on this machine
        else:
            return
        try:
            os.killpg(target, sig)
        except (ProcessLookupError, PermissionError):
            pass

    def enforce_time_limits(self) -> None:
        """Kill jobs that outlived their kind's limit by more than the grace they get to fail
        themselves (one stuck in native code may not notice its alarm)."""
        now = self.clock()
        for job in self.store.running():
            limit = self.time_limits.get(job["kind"])
            if limit is None or job["started"] is None or now - job["started"] < limit + TIME_LIMIT_GRACE_S:
                continue
            self._kill(job, signal.SIGKILL)
            if not self.store.transition(
                    job["id"], ("running",), state="failed", finished=now, lease_owner=None,
                    error=f"the {job['kind']} job exceeded its time limit of {limit:.0f} s"):
                continue  # it finished (or was cancelled) meanwhile
            self.store.log(job["id"], "killed: time limit exceeded")
            if job["kind"] == "screen":
                shutil.rmtree(self.jobs_dir / "results" / job["id"], ignore_errors=True)

    def clean(self) -> dict[str, int]:
        """Delete uploads and results past the retention period: uploads no queued or running
        job reads, results of finished jobs only. Returns what was removed."""
        removed = {"uploads": 0, "results": 0}
        if self.retention_s is None:
            return removed
        now = self.clock()
        before = now - self.retention_s
        for upload in self.store.expired_uploads(before):
            if self.store.delete_upload(upload["id"], now, unused_since=before):
                _remove(upload["path"])
                removed["uploads"] += 1
        for job in self.store.expired_results(before):
            shutil.rmtree(self.jobs_dir / "results" / job["id"], ignore_errors=True)
            _remove(job["result"]["path"])
            kept = {k: v for k, v in job["result"].items() if k != "path"}
            self.store.update(job["id"], result={**kept, "expired": True})
            removed["results"] += 1
        # Upload files no row describes (stored before uploads had owners, or cut short by a
        # crash) age by their modification time.
        known, busy = self.store.upload_paths(), self.store.active_inputs()
        for path in (self.jobs_dir / "uploads").glob("*"):
            name = str(path)
            if name not in known and name not in busy and path.stat().st_mtime < before:
                path.unlink(missing_ok=True)
                removed["uploads"] += 1
        return removed

    def tick(self) -> None:
        for job_id, process in list(self.children.items()):
            if process.poll() is not None:
                del self.children[job_id]
        self.recover()
        self.enforce_time_limits()
        if self.clock() - self._cleaned >= self.clean_every_s:
            self._cleaned = self.clock()
            removed = self.clean()
            if any(removed.values()):
                log.info("retention: removed %d uploads and %d results", removed["uploads"],
                         removed["results"])
        # The cap counts every running job, whoever runs it: checked inside the claim.
        while (job := self.store.claim(self.lease, lease_s=self.lease_s, max_running=self.max_concurrent,
                                       max_running_per_owner=self.max_running_per_owner,
                                       max_attempts=self.max_attempts)) is not None:
            self._spawn(job)
        self.busy = bool(self.children) or bool(self.store.counts().get("running"))
        if self.on_model_registered:
            fresh = [j for j in self.store.list(50) if j["kind"] == "train"
                     and j["state"] == "succeeded" and j["id"] not in self._seen_success]
            if fresh:
                self._seen_success.update(j["id"] for j in fresh)
                self.on_model_registered()

    def cancel(self, job_id: str) -> dict | None:
        """A queued job is cancelled at once; a running one is asked to stop (its process polls
        the flag, and one this runner started is also sent SIGTERM). Each change names the state
        it expects, so a job that finished meanwhile stays finished."""
        job = self.store.get(job_id)
        if job is None or job["state"] in FINAL:
            return job
        if not self.store.transition(job_id, ("queued",), state="cancelled", cancel_requested=1,
                                     finished=time.time()):
            if self.store.transition(job_id, ("running",), cancel_requested=1):
                self._kill(job, signal.SIGTERM)
        return self.store.get(job_id)

    async def _loop(self) -> None:
        # Successes that happened before this start do not trigger a reload.
        self._seen_success = {j["id"] for j in self.store.list(1000) if j["state"] == "succeeded"}
        assert self._wake is not None
        while True:
            self._wake.clear()
            try:
                await asyncio.to_thread(self.tick)
            except Exception:  # never let a bad row stop the runner
                log.exception("job runner tick failed")
            # Running jobs are watched closely (progress, exits); an idle runner sleeps longer.
            wait_s = self.poll_s if self.busy else self.idle_poll_s
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=wait_s)
            except TimeoutError:
                pass
