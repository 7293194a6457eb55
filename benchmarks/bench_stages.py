"""Per-molecule budget of an all-endpoint prediction, stage by stage, in one process: the served
path (stacked forest, shared similarity index) next to the per-endpoint path it replaced (each
endpoint's stored trees level by level, each endpoint's own similarity index), same molecules,
same run, interleaved.

`--profile` adds each served stage's share of the served path (parse, features, stacked trees,
shared domain, answers: medians, so the shares are of a typical molecule) and the functions
that take most of the time of whole in-process predictions under cProfile (own time), so the
next bottleneck is named by measurement.

Run: .venv/bin/python -m benchmarks.bench_stages [--registry registry] [--rounds 200] [--profile]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

from safetensors.numpy import load_file

from benchmarks.bench_gateway import MOLECULES
from molserve.chem.features import featurize
from molserve.chem.molecules import largest_fragment, try_parse
from molserve.chem.similarity import SimilarityIndex
from molserve.models.trees import TreeEnsemble
from molserve.prediction.router import Router
from molserve.prediction.tiers import MoleculeBatch
from molserve.registry.store import Registry


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--registry", default="registry")
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--profile", action="store_true",
                        help="print each served stage's share and the top functions under cProfile")
    args = parser.parse_args()
    router = Router(Registry(Path(args.registry)))
    router.load()
    models = router.fast.models
    (group,) = router.fast.groups
    names = list(group.names)
    # The per-endpoint path's arrays, read from the artifacts.
    trees = {n: TreeEnsemble.load(m.artifact.file("trees.safetensors")) for n, m in models.items()}
    indexes = {n: SimilarityIndex.from_arrays(load_file(str(m.artifact.file("ad_index.safetensors"))),
                                              m.spec.n_bits) for n, m in models.items()}
    columns = {n: m.spec.columns_in(group.spec) for n, m in models.items()}

    times: dict[str, list[float]] = {}

    def timed(stage: str, fn, *args):
        started = time.perf_counter()
        result = fn(*args)
        times.setdefault(stage, []).append((time.perf_counter() - started) * 1000)
        return result

    def trees_before(x):
        return [trees[n].raw_scores(x if columns[n] is None else x[:, columns[n]]) for n in names]

    def domain_before(bits):
        return [indexes[n].nearest(bits[0]) for n in names]

    def answers(raw, found):
        for name in names:
            first, last = group.forest.output_range[name]
            models[name].answers(raw[:, first:last], *found[name])

    def tier(parsed):
        batch = MoleculeBatch([parsed.canonical_smiles], [parsed.mol])
        return [router.fast.answer(batch, n) for n in names]

    for i in range(args.rounds):
        text = MOLECULES[i % len(MOLECULES)]
        parsed = timed("parse and canonical SMILES", try_parse, text)
        features = timed("features (union of the specs)", featurize, [largest_fragment(parsed.mol)],
                         group.spec)
        x, bits = features.matrix, features.on_bits
        timed("trees, per endpoint (before)", trees_before, x)
        raw = timed("trees, stacked forest (now)", group.forest.raw_scores, x)
        timed("domain, per endpoint (before)", domain_before, bits)
        found = timed("domain, shared index (now)", group.domain.nearest, bits, names)
        timed("answers (now)", answers, raw, found)
        timed("fast tier as the router calls it, endpoint by endpoint (now)", tier, parsed)
        timed("whole in-process prediction (now)", router.predict_local, [text], None)
    print(json.dumps({
        "endpoints": len(names), "trees": group.forest.n_trees, "splits": len(group.forest.feature),
        "distinct_training_molecules": group.domain.index.size,
        "stack_mb": round((group.forest.nbytes + group.domain.nbytes) / 1e6, 1),
        "median_ms": {stage: round(statistics.median(v), 3) for stage, v in times.items()},
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }, indent=2))
    if args.profile:
        profile(router, times, args.rounds)


SERVED_STAGES = ("parse and canonical SMILES", "features (union of the specs)",
                 "trees, stacked forest (now)", "domain, shared index (now)", "answers (now)")


def profile(router: Router, times: dict[str, list[float]], rounds: int) -> None:
    """Each served stage's share of their sum (medians), then cProfile's top functions by own
    time over `rounds` whole in-process predictions."""
    import cProfile
    import io
    import pstats

    medians = {stage: statistics.median(times[stage]) for stage in SERVED_STAGES}
    total = sum(medians.values())
    print(f"\nserved path, one molecule, every endpoint: {total:.3f} ms (sum of stage medians)")
    for stage, ms in sorted(medians.items(), key=lambda item: -item[1]):
        print(f"  {100 * ms / total:5.1f}%  {ms:7.3f} ms  {stage}")
    whole = statistics.median(times["whole in-process prediction (now)"])
    print(f"  whole in-process prediction: {whole:.3f} ms; outside the stages above: "
          f"{max(whole - total, 0.0):.3f} ms")
    profiler = cProfile.Profile()
    profiler.enable()
    for i in range(rounds):
        router.predict_local([MOLECULES[i % len(MOLECULES)]], None)
    profiler.disable()
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(15)
    print("\ntop functions by own time (cProfile, whole in-process predictions):")
    print("\n".join(line for line in out.getvalue().splitlines() if line.strip())[:6000])


if __name__ == "__main__":
    main()
