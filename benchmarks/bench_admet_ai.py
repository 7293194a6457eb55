"""molserve against ADMET-AI on the same 1,000 drug-like molecules, whole process against whole
process, in the same run: `molserve predict` (every predicted endpoint in the registry) and
ADMET-AI's `admet_predict` (all of its endpoints), each timed from process start to its CSV.

ADMET-AI pins its own rdkit and torch, so it lives in its own virtual environment, created here
on first use (`pip install admet-ai`; its model weights ship inside its wheel, so it then runs
offline). Each side runs `--repeats` times, alternating; the medians are compared.

Run: .venv/bin/python -m benchmarks.bench_admet_ai [--registry registry] [--venv DIR]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import venv
from pathlib import Path

from benchmarks.bench_batch import molecules
from benchmarks.common import ensure_registry


def admet_ai(environment: Path) -> Path:
    """The `admet_predict` of a virtual environment with admet-ai, installed if missing."""
    command = environment / "bin" / "admet_predict"
    if not command.exists():
        venv.create(environment, with_pip=True)
        subprocess.run([str(environment / "bin" / "pip"), "install", "--quiet", "admet-ai"], check=True)
    return command


def timed(command: list[str], env: dict | None = None) -> float:
    started = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--registry", default="registry")
    parser.add_argument("--venv", default=str(Path(tempfile.gettempdir()) / "molserve-bench-admet-ai"))
    parser.add_argument("-n", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    registry = ensure_registry(Path(args.registry).resolve())
    command = admet_ai(Path(args.venv))
    smiles = molecules(args.n)
    jobs = os.cpu_count() or 1
    before = [round(x, 2) for x in os.getloadavg()]
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "in.csv"
        with open(source, "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["smiles"])
            writer.writerows([s] for s in smiles)
        theirs, ours = [], []
        for _ in range(args.repeats):
            theirs.append(timed([str(command), "--data_path", str(source), "--save_path",
                                 str(Path(tmp) / "admet.csv"), "--smiles_column", "smiles"]))
            ours.append(timed([sys.executable, "-m", "molserve", "--registry", str(registry), "predict",
                               str(source), "-o", str(Path(tmp) / "molserve.csv"), "--jobs", str(jobs),
                               "--quiet"]))
        with open(Path(tmp) / "admet.csv") as handle:
            admet_columns = next(csv.reader(handle))
        with open(Path(tmp) / "molserve.csv") as handle:
            molserve_columns = next(csv.reader(handle))
    theirs_rate = args.n / statistics.median(theirs)
    ours_rate = args.n / statistics.median(ours)
    print(json.dumps({
        "molecules": args.n,
        "cores": jobs,
        "admet_ai_seconds": [round(t, 2) for t in theirs],
        "molserve_seconds": [round(t, 2) for t in ours],
        "admet_ai_molecules_per_s": round(theirs_rate, 1),
        "molserve_molecules_per_s": round(ours_rate, 1),
        "ratio": round(ours_rate / theirs_rate, 2),
        "admet_ai_output_columns": len(admet_columns) - 1,
        "molserve_output_columns": len(molserve_columns),
        "load_average_before_after": [before, [round(x, 2) for x in os.getloadavg()]],
        "note": "whole processes: start-up, model load, file read and write; molserve with one "
                "process per core (its default), ADMET-AI with its defaults",
    }, indent=2))


if __name__ == "__main__":
    main()
