"""What each fast-tier feature block costs per molecule, as the gateway computes it.

Molecules: the first 2,000 of TDC's lipophilicity train_val (drug-like). One process, one core;
each block is timed alone over all molecules, then the union the served models need.

Run: .venv/bin/python -m benchmarks.bench_features [--registry registry]
"""

from __future__ import annotations

import argparse
import json
import time

from molserve.chem.features import BLOCKS, FeatureSpec, _morgan_generator, featurize
from molserve.chem.molecules import largest_fragment, parse_smiles
from molserve.data import tdc


def per_molecule_us(fn, items, repeats: int = 3) -> float:
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        for item in items:
            fn(item)
        best = min(best, time.perf_counter() - started)
    return best / len(items) * 1e6


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--registry", default="registry")
    parser.add_argument("-n", type=int, default=2000)
    args = parser.parse_args()
    train_val, _ = tdc.load("lipophilicity")
    smiles = train_val.smiles[: args.n]
    mols = [largest_fragment(parse_smiles(s).mol) for s in smiles]
    figures = {"molecules": len(mols),
               "parse_and_canonicalize_us": per_molecule_us(parse_smiles, smiles),
               "morgan_counts_2048_us": per_molecule_us(
                   _morgan_generator(2, 2048).GetCountFingerprintAsNumPy, mols)}
    for name, block in BLOCKS.items():
        figures[f"{name}_{block.width}_us"] = per_molecule_us(block.fn, mols)
    from molserve.prediction.tiers import FastTier
    from molserve.registry import Registry

    backend = FastTier(Registry(args.registry))
    backend.load()
    if backend.shared_spec is not None:
        spec = backend.shared_spec
        figures["served_union"] = spec.to_dict()["blocks"]
        figures["served_union_us"] = per_molecule_us(lambda m: featurize([m], spec), mols, 1)
        figures["endpoints_per_recipe"] = {}
        for model in backend.models.values():
            key = "+".join(model.spec.blocks) or "(legacy descriptors)"
            figures["endpoints_per_recipe"][key] = figures["endpoints_per_recipe"].get(key, 0) + 1
    else:
        figures["served_union_us"] = per_molecule_us(
            lambda m: featurize([m], FeatureSpec(blocks=tuple(BLOCKS))), mols, 1)
    print(json.dumps({k: round(v, 1) if isinstance(v, float) else v for k, v in figures.items()},
                     indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
