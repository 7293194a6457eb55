"""The fast tier on TDC's ADMET benchmark group, with TDC's protocol, beside the public figures.

Protocol (TDC's own, `admet_group`): for seeds 1-5, split train_val by scaffold with that seed
(87.5/12.5, TDC's `create_scaffold_split`, reproduced in `molserve.data.splits`), select and train
on it exactly as `molserve bootstrap` does (the same function), predict TDC's fixed test set and
score every row with the leaderboard's metric; report mean and standard deviation (ddof 0) of
the five scores rounded to three decimals, as TDC's `evaluate_many`. Nothing is chosen on the
test set. Each model is trained on its own dataset's train_val only.

`--extra` scores the 18 further datasets two ways: the served model's own recorded scaffold split
(80/10/10, seed 0), and five random 80/10/10 splits (seeds 0-4), the protocol of ADMET-AI's
published figures for these datasets (Chemprop-RDKit, random splits), shown beside them.

Seeds train two at a time, each in its own process on one thread, like `molserve bootstrap`, so
the seed-1 model of a benchmark dataset is, bit for bit, the model `molserve bootstrap` serves.

Each run also records the calibration of what it serves: for regression, the share of test
molecules inside the conformal interval at 80, 90 and 95% (and, on the same models, under the
previous rule that calibrated on every fitted molecule's out-of-fold residual, the molecules that
chose the recipe and rounds included); for classifiers, the expected calibration error on test
with and without the probability calibration. `--calibration-table` prints those tables from a
stored run.

Run: .venv/bin/python -m benchmarks.bench_tdc [--datasets a,b] [--seeds 1,2,3,4,5] [--extra]
     [--workers 2] [--out benchmarks/out/tdc.json] [--regression-first]
     .venv/bin/python -m benchmarks.bench_tdc --calibration-table benchmarks/out/tdc.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from molserve.chem.features import featurize
from molserve.data import tdc
from molserve.data.splits import random_split
from molserve.models import metrics as M
from molserve.models.gbm_train import fit_and_evaluate

# The best leaderboard entry without entries flagged for leakage (the "best without flagged
# entries" column of TDC's leaderboard, re-verified 2026-12-07; paper-only figures counted where
# they are better) and Chemprop-RDKit (the model family behind ADMET-AI v1), mean over 5 seeds;
# higher is better except MAE.
PUBLISHED = {
    "caco2_wang": (0.256, "CaliciBoost", 0.330),
    "hia_hou": (0.990, "DeepMol", 0.981),
    "pgp_broccatelli": (0.938, "MapLight+GNN", 0.886),
    "bioavailability_ma": (0.753, "DeepMol", 0.667),
    "lipophilicity_astrazeneca": (0.406, "MolE", 0.467),
    "solubility_aqsoldb": (0.714, "KPGT", 0.761),
    "bbb_martins": (0.920, "CFA", 0.869),
    "ppbr_az": (7.229, "MolE", 8.288),
    "vdss_lombardo": (0.713, "MapLight+GNN", 0.389),
    "cyp2c9_veith": (0.859, "MapLight+GNN", 0.777),
    "cyp2d6_veith": (0.790, "MapLight+GNN", 0.673),
    "cyp3a4_veith": (0.916, "MapLight+GNN", 0.876),
    "cyp2c9_substrate_carbonmangels": (0.450, "KPGT", 0.400),
    "cyp2d6_substrate_carbonmangels": (0.739, "ChemFM", 0.686),
    "cyp3a4_substrate_carbonmangels": (0.692, "MolE", 0.619),
    "half_life_obach": (0.578, "MolE", 0.239),
    "clearance_hepatocyte_az": (0.536, "CFA", 0.430),
    "clearance_microsome_az": (0.637, "KPGT", 0.599),
    "ld50_zhu": (0.541, "ChemFM", 0.625),
    "herg": (0.880, "MapLight+GNN", 0.840),
    "ames": (0.871, "ZairaChem", 0.850),
    "dili": (0.929, "KPGT", 0.887),
}
# ADMET-AI v1 (Chemprop-RDKit, multi-task) on random 80/10/10 splits, seeds 0-4: mean AUROC and
# AUPRC as published in its admet.csv (no standard deviations are published there).
ADMET_AI = {
    "cyp1a2_veith": (0.942, 0.935), "cyp2c19_veith": (0.907, 0.882), "clintox": (0.870, 0.425),
    "carcinogens_lagunin": (0.840, 0.728), "skin_reaction": (0.817, 0.867),
    "tox21:NR-AR": (0.821, 0.621), "tox21:NR-AR-LBD": (0.899, 0.712),
    "tox21:NR-AhR": (0.888, 0.629), "tox21:NR-Aromatase": (0.874, 0.454),
    "tox21:NR-ER": (0.715, 0.452), "tox21:NR-ER-LBD": (0.815, 0.469),
    "tox21:NR-PPAR-gamma": (0.884, 0.373), "tox21:SR-ARE": (0.838, 0.548),
    "tox21:SR-ATAD5": (0.879, 0.325), "tox21:SR-HSE": (0.852, 0.380),
    "tox21:SR-MMP": (0.925, 0.745), "tox21:SR-p53": (0.879, 0.409),
}


def training_options(entry: tdc.TdcEndpoint) -> dict:
    """What `molserve bootstrap` passes for this dataset, but the split and seed."""
    from molserve.operations.bootstrap import bundled_endpoints, training_options

    options = training_options(bundled_endpoints()[entry.endpoint])
    return {k: v for k, v in options.items() if k not in ("split", "seed")}


def prediction_cost_us(result: dict, smiles: list[str], repeats: int = 1) -> dict[str, float]:
    """Per-molecule cost of the served path for this model: features, then trees (one core)."""
    from molserve.chem.molecules import largest_fragment, parse_smiles

    mols = [largest_fragment(parse_smiles(s).mol) for s in smiles[:500]]
    started = time.perf_counter()
    for _ in range(repeats):
        batch = featurize(mols, result["spec"])
    featurized = time.perf_counter()
    for _ in range(repeats):
        result["ensemble"].raw_scores(batch.matrix)
    done = time.perf_counter()
    n = len(mols) * repeats
    return {"features_us": (featurized - started) / n * 1e6, "trees_us": (done - featurized) / n * 1e6}


def _fit(endpoint: str, seed: int | None, profile: str, split_labels: list[str] | None = None) -> dict:
    """One model as `molserve bootstrap` trains it (one thread), in a worker process."""
    entry = tdc.CATALOG[endpoint]
    data, test = tdc.load(endpoint)
    if entry.benchmark:
        options = {"test": test, "split": "tdc-scaffold", "seed": seed, **training_options(entry)}
    elif seed is None:  # the served model's own split
        options = {"split": "scaffold", "seed": 0}
    else:
        options = {"split": "random", "seed": seed, "split_labels": split_labels}
    _, result = fit_and_evaluate(data, endpoint, profile=profile, threads=1, **options)
    return result


def _fit_seeds(endpoint: str, seeds: list, profile: str, workers: int,
               labels: dict | None = None) -> list[tuple[int, dict]]:
    """Every seed's model, `workers` at a time, each in its own process on one thread (LightGBM
    is not safe to train from several threads of one process)."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        futures = [pool.submit(_fit, endpoint, seed, profile, (labels or {}).get(seed))
                   for seed in seeds]
        return [(seed, future.result()) for seed, future in zip(seeds, futures, strict=True)]


def run_benchmark_dataset(entry: tdc.TdcEndpoint, seeds: list[int], profile: str = "standard",
                          workers: int = 2) -> dict:
    """TDC's protocol on one benchmark dataset: one score per seed, rounded as TDC rounds."""
    train_val, test = tdc.load(entry.endpoint)
    scores, seconds, runs = [], [], []
    for seed, result in _fit_seeds(entry.endpoint, seeds, profile, workers):
        prediction = result["test_predictions"]  # every row; unreadable ones as the fallback
        score = round(M.tdc_metric(entry.metric, np.asarray(test.labels), prediction), 3)
        unreadable = result["metrics"]["tdc"]["unreadable_rows"]
        scores.append(score)
        seconds.append(result["seconds"])
        fitted = set(result["fitted_smiles"])
        runs.append({
            "seed": seed, "score": score, "seconds": round(result["seconds"], 1),
            "recipe": result["recipe"].to_dict(), "rounds": result["rounds"],
            # TDC's files share no SMILES; after salts are stripped a test molecule can still
            # be a training molecule's parent structure. Counted, not removed (TDC scores all rows).
            "test_rows_whose_parent_is_in_training": sum(1 for k in result["test_keys"] if k in fitted),
            "test_rows_rdkit_cannot_read": unreadable,
            **calibration_of(result),
        })
    cost = prediction_cost_us(result, test.smiles)
    return {
        "dataset": entry.key, "endpoint": entry.endpoint, "metric": entry.metric,
        "mean": round(float(np.mean(scores)), 3), "std": round(float(np.std(scores)), 3),
        "scores": scores, "train_seconds_mean": round(float(np.mean(seconds)), 1),
        "train_val_rows": len(train_val), "test_rows": len(test), "runs": runs, **cost,
    }


LEVELS = ("0.8", "0.9", "0.95")


def calibration_of(result: dict) -> dict:
    """What one run says about the calibration of its intervals or probabilities on test."""
    test = result["metrics"]["test"]
    if "interval_coverage_by_level" in test:
        return {"coverage": test["interval_coverage_by_level"],
                "coverage_previous_rule": result.get("coverage_previous_rule"),
                "coverage_variants": result.get("coverage_variants"),
                "interval_mean_width_90": test["interval_mean_width"]}
    if "ece" in test:
        return {"ece": test["ece"], "ece_uncalibrated": test.get("ece_uncalibrated"),
                "reliability": test.get("reliability"), "platt_applied": result.get("platt_applied")}
    return {}


def calibration_tables(rows: list[dict]) -> str:
    """Per-endpoint coverage (mean and lowest over seeds) at each level, now and under the
    previous rule; classifiers' expected calibration error with and without calibration."""
    lines = ["| dataset | seeds | 80%: now / previous rule | 90%: now / previous rule "
             "| 95%: now / previous rule | lowest seed at 90%: now / previous |",
             "|---|---|---|---|---|---|"]
    means: dict[str, list[float]] = {"now": [], "previous": []}
    for row in rows:
        runs = [r for r in row["runs"] if "coverage" in r]
        if not runs:
            continue
        cells = []
        for level in LEVELS:
            now = np.mean([r["coverage"][level] for r in runs])
            old = np.mean([r["coverage_previous_rule"][level] for r in runs])
            cells.append(f"{now:.3f} / {old:.3f}")
        now90 = [r["coverage"]["0.9"] for r in runs]
        old90 = [r["coverage_previous_rule"]["0.9"] for r in runs]
        means["now"].append(float(np.mean(now90)))
        means["previous"].append(float(np.mean(old90)))
        lines.append(f"| {row['dataset']} | {len(runs)} | " + " | ".join(cells)
                     + f" | {min(now90):.3f} / {min(old90):.3f} |")
    if means["now"]:
        lines.append(f"\nMean coverage at 90% over {len(means['now'])} regression datasets: "
                     f"{np.mean(means['now']):.3f} now, {np.mean(means['previous']):.3f} under the "
                     f"previous rule; lowest dataset mean {min(means['now']):.3f} now, "
                     f"{min(means['previous']):.3f} previous.")
    lines += ["", "| dataset | seeds | ECE on test: served (calibrated where it helped) | ECE uncalibrated "
              "| runs where Platt scaling was applied |", "|---|---|---|---|---|"]
    for row in rows:
        runs = [r for r in row["runs"] if "ece" in r]
        if not runs:
            continue
        lines.append(f"| {row['dataset']} | {len(runs)} | {np.mean([r['ece'] for r in runs]):.3f} "
                     f"| {np.mean([r['ece_uncalibrated'] for r in runs]):.3f} "
                     f"| {sum(r.get('platt_applied', False) for r in runs)} |")
    return "\n".join(lines)


def _classification_scores(y: np.ndarray, p: np.ndarray) -> dict[str, float]:
    return {"roc_auc": M.roc_auc(y, p), "pr_auc": M.average_precision(y, p)}


def run_extra_dataset(entry: tdc.TdcEndpoint, seeds: list[int], profile: str = "standard",
                      workers: int = 2) -> dict:
    """The served model's recorded scaffold split, and ADMET-AI's protocol (random 80/10/10)."""
    from molserve.data.curation import curate

    data, _ = tdc.load(entry.endpoint)
    curated = curate(data)
    labels = {}
    for seed in seeds:
        parts = random_split(len(curated.canonical_smiles), (0.8, 0.1, 0.1), seed=seed)
        side_of = {row: side for side, indices in parts.items()
                   for i in indices for row in curated.rows[i]}
        labels[seed] = [side_of.get(i, "train") for i in range(len(data))]
    results = dict(_fit_seeds(entry.endpoint, [None, *seeds], profile, workers, labels))
    test = results[None]["metrics"]["test"]
    random_runs = [{"seed": seed, "roc_auc": results[seed]["metrics"]["test"]["roc_auc"],
                    "pr_auc": results[seed]["metrics"]["test"]["pr_auc"]} for seed in seeds]
    roc = [r["roc_auc"] for r in random_runs]
    prc = [r["pr_auc"] for r in random_runs]
    return {
        "dataset": entry.key, "endpoint": entry.endpoint, "rows": len(data),
        "scaffold_seed0": {"roc_auc": test["roc_auc"], "pr_auc": test["pr_auc"], "n_test": test["n"]},
        "random": {"roc_auc_mean": float(np.mean(roc)), "roc_auc_std": float(np.std(roc)),
                   "pr_auc_mean": float(np.mean(prc)), "pr_auc_std": float(np.std(prc)),
                   "runs": random_runs},
        "admet_ai_random": ADMET_AI.get(entry.key),
    }


def _better(metric: str, ours: float, theirs: float) -> bool:
    return ours < theirs if metric == "mae" else ours > theirs


def _within(metric: str, ours: float, best: float, tolerance: float = 0.02) -> bool:
    return ours <= best * (1 + tolerance) if metric == "mae" else ours >= best * (1 - tolerance)


def benchmark_table(rows: list[dict]) -> str:
    lines = ["| dataset (metric) | molserve fast tier | best known | Chemprop-RDKit | beats Chemprop-RDKit "
             "| within 2% of best | train s/seed | features / trees us per molecule |",
             "|---|---|---|---|---|---|---|---|"]
    beats = within = with_chemprop = 0
    for row in rows:
        best, method, chemprop = PUBLISHED[row["dataset"]]
        won = chemprop is not None and _better(row["metric"], row["mean"], chemprop)
        close = _within(row["metric"], row["mean"], best)
        beats += won
        within += close
        with_chemprop += chemprop is not None
        lines.append(
            f"| {row['dataset']} ({row['metric']}) | {row['mean']:.3f} ± {row['std']:.3f} "
            f"| {best:.3f} ({method}) | {'-' if chemprop is None else f'{chemprop:.3f}'} "
            f"| {'yes' if won else ('-' if chemprop is None else 'no')} | {'yes' if close else 'no'} "
            f"| {row['train_seconds_mean']:.0f} | {row['features_us']:.0f} / {row['trees_us']:.0f} |")
    lines.append(f"\nBeats Chemprop-RDKit on {beats} of {with_chemprop}; within 2% (relative) of the "
                 f"best known entry on {within} of {len(rows)}.")
    return "\n".join(lines)


def extra_table(rows: list[dict]) -> str:
    lines = ["| dataset | rows | served model, scaffold split (seed 0): AUROC / AUPRC | random 80/10/10 x5: "
             "AUROC / AUPRC (mean ± sd) | ADMET-AI v1, random 80/10/10 x5: AUROC / AUPRC |",
             "|---|---|---|---|---|"]
    for row in rows:
        s, r, a = row["scaffold_seed0"], row["random"], row["admet_ai_random"]
        published = f"{a[0]:.3f} / {a[1]:.3f}" if a else "not trained by ADMET-AI"
        lines.append(f"| {row['dataset']} | {row['rows']} | {s['roc_auc']:.3f} / {s['pr_auc']:.3f} "
                     f"| {r['roc_auc_mean']:.3f} ± {r['roc_auc_std']:.3f} / {r['pr_auc_mean']:.3f} ± "
                     f"{r['pr_auc_std']:.3f} | {published} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", help="comma-separated TDC keys (default: every one)")
    parser.add_argument("--seeds", default="1,2,3,4,5")
    parser.add_argument("--extra", action="store_true", help="the 18 datasets outside the group")
    parser.add_argument("--random-seeds", default="0,1,2,3,4")
    parser.add_argument("--profile", default="standard")
    parser.add_argument("--workers", type=int, default=2, help="seeds trained at once (one thread each)")
    parser.add_argument("--out", default="benchmarks/out/tdc.json")
    parser.add_argument("--regression-first", action="store_true",
                        help="the regression datasets before the classifiers")
    parser.add_argument("--calibration-table", help="print the calibration tables of a stored run")
    args = parser.parse_args()
    if args.calibration_table:
        print(calibration_tables(json.loads(Path(args.calibration_table).read_text())))
        return 0
    wanted = set(args.datasets.split(",")) if args.datasets else None
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    entries = list(tdc.CATALOG.values())
    if args.regression_first:
        entries.sort(key=lambda e: e.task != "regression")
    for entry in entries:
        if entry.benchmark == args.extra or (wanted and entry.key not in wanted):
            continue
        if args.extra:
            row = run_extra_dataset(entry, [int(s) for s in args.random_seeds.split(",")],
                                    args.profile, args.workers)
        else:
            row = run_benchmark_dataset(entry, [int(s) for s in args.seeds.split(",")],
                                        args.profile, args.workers)
        rows.append(row)
        print(json.dumps({k: v for k, v in row.items() if k != "runs"}), flush=True)
        out.write_text(json.dumps(rows, indent=1))
    print(extra_table(rows) if args.extra else benchmark_table(rows))
    if not args.extra:
        print(calibration_tables(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
