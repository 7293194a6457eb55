"""The foundation tier on TDC's ADMET benchmark group, TDC's protocol, beside the fast tier, and
the router's choice among them made out of fold.

For each dataset and seed (1-5): the fast tier is trained exactly as `molserve bootstrap` trains
it (`fit_and_evaluate` on train_val with TDC's scaffold split of that seed, which picks its
recipe and rounds; an ensemble over scaffold folds of train_val). On the same molecules, split
and folds the foundation tier's heads are fitted (`molserve.models.foundation.pipeline`): every
head kind gets out-of-fold predictions over the fast model's folds, the best kind by the
dataset's metric is kept, and the fast + foundation blend's weight is fitted on the two tiers'
out-of-fold predictions (its own out-of-fold score cross-fitted). The router's choice among fast,
foundation and blend is the best out-of-fold score. TDC's fixed test set is predicted last and
scored with the leaderboard's metric; it chooses nothing.

Unreadable test rows (and any MiniMol cannot embed) get the training median (regression) or the
positive rate, as the fast tier does. Per-seed results are written as JSON under
`benchmarks/results/foundation_tdc/` (committed: the tables in BENCHMARKS.md are built from them,
`--table`). Embeddings go to one store (`--store`), so a molecule is embedded once for every
dataset and seed.

Caveat: MiniMol's pretraining corpus includes PCBA-1328 (large PubChem screens); the CYP
inhibition, Tox21, hERG and solubility figures of the foundation tier (and of any choice that
uses it) may profit from assays seen in pretraining. The table marks them.

Run: .venv/bin/python -m benchmarks.bench_foundation_tdc [--datasets herg,caco2_wang]
     [--seeds 1,2,3,4,5] [--heads trees,trees+fast,mlp] [--table]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

from benchmarks.bench_tdc import PUBLISHED, training_options
from molserve.data import tdc
from molserve.models import metrics as M
from molserve.models import stacking

RESULTS = Path(__file__).resolve().parent / "results" / "foundation_tdc"
STORE = Path(__file__).resolve().parent / "out" / "embeddings"
# Endpoints whose assays MiniMol's pretraining (PCBA-1328) likely includes.
NOT_LEAKAGE_FREE = {"cyp2c9_veith", "cyp2d6_veith", "cyp3a4_veith", "herg", "solubility_aqsoldb"}
CHOICES = ("fast", "foundation", "fast+foundation")


def _tdc(metric: str, y: np.ndarray, p: np.ndarray) -> float:
    return round(M.tdc_metric(metric, y, p), 3)


def run_seed(key: str, seed: int, embedder, heads: tuple[str, ...], threads: int) -> dict:
    from molserve.chem.features import featurize
    from molserve.chem.molecules import parse_smiles
    from molserve.models.foundation.heads import TreeOptions
    from molserve.models.foundation.pipeline import FoldedData, FoundationOptions, fit_foundation
    from molserve.models.gbm_runtime import TargetTransform
    from molserve.models.gbm_train import calibration_molecules, fit_and_evaluate

    entry = next(e for e in tdc.CATALOG.values() if e.key == key)
    data, test = tdc.load(entry.endpoint)
    options = training_options(entry)
    started = time.perf_counter()
    _, fast = fit_and_evaluate(data, entry.endpoint, test=test, split="tdc-scaffold", seed=seed,
                               profile="standard", threads=threads, **options)
    fast_seconds = time.perf_counter() - started
    fit_index = np.asarray(fast["fit_index"])
    valid_positions = np.searchsorted(fit_index, np.sort(np.asarray(fast["valid_index"])))
    n_fit = len(fit_index)
    is_valid = np.zeros(n_fit, dtype=bool)
    is_valid[valid_positions] = True
    train_positions = np.flatnonzero(~is_valid)
    test_keys = fast["test_keys"]
    readable = [i for i, k in enumerate(test_keys) if k]
    y_test_all = np.asarray(test.labels, dtype=np.float64)
    smiles = list(fast["fitted_smiles"]) + [test_keys[i] for i in readable]
    y = np.concatenate([np.asarray(fast["fitted_labels"], dtype=np.float64), y_test_all[readable]])
    folds_of = np.asarray(fast["fitted_folds"])
    folds = [np.flatnonzero(folds_of == k) for k in range(int(folds_of.max()) + 1)]
    mols = [parse_smiles(s).mol for s in smiles]
    calib = calibration_molecules(mols[:n_fit], train_positions, seed)
    transform = options.get("target_transform") or TargetTransform()
    oof = np.full(len(smiles), np.nan)
    oof[:n_fit] = fast["fitted_out_of_fold"]
    folded = FoldedData(smiles, y, entry.task, transform, train_positions, valid_positions,
                        np.arange(n_fit, len(smiles)), folds, calib, entry.metric, oof)
    computed_before, seconds_before = embedder.computed, embedder.seconds
    embeddings, errors = embedder.embed(smiles)
    embedder.flush()
    embedded = embedder.computed - computed_before
    fast_features = featurize(mols, fast["spec"]).matrix if "trees+fast" in heads else None
    fast_test_all = np.asarray(fast["test_predictions"], dtype=np.float64)
    fast_test = fast_test_all[readable]
    fast_test_model = transform.forward(fast_test) if entry.task == "regression" else fast_test
    unembedded = np.array([e is not None for e in errors])
    if unembedded[:n_fit].any():  # not fitted on (none in TDC's sets so far)
        keep = ~unembedded
        folded.train = train_positions[keep[train_positions]]
        folded.valid = valid_positions[keep[valid_positions]]
        folded.folds = [f[keep[f]] for f in folds]
        folded.calibration = calib[keep[calib]]
    options_f = FoundationOptions(kinds=heads, trees=TreeOptions(threads=threads), seed=seed)
    result = fit_foundation(folded, embeddings, fast_features, options_f, fast_test=fast_test_model)
    # Test predictions on every row of TDC's test file (the fast tier's fallback elsewhere).
    fit_y = np.asarray(fast["fitted_labels"], dtype=np.float64)
    fallback = float(np.median(fit_y)) if entry.task == "regression" else float(np.mean(fit_y))
    usable = folded.test[np.all(np.isfinite(embeddings[folded.test]), axis=1)]
    where = np.array(readable)[usable - n_fit]  # rows of the test file
    foundation_mean = result.test_members.mean(axis=0)
    foundation_full = np.full(len(test_keys), fallback)
    foundation_full[where] = folded.to_label(foundation_mean)
    blend_full = fast_test_all.copy()
    weight = (result.blend or {}).get("weight")
    if weight is not None:
        fast_usable = fast_test_model[usable - n_fit]
        blend_full[where] = folded.to_label(stacking.mix(fast_usable, foundation_mean, weight))
    metric = entry.metric
    scores = {"fast": _tdc(metric, y_test_all, fast_test_all),
              "foundation": _tdc(metric, y_test_all, foundation_full),
              "fast+foundation": _tdc(metric, y_test_all, blend_full)}
    cv = result.cv
    chosen = stacking.best_choice(metric, {c: cv.get(c) for c in CHOICES}) or "fast"
    scores["router"] = scores[chosen]
    return {
        "dataset": key, "seed": seed, "metric": metric, **scores, "chose": chosen,
        "cv": {c: cv.get(c) for c in CHOICES}, "blend_weight": weight,
        "head": result.head.kind,
        "heads": {k: {"score": round(v["score"], 4), "rounds": v["rounds"], "seconds": v["seconds"]}
                  for k, v in result.candidates.items()},
        "interval_coverage_90": {"foundation": result.test_metrics.get("interval_coverage"),
                                 "fast+foundation": ((result.blend or {}).get("test") or {})
                                 .get("interval_coverage")},
        "molecules": {"train": int(len(train_positions)), "valid": int(len(valid_positions)),
                      "test_rows": len(test_keys), "test_scored_by_foundation": int(len(usable)),
                      "not_embedded": int(unembedded.sum())},
        "seconds": {"fast": round(fast_seconds, 1), "foundation_heads": round(result.seconds, 1),
                    "embedding": round(embedder.seconds - seconds_before, 1),
                    "embedded_molecules": int(embedded)},
        "threads": threads, "load": [round(x, 2) for x in os.getloadavg()],
    }


def summarize(rows: list[dict]) -> dict:
    out = {"dataset": rows[0]["dataset"], "metric": rows[0]["metric"], "seeds": [r["seed"] for r in rows]}
    for name in (*CHOICES, "router"):
        values = [r[name] for r in rows]
        out[name] = {"mean": round(float(np.mean(values)), 3), "std": round(float(np.std(values)), 3)}
    out["chose"] = [r["chose"] for r in rows]
    out["heads"] = [r["head"] for r in rows]
    return out


def _better(metric: str, ours: float, theirs: float) -> bool:
    return ours < theirs if metric == "mae" else ours > theirs


def _within(metric: str, ours: float, best: float, tolerance: float = 0.02) -> bool:
    return ours <= best * (1 + tolerance) if metric == "mae" else ours >= best * (1 - tolerance)


def table(results: Path = RESULTS) -> str:
    """The BENCHMARKS.md table, from the committed per-seed JSON files."""
    lines = ["| dataset (metric) | seeds | fast | foundation | fast+foundation | router (out of fold) "
             "| chose | best without flagged | Chemprop-RDKit | router beats C-R | router within 2% |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    beats = within = count = 0
    for key in PUBLISHED:
        files = sorted((results / key).glob("seed*.json"))
        if not files:
            continue
        rows = [json.loads(f.read_text()) for f in files]
        s = summarize(rows)
        best, name, chemprop = PUBLISHED[key]
        won = _better(s["metric"], s["router"]["mean"], chemprop)
        close = _within(s["metric"], s["router"]["mean"], best)
        beats, within, count = beats + won, within + close, count + 1
        flag = " (*)" if key in NOT_LEAKAGE_FREE else ""
        chose = ", ".join(f"{c} {s['chose'].count(c)}" for c in CHOICES if c in s["chose"])

        def cell(n: str, s: dict = s) -> str:
            return f"{s[n]['mean']:.3f} ± {s[n]['std']:.3f}"

        lines.append(f"| {key}{flag} ({s['metric']}) | {len(rows)} | {cell('fast')} | {cell('foundation')} "
                     f"| {cell('fast+foundation')} | {cell('router')} | {chose} | {best:.3f} ({name}) "
                     f"| {chemprop:.3f} | {'yes' if won else 'no'} | {'yes' if close else 'no'} |")
    lines.append(f"\nRouter (out-of-fold choice): beats Chemprop-RDKit on {beats} of {count}; within 2% "
                 f"(relative) of the best entry without flagged entries on {within} of {count}. "
                 "(*) foundation-tier figures not leakage-free (assays in MiniMol's pretraining).")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default=",".join(PUBLISHED))
    parser.add_argument("--seeds", default="1,2,3,4,5")
    parser.add_argument("--heads", default="trees,trees+fast,mlp")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--store", default=str(STORE))
    parser.add_argument("--redo", action="store_true", help="rerun seeds that have a result file")
    parser.add_argument("--table", action="store_true", help="print the table from the results")
    args = parser.parse_args()
    if args.table:
        print(table())
        return
    from molserve.models.foundation.embedding import MiniMolEmbedder

    embedder = MiniMolEmbedder(args.store, flush_rows=4096)
    heads = tuple(args.heads.split(","))
    for seed in (int(s) for s in args.seeds.split(",")):
        for key in args.datasets.split(","):
            out = RESULTS / key / f"seed{seed}.json"
            if out.exists() and not args.redo:
                continue
            # Several runs may share the work (different seeds at once): one takes each result.
            out.parent.mkdir(parents=True, exist_ok=True)
            claim = out.with_suffix(".running")
            try:
                claim.open("x").close()
            except FileExistsError:
                continue
            try:
                row = run_seed(key, seed, embedder, heads, args.threads)
                out.write_text(json.dumps(row, indent=1) + "\n")
            finally:
                claim.unlink(missing_ok=True)
            print(json.dumps({k: row[k] for k in ("dataset", "seed", *CHOICES, "router", "chose", "head")}),
                  flush=True)


if __name__ == "__main__":
    main()
