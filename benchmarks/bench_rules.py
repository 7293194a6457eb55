"""What the medicinal-chemistry rules and alerts cost per molecule, and what reference
percentiles add to a prediction.

Molecules: the bundled ClinTox drugs (the default reference set's molecules, about 1,460
distinct). Each endpoint is answered by the computed tier as the router asks it (one
`ComputedTier.answer` over all molecules); the alert endpoints share one cached substructure
match per molecule, so each is timed with the cache emptied first, and "all together" asks every
new endpoint in one pass from an empty cache. Parsing the same SMILES is timed in the same run
as the yardstick (ratios travel between machines better than microseconds).

With --registry (a registry with fast models), also: computing a reference set's values for
every fast endpoint and for the numeric computed ones, and the cost of `annotate_response` on a
100-molecule prediction of every fast endpoint, against that prediction's own time.

Run: .venv/bin/python -m benchmarks.bench_rules [--registry registry] [-n 1000]
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

from molserve.chem import rules
from molserve.chem.molecules import parse_smiles
from molserve.prediction.reference import CLINTOX_DRUGS, ReferenceSets, prepare
from molserve.prediction.tiers import ComputedTier, MoleculeBatch

NEW_ENDPOINTS = ["lipinski", "ghose", "veber", "egan", "muegge", "lead_likeness", "pains", "brenk",
                 "structural_alerts"]


def load_average() -> str:
    return Path("/proc/loadavg").read_text().strip()


def best_of(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        rules._alerts_of_smiles.cache_clear()
        started = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - started)
    return best


def computed_costs(smiles: list[str], repeats: int) -> dict[str, float]:
    tier = ComputedTier()
    parsed = [parse_smiles(s) for s in smiles]
    batch = MoleculeBatch([p.canonical_smiles for p in parsed], [p.mol for p in parsed])
    n = len(smiles)
    rules.alert_catalog()  # built once per process (about 20 ms), not per molecule
    parse_s = best_of(lambda: [parse_smiles(s) for s in smiles], repeats)
    figures = {"parse_and_canonicalize_us": parse_s / n * 1e6}
    for endpoint in NEW_ENDPOINTS:
        figures[f"{endpoint}_us"] = best_of(lambda e=endpoint: tier.answer(batch, e), repeats) / n * 1e6
    figures["all_new_together_us"] = best_of(
        lambda: [tier.answer(batch, e) for e in NEW_ENDPOINTS], repeats) / n * 1e6
    figures["rules_only_together_us"] = best_of(
        lambda: [tier.answer(batch, e) for e in rules.RULES], repeats) / n * 1e6
    yardstick = figures["parse_and_canonicalize_us"]
    figures["all_new_together_over_parse"] = figures["all_new_together_us"] / yardstick
    return figures


def reference_costs(registry_path: Path, smiles: list[str]) -> dict[str, float]:
    from molserve.prediction.router import Router
    from molserve.registry import Registry

    with tempfile.TemporaryDirectory() as scratch:
        # A copy, so the benchmark neither reads nor leaves stored reference values.
        root = Path(scratch) / "registry"
        shutil.copytree(registry_path, root, ignore=shutil.ignore_patterns(".references", ".staging"))
        router = Router(Registry(root))
        router.load()
        references = ReferenceSets(router.registry, router)
        references.add("bench", smiles, compute=False)
        started = time.perf_counter()
        fast = references.refresh("bench", router.fast.endpoints())
        fast_s = time.perf_counter() - started
        started = time.perf_counter()
        computed = references.refresh("bench")
        computed_s = time.perf_counter() - started
        queries = smiles[:100]
        started = time.perf_counter()
        response = router.predict_local(queries, None)
        predict_s = time.perf_counter() - started
        started = time.perf_counter()
        references.annotate_response(response, "bench")
        annotate_s = time.perf_counter() - started
        return {"reference_molecules": len(smiles), "fast_endpoints": len(fast),
                "refresh_fast_s": round(fast_s, 2),
                "refresh_fast_us_per_molecule_endpoint": fast_s / len(smiles) / max(1, len(fast)) * 1e6,
                "computed_endpoints": len(computed), "refresh_computed_s": round(computed_s, 2),
                "predict_100_all_fast_ms": predict_s * 1000, "annotate_100_all_fast_ms": annotate_s * 1000,
                "annotate_over_predict": annotate_s / predict_s}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--registry", default=None, help="also time reference percentiles")
    parser.add_argument("-n", type=int, default=None, help="molecules (default: all)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    smiles = prepare(CLINTOX_DRUGS.smiles()).smiles[: args.n]
    print(f"load average before: {load_average()}")
    figures = {"molecules": len(smiles), **computed_costs(smiles, args.repeats)}
    if args.registry:
        figures.update(reference_costs(Path(args.registry), smiles))
    print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in figures.items()},
                     indent=2))
    print(f"load average after: {load_average()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
