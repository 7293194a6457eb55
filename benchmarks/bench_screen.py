"""A large screen as a job: peak memory must not grow with the file. Screens N molecules (MOSES
SMILES) for one endpoint through the job executor, sampling the job process's resident memory,
for two file sizes in one run.

Run: .venv/bin/python -m benchmarks.bench_screen [--registry registry] [--sizes 100000,1000000]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import ensure_registry, rss_mb


def screen(registry: Path, n: int, corpus: list[str], folder: Path, endpoint: str) -> dict:
    from molserve.jobs.store import SQLiteJobStore

    source = folder / f"screen-{n}.smi"
    with open(source, "w") as handle:
        for i in range(n):
            handle.write(corpus[i % len(corpus)] + "\n")
    jobs = folder / f"jobs-{n}"
    store = SQLiteJobStore(jobs / "jobs.sqlite3")
    job = store.create("screen", {"input_path": str(source), "endpoints": [endpoint], "chunk_size": 1000})
    store.claim_queued()
    started = time.perf_counter()
    process = subprocess.Popen([sys.executable, "-m", "molserve.jobs.execute", "--job", job["id"],
                                "--jobs-dir", str(jobs), "--registry", str(registry),
                                "--datasets", str(folder / "datasets")])
    peak, samples = 0.0, []
    while process.poll() is None:
        try:
            current = rss_mb(process.pid)
        except OSError:
            break
        peak = max(peak, current)
        samples.append(round(current, 1))
        time.sleep(0.5)
    seconds = time.perf_counter() - started
    final = store.get(job["id"])
    quarter = len(samples) // 4
    return {"molecules": n, "state": final["state"], "rows": (final["result"] or {}).get("rows"),
            "seconds": round(seconds, 1), "molecules_per_s": round(n / seconds, 1),
            "peak_rss_mb": round(peak, 1),
            "rss_mb_at_25_50_75_100_percent": [samples[min(len(samples) - 1, q * quarter)]
                                               for q in (1, 2, 3, 4)] if samples else []}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--registry", default="registry")
    parser.add_argument("--sizes", default="100000,1000000")
    parser.add_argument("--endpoint", default="solubility")
    args = parser.parse_args()
    registry = ensure_registry(Path(args.registry))
    from molserve.models.transformer.corpus import read_corpus

    corpus = read_corpus("moses")
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in (int(s) for s in args.sizes.split(",")):
            results.append(screen(registry, n, corpus, Path(tmp), args.endpoint))
            print(json.dumps(results[-1]), flush=True)
    print(json.dumps({"endpoint": args.endpoint, "runs": results}, indent=2))


if __name__ == "__main__":
    main()
