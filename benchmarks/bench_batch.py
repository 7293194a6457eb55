"""Batch throughput: `molserve predict` on 10,000 molecules, one endpoint and then every
endpoint of the registry, against RDKit alone parsing the same SMILES and computing their Morgan
count fingerprints, in the same run.

With `--baseline REV`, `molserve predict` of git revision REV runs too, in the same run, each
measurement right after this tree's.

Run: .venv/bin/python -m benchmarks.bench_batch [--registry registry] [--endpoint solubility]
     [--baseline REV]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.bench_gateway import export
from benchmarks.common import ROOT, ensure_registry


def rdkit_alone(smiles: list[str]) -> int:
    from rdkit import Chem, RDLogger
    from rdkit.Chem import rdFingerprintGenerator

    RDLogger.DisableLog("rdApp.*")
    generator = rdFingerprintGenerator.GetMorganGenerator(radius=2, fpSize=2048)
    done = 0
    for text in smiles:
        mol = Chem.MolFromSmiles(text)
        if mol is not None:
            generator.GetCountFingerprintAsNumPy(mol)
            done += 1
    return done


def molecules(n: int) -> list[str]:
    """n drug-like SMILES: B3DB's molecules (BBB set), cycled."""
    from molserve.data.bundled import load_bundled

    pool = load_bundled("bbb_penetration").smiles
    return [pool[i % len(pool)] for i in range(n)]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--registry", default="registry")
    parser.add_argument("--endpoint", default="solubility")
    parser.add_argument("-n", type=int, default=10_000)
    parser.add_argument("--baseline", help="git revision to measure side by side")
    args = parser.parse_args()
    registry = ensure_registry(Path(args.registry).resolve())
    smiles = molecules(args.n)
    jobs = os.cpu_count() or 1
    with tempfile.TemporaryDirectory() as tmp:
        sides = {"this": str(ROOT)}
        if args.baseline:
            sides["baseline"] = str(export(args.baseline, Path(tmp)))
        os.chdir(tmp)  # so that PYTHONPATH alone says which molserve runs
        source = Path(tmp) / "in.smi"
        source.write_text("\n".join(smiles) + "\n")

        started = time.perf_counter()
        rdkit_alone(smiles)
        rdkit_1 = args.n / (time.perf_counter() - started)

        halves = [smiles[i::jobs] for i in range(jobs)]
        started = time.perf_counter()
        with multiprocessing.get_context("forkserver").Pool(jobs) as pool:
            pool.map(rdkit_alone, halves)
        rdkit_n = args.n / (time.perf_counter() - started)

        def predict(j: int, endpoints: list[str], side: str = "this") -> float:
            started = time.perf_counter()
            subprocess.run([sys.executable, "-m", "molserve", "--registry", str(registry), "predict",
                            str(source), "-o", str(Path(tmp) / "out.csv"), *endpoints,
                            "--jobs", str(j), "--quiet"], check=True, stderr=subprocess.DEVNULL,
                           env={**os.environ, "PYTHONPATH": sides[side]})
            return args.n / (time.perf_counter() - started)

        rates, every, baseline = {}, 0.0, {}
        for j in (1, jobs):
            rates[j] = predict(j, ["--endpoints", args.endpoint])
            if args.baseline:
                baseline[f"one_endpoint_per_s_{j}_jobs"] = round(predict(j, ["--endpoints", args.endpoint],
                                                                         "baseline"))
        every = predict(jobs, [])
        if args.baseline:
            baseline[f"every_endpoint_per_s_{jobs}_jobs"] = round(predict(jobs, [], "baseline"))
    print(json.dumps({
        "molecules": args.n,
        "endpoint": args.endpoint,
        "cores": jobs,
        "rdkit_parse_fp_per_s_1_process": round(rdkit_1),
        f"rdkit_parse_fp_per_s_{jobs}_processes": round(rdkit_n),
        "molserve_predict_per_s_1_job": round(rates[1]),
        f"molserve_predict_per_s_{jobs}_jobs": round(rates[jobs]),
        "ratio_default_jobs_vs_rdkit_1_process": round(rates[jobs] / rdkit_1, 3),
        "ratio_same_parallelism": round(rates[jobs] / rdkit_n, 3),
        "ratio_1_job_vs_rdkit_1_process": round(rates[1] / rdkit_1, 3),
        f"molserve_predict_every_endpoint_per_s_{jobs}_jobs": round(every),
        "ratio_every_endpoint_same_parallelism": round(every / rdkit_n, 3),
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        **({"baseline": {"revision": args.baseline, **baseline}} if args.baseline else {}),
        "note": "molserve timings are whole CLI runs: process start, model load, file read/write",
    }, indent=2))


if __name__ == "__main__":
    main()
