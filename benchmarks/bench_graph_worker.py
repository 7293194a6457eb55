"""The graph tier's serving cost on this machine: molecules per second of one graph model (an
ensemble of D-MPNNs, torch on CPU, batch 64, descriptors included), and the worker's resident
memory with many graph models loaded.

Run: .venv/bin/python -m benchmarks.bench_graph_worker --registry DIR [--endpoint caco2_permeability]
     [-n 2000] [--copies 45] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path


def rss_mb() -> float:
    with open(f"/proc/{os.getpid()}/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--registry", required=True)
    parser.add_argument("--endpoint", default="caco2_permeability")
    parser.add_argument("-n", type=int, default=2000)
    parser.add_argument("--copies", type=int, default=45)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    import torch

    from molserve.data.bundled import load_bundled
    from molserve.models.graph.runtime import GraphModel
    from molserve.registry import Registry

    torch.set_num_threads(args.threads)
    artifact = Registry(Path(args.registry)).latest(args.endpoint, kind="graph")
    if artifact is None:
        raise SystemExit(f"no graph model for {args.endpoint}: molserve finetune --model graph --dataset ...")
    before = rss_mb()
    model = GraphModel.load(artifact, device="cpu", threads=args.threads)
    one = rss_mb() - before
    pool = load_bundled("bbb_penetration").smiles
    smiles = [pool[i % len(pool)] for i in range(args.n)]
    model.predict(smiles[:64])  # warm-up
    started = time.perf_counter()
    for start in range(0, len(smiles), 64):
        model.predict(smiles[start:start + 64])
    seconds = time.perf_counter() - started
    features = time.perf_counter()
    from molserve.chem.molecules import parse_smiles
    from molserve.models.graph.modeling import apply_cdf, descriptor_matrix

    mols = [parse_smiles(s).mol for s in smiles]
    apply_cdf(descriptor_matrix(mols), model.knots)
    descriptor_seconds = time.perf_counter() - features
    models = [model] + [GraphModel.load(artifact, device="cpu") for _ in range(args.copies - 1)]
    print(json.dumps({
        "endpoint": args.endpoint, "ensemble": len(model.members), "threads": args.threads,
        "molecules": len(smiles), "molecules_per_second": round(len(smiles) / seconds, 1),
        "descriptor_share": round(descriptor_seconds / seconds, 3),
        "rss_one_model_mb": round(one, 1),
        f"rss_with_{len(models)}_models_mb": round(rss_mb(), 1),
        "parameters_per_member": sum(p.numel() for p in model.members[0].parameters()),
    }, indent=2))


if __name__ == "__main__":
    main()
