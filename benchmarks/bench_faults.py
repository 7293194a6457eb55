"""Faults injected while the gateway is under load, with what clients saw and how long
recovery took.

A gateway (fast tier, jobs) and a transformer worker run as real processes on loopback. Client
tasks send single-molecule requests for logBB with `tier: transformer` (so every request
exercises the worker path) and solubility (fast tier) the whole time, while these faults are
injected one after another:

1. worker killed (SIGKILL) and started again 10 s later;
2. worker made unresponsive (SIGSTOP) for 10 s, then resumed (SIGCONT); then made slow (starved
   of CPU: stopped 160 ms of every 200 ms) for 10 s;
3. registry made read-only (a read-only bind mount): a training job is submitted, a second
   gateway is started on the read-only registry, then the registry is made writable again and
   the training job resubmitted;
4. disk full for job results (a 256 KiB tmpfs over the results directory): a screen is submitted,
   then the space is restored and the screen resubmitted; and a full uploads directory.

For each phase: requests, failed requests (non-200 or transport errors), degraded answers by
reason, latency, time to detect the fault (first degraded answer) and to recover (first
transformer answer after the worker is back). Faults 3 and 4 need root (mount); they are
skipped otherwise.

Run: .venv/bin/python -m benchmarks.bench_faults [--registry registry] [--concurrency 8]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import numpy as np

from benchmarks.common import ensure_registry, free_port, rss_mb, start_worker, wait_http

KEY = "bench-faults-key"
SMILES = ["CCO", "c1ccccc1O", "CC(=O)Oc1ccccc1C(=O)O", "CN1CCC[C@H]1c1cccnc1", "CCN(CC)CC",
          "Clc1ccc(Cl)cc1", "OC(=O)CCc1ccccc1", "CC(C)Cc1ccc(C(C)C(=O)O)cc1", "NCCc1ccc(O)c(O)c1",
          "COc1ccc2[nH]cc(CCN)c2c1"]


class Load:
    """Client tasks in a thread of their own, recording every request."""

    def __init__(self, url: str, concurrency: int) -> None:
        self.url, self.concurrency = url, concurrency
        self.records: list[tuple[float, int, float, str, str | None]] = []  # t, status, s, tier, reason
        self.stop = threading.Event()
        self.thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)
        self.t0 = time.monotonic()

    def start(self) -> None:
        self.thread.start()

    def now(self) -> float:
        return time.monotonic() - self.t0

    async def _client(self, index: int, client: httpx.AsyncClient) -> None:
        i = index
        while not self.stop.is_set():
            i += self.concurrency
            body = {"molecules": [SMILES[i % len(SMILES)]], "endpoints": ["logbb", "solubility"],
                    "tier": "transformer"}
            sent = self.now()
            try:
                response = await client.post(self.url, json=body, timeout=30)
                status = response.status_code
                tier, reason = "", None
                if status == 200:
                    data = response.json()
                    tier = data["tiers"]["logbb"]
                    reason = data["degraded"].get("logbb")
            except httpx.HTTPError as error:
                status, tier, reason = 0, "", type(error).__name__
            self.records.append((sent, status, self.now() - sent, tier, reason))

    async def _run(self) -> None:
        async with httpx.AsyncClient(limits=httpx.Limits(max_connections=self.concurrency)) as client:
            await asyncio.gather(*(self._client(i, client) for i in range(self.concurrency)))

    def finish(self) -> None:
        self.stop.set()
        self.thread.join(timeout=60)

    def window(self, start: float, end: float) -> list[tuple]:
        """Requests that completed in [start, end)."""
        return [r for r in self.records if start <= r[0] + r[2] < end]


def summarize(records: list[tuple]) -> dict:
    if not records:
        return {"requests": 0}
    latency = np.array([r[2] for r in records]) * 1000
    return {
        "requests": len(records),
        "failed": sum(1 for r in records if r[1] != 200),
        "failed_by_status": dict(Counter(str(r[1]) for r in records if r[1] != 200)),
        "answered_by_transformer": sum(1 for r in records if r[3] == "transformer"),
        "degraded_by_reason": dict(Counter(r[4] for r in records if r[1] == 200 and r[4])),
        "p50_ms": round(float(np.percentile(latency, 50)), 2),
        "p99_ms": round(float(np.percentile(latency, 99)), 2),
        "max_ms": round(float(latency.max()), 2),
    }


def first_after(records: list[tuple], t: float, predicate) -> float | None:
    """Seconds from t to the first request completing after t that satisfies predicate."""
    hits = [r[0] + r[2] for r in records if r[0] + r[2] >= t and predicate(r)]
    return round(min(hits) - t, 3) if hits else None


def start_gateway(registry: Path, jobs: Path, port: int, worker_port: int, log: Path) -> subprocess.Popen:
    env = {**os.environ, "MOLSERVE_REGISTRY": str(registry), "MOLSERVE_JOBS_DIR": str(jobs),
           "MOLSERVE_API_KEY": KEY, "MOLSERVE_WORKER_URLS": json.dumps([f"http://127.0.0.1:{worker_port}"]),
           "MOLSERVE_WORKER_TIMEOUT_MS": "500", "MOLSERVE_BREAKER_RESET_S": "2",
           "MOLSERVE_HEALTH_INTERVAL_S": "1"}
    return subprocess.Popen([sys.executable, "-m", "molserve", "serve", "--port", str(port),
                             "--log-level", "warning"], env=env, stdout=open(log, "ab"),
                            stderr=subprocess.STDOUT)


def submit(base: str, body: dict) -> str:
    response = httpx.post(f"{base}/v1/jobs", json=body, headers={"x-api-key": KEY}, timeout=10)
    response.raise_for_status()
    return response.json()["id"]


def wait_job(base: str, job_id: str, timeout: float = 600) -> dict:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        job = httpx.get(f"{base}/v1/jobs/{job_id}", timeout=10).json()
        if job["state"] in ("succeeded", "failed", "cancelled"):
            job["wall_s"] = round(time.monotonic() - started, 2)
            return job
        time.sleep(0.2)
    raise RuntimeError(f"job {job_id} still running after {timeout} s")


def upload(base: str, path: Path) -> httpx.Response:
    with open(path, "rb") as handle:
        return httpx.post(f"{base}/v1/uploads", files={"file": (path.name, handle, "text/csv")},
                          headers={"x-api-key": KEY}, timeout=60)


def mount(*args: str) -> None:
    subprocess.run(["mount", *args], check=True, capture_output=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--registry", default="registry")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--fault-seconds", type=float, default=10.0)
    parser.add_argument("--settle-seconds", type=float, default=8.0)
    args = parser.parse_args()
    source = ensure_registry(Path(args.registry))
    root = Path(tempfile.mkdtemp(prefix="molserve-faults-"))
    registry, jobs = root / "registry", root / "jobs"
    shutil.copytree(source, registry)
    jobs.mkdir()

    from molserve.data.bundled import load_bundled
    from molserve.models.transformer.pipeline import finetune_endpoint
    from molserve.registry import Registry

    if Registry(registry).latest("logbb", kind="transformer") is None:
        finetune_endpoint(Registry(registry), "logbb", base="random:tiny", epochs=1,
                          learning_rate=1e-3, batch_size=64, export=False)
    logbb = load_bundled("logbb")
    train_csv = root / "logbb_train.csv"
    train_csv.write_text("smiles,logbb\n" + "".join(
        f"{s},{y}\n" for s, y in zip(logbb.smiles, logbb.labels, strict=True)))
    screen_csv = root / "screen.csv"
    solubility = load_bundled("solubility")
    screen_csv.write_text("smiles\n" + "".join(f"{s}\n" for s in solubility.smiles * 3))

    worker_port, gateway_port = free_port(), free_port()
    base = f"http://127.0.0.1:{gateway_port}"
    worker = start_worker(registry, worker_port, root / "worker.log")
    wait_http(f"http://127.0.0.1:{worker_port}/readyz")
    gateway = start_gateway(registry, jobs, gateway_port, worker_port, root / "gateway.log")
    wait_http(f"{base}/readyz")
    load = Load(f"{base}/v1/predict", args.concurrency)
    load.start()
    phases: dict[str, dict] = {}
    is_root = os.geteuid() == 0
    try:
        time.sleep(args.settle_seconds)
        phases["baseline"] = {"window": (0.0, load.now())}

        # 1. Worker killed, then restarted.
        t_kill = load.now()
        worker.kill()
        worker.wait()
        time.sleep(args.fault_seconds)
        t_restart = load.now()
        worker = start_worker(registry, worker_port, root / "worker.log")
        wait_http(f"http://127.0.0.1:{worker_port}/readyz")
        t_ready = load.now()
        time.sleep(args.settle_seconds)
        phases["worker_killed_and_restarted"] = {
            "window": (t_kill, load.now()), "worker_restart_to_ready_s": round(t_ready - t_restart, 2),
            "detect_s": first_after(load.records, t_kill, lambda r: r[4] is not None),
            "recover_after_worker_ready_s": first_after(load.records, t_ready,
                                                        lambda r: r[3] == "transformer")}

        # 2. Worker unresponsive (stopped), then resumed.
        t_stop = load.now()
        worker.send_signal(signal.SIGSTOP)
        time.sleep(args.fault_seconds)
        t_cont = load.now()
        worker.send_signal(signal.SIGCONT)
        time.sleep(args.settle_seconds)
        phases["worker_unresponsive"] = {
            "window": (t_stop, load.now()),
            "detect_s": first_after(load.records, t_stop, lambda r: r[4] is not None),
            "recover_after_resume_s": first_after(load.records, t_cont,
                                                  lambda r: r[3] == "transformer")}

        # 2b. Worker slow: runs 40 ms of every 200 ms, as if starved of CPU.
        t_slow = load.now()
        until = time.monotonic() + args.fault_seconds
        while time.monotonic() < until:
            worker.send_signal(signal.SIGSTOP)
            time.sleep(0.16)
            worker.send_signal(signal.SIGCONT)
            time.sleep(0.04)
        t_fast = load.now()
        time.sleep(args.settle_seconds)
        phases["worker_slow"] = {
            "window": (t_slow, load.now()),
            "detect_s": first_after(load.records, t_slow, lambda r: r[4] is not None),
            "recover_after_restore_s": first_after(load.records, t_fast,
                                                   lambda r: r[3] == "transformer")}

        if is_root:
            # 3. Registry read-only.
            t_ro = load.now()
            mount("--bind", str(registry), str(registry))
            mount("-o", "remount,ro,bind", str(registry))
            uploaded = upload(base, train_csv).json()["upload_id"]
            body = {"kind": "train", "upload_id": uploaded, "endpoint": "logbb_ro_check",
                    "label_col": "logbb", "profile": "quick"}
            failed = wait_job(base, submit(base, body))
            second_port = free_port()
            second = start_gateway(registry, root / "jobs2", second_port, worker_port,
                                   root / "gateway2.log")
            try:
                second_start = round(wait_http(f"http://127.0.0.1:{second_port}/readyz", 60), 2)
                second_answer = httpx.post(f"http://127.0.0.1:{second_port}/v1/predict",
                                           json={"molecules": ["CCO"], "endpoints": ["solubility"]},
                                           timeout=10).status_code
            finally:
                second.terminate()
                second.wait()
            subprocess.run(["umount", str(registry)], check=True)
            t_rw = load.now()
            retried = wait_job(base, submit(base, body))
            phases["registry_read_only"] = {
                "window": (t_ro, load.now()),
                "training_job_while_read_only": {"state": failed["state"], "error": failed["error"],
                                                 "wall_s": failed["wall_s"]},
                "second_gateway_on_read_only_registry": {"ready_s": second_start,
                                                         "predict_status": second_answer},
                "training_job_after_writable": {"state": retried["state"], "wall_s": retried["wall_s"]},
                "writable_to_model_registered_s": round(load.now() - t_rw, 2)}

            # 4. Disk full for job results, then for uploads.
            t_full = load.now()
            results = jobs / "results"
            results.mkdir(exist_ok=True)
            mount("-t", "tmpfs", "-o", "size=256k", "tmpfs", str(results))
            uploaded = upload(base, screen_csv).json()["upload_id"]
            body = {"kind": "screen", "upload_id": uploaded, "endpoints": ["solubility", "logbb", "tpsa"],
                    "chunk_size": 500}
            full = wait_job(base, submit(base, body))
            used = shutil.disk_usage(results).used
            subprocess.run(["umount", str(results)], check=True)
            t_space = load.now()
            again = wait_job(base, submit(base, body))
            uploads = jobs / "uploads"
            mount("-t", "tmpfs", "-o", "size=64k", "tmpfs", str(uploads))
            refused = upload(base, screen_csv)
            left = sorted(p.name for p in uploads.iterdir())
            subprocess.run(["umount", str(uploads)], check=True)
            phases["disk_full_for_job_results"] = {
                "window": (t_full, load.now()),
                "screen_while_full": {"state": full["state"], "error": full["error"],
                                      "bytes_left_on_full_disk_after_failure": used},
                "screen_after_space_restored": {"state": again["state"], "wall_s": again["wall_s"],
                                                "rows": (again.get("result") or {}).get("rows")},
                "space_restored_to_screen_done_s": round(load.now() - t_space, 2),
                "upload_to_full_uploads_dir": {"status": refused.status_code,
                                               "body": refused.json(), "files_left": left}}
        else:
            phases["registry_read_only"] = {"skipped": "needs root for a read-only bind mount"}
            phases["disk_full_for_job_results"] = {"skipped": "needs root for a tmpfs mount"}
        time.sleep(2)
    finally:
        load.finish()
        gateway_rss = rss_mb(gateway.pid)
        for process in (gateway, worker):
            process.terminate()
            process.wait(timeout=30)
    for phase in phases.values():
        if "window" in phase:
            start, end = phase.pop("window")
            phase["load"] = summarize(load.window(start, end))
            phase["seconds"] = round(end - start, 1)
    report = {"concurrency": args.concurrency, "fault_seconds": args.fault_seconds,
              "total": summarize(load.records), "gateway_rss_mb_end": round(gateway_rss, 1),
              "phases": phases}
    print(json.dumps(report, indent=2))
    shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
