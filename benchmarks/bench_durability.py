"""kill -9 during training and during screens, N times: every job must end succeeded (possibly
after resuming) or failed with a reason, and no artifact or result may be corrupt.

Each round: start the gateway, submit a job (alternately a 20,000-molecule screen and a
training job), SIGKILL both the gateway and the job's process after a random delay, start the
gateway again, and wait for the job to end.

Run: .venv/bin/python -m benchmarks.bench_durability [--registry registry] [--rounds 20]
"""

from __future__ import annotations

import argparse
import csv
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

from benchmarks.common import ensure_registry, free_port


def start(registry: Path, jobs: Path, datasets: Path, port: int) -> subprocess.Popen:
    env = {**os.environ, "MOLSERVE_REGISTRY": str(registry), "MOLSERVE_JOBS_DIR": str(jobs),
           "MOLSERVE_DATASETS": str(datasets), "MOLSERVE_API_KEY": "k3y"}
    process = subprocess.Popen([sys.executable, "-m", "molserve", "serve", "--port", str(port),
                                "--log-level", "warning"], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                return process
        except httpx.TransportError:
            time.sleep(0.05)
    raise RuntimeError("gateway did not start")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--registry", default="registry")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    source = ensure_registry(Path(args.registry))
    rng = random.Random(args.seed)
    from molserve.data.bundled import load_bundled
    from molserve.data.store import DatasetStore
    from molserve.jobs.store import SQLiteJobStore
    from molserve.registry import Registry

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        registry, jobs, datasets = root / "registry", root / "jobs", root / "datasets"
        shutil.copytree(source, registry)
        logbb = load_bundled("logbb")
        DatasetStore(datasets).save("logbb_copy", [
            {"canonical_smiles": s, "label": y} for s, y in zip(logbb.smiles, logbb.labels, strict=True)
            if "." not in s], task="regression", units="log", description="copy", source="bench",
            licence="CC0-1.0", curation={})
        pool = load_bundled("bbb_penetration").smiles
        screen_file = root / "screen.smi"
        inputs = [pool[i % len(pool)] for i in range(20000)]
        screen_file.write_text("\n".join(inputs) + "\n")
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        store = SQLiteJobStore(jobs / "jobs.sqlite3")
        rounds = []
        for index in range(args.rounds):
            gateway = start(registry, jobs, datasets, port)
            kind = "screen" if index % 2 == 0 else "train"
            if kind == "screen":
                with open(screen_file, "rb") as handle:
                    upload = httpx.post(f"{url}/v1/uploads", files={"file": ("s.smi", handle)}).json()
                body = {"kind": "screen", "upload_id": upload["upload_id"], "endpoints": ["solubility"],
                        "chunk_size": 250}
            else:
                body = {"kind": "train", "dataset": "logbb_copy", "endpoint": f"durable_{index}",
                        "profile": "quick"}
            job = httpx.post(f"{url}/v1/jobs", json=body, headers={"x-api-key": "k3y"}).json()
            delay = rng.uniform(0.5, 4.0)
            time.sleep(delay)
            gateway.send_signal(signal.SIGKILL)
            gateway.wait()
            pid = store.get(job["id"])["pid"]
            killed_job = False
            if pid:
                try:
                    os.kill(pid, signal.SIGKILL)
                    killed_job = True
                except ProcessLookupError:
                    pass
            gateway = start(registry, jobs, datasets, port)
            deadline = time.monotonic() + 300
            while True:
                final = store.get(job["id"])
                if final["state"] in ("succeeded", "failed", "cancelled") or time.monotonic() > deadline:
                    break
                time.sleep(0.2)
            gateway.terminate()
            gateway.wait()
            rounds.append({"round": index, "kind": kind, "kill_after_s": round(delay, 2),
                           "job_process_killed": killed_job, "state": final["state"],
                           "attempts": final["attempts"], "error": final["error"]})
            print(json.dumps(rounds[-1]), flush=True)

        corrupt = 0
        for artifact in Registry(registry).all_artifacts():
            try:
                artifact.verify()
            except Exception:
                corrupt += 1
        for job in store.list(1000):
            if job["kind"] == "screen" and job["state"] == "succeeded":
                rows = list(csv.DictReader(open(job["result"]["path"])))
                numbers = [int(r["row"]) for r in rows]
                if [r["input"] for r in rows] != inputs or numbers != list(range(len(inputs))):
                    corrupt += 1
        lost = sum(1 for r in rounds if r["state"] not in ("succeeded", "failed")
                   or (r["state"] == "failed" and not r["error"]))
    print(json.dumps({"rounds": len(rounds), "corrupt_artifacts_or_results": corrupt, "lost_jobs": lost,
                      "succeeded": sum(r["state"] == "succeeded" for r in rounds),
                      "failed_with_reason": sum(r["state"] == "failed" for r in rounds),
                      "resumed": sum(r["attempts"] > 1 for r in rounds)}, indent=2))


if __name__ == "__main__":
    main()
