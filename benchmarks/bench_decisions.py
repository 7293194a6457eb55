"""Settings of the fast tier re-decided without the test set: by scaffold cross-validation inside
TDC's train_val, the test files never read.

Each setting below was first chosen by looking at TDC test scores. Here each is decided again
on out-of-fold predictions of the fast tier inside train_val alone: the tier is trained exactly
as served (`fit_and_evaluate`, nothing held out, TDC's scaffold split of train_val choosing the
recipe and rounds) and every train_val molecule is predicted by the ensemble member that never
saw it (5 scaffold folds). For each of TDC's 22 benchmark datasets and `--seeds` seeds:

- `avalon`: the recipe candidates with the Avalon-count recipe (served) against without it;
- `classifier_rate`: classifiers boosting at 0.1 (served) against 0.05;
- `platt`: Platt scaling of the members' margins fitted on the calibration molecules' out-of-fold
  margins, applied or not, scored by the expected calibration error of the other out-of-fold
  molecules (classifiers);
- `interval_set`: the 90% interval calibrated on the train side's rarest scaffold groups
  (served) against on a random fifth, scored by its coverage of the out-of-fold molecules that
  calibrated nothing (regression).

A setting is kept when the cross-validated evidence favours it on more datasets than not (its
mean out-of-fold score over the datasets as the tie-break); the outcome and every figure go to
`benchmarks/results/decisions.json` and BENCHMARKS.md ("Choices without test feedback").

Not re-decided here (the graph tier trains for hours on this machine): the CDF scaling of the
graph tier's descriptors, and the rule choosing among the fast tier, the graph tier and their
mean; BENCHMARKS.md marks the figures that depend on them.

Outcome adopted (run of 2026-12-08, seed 1, 22 datasets; BENCHMARKS.md): classifiers now boost
at 0.05, Platt scaling is applied where it helps, and intervals calibrate on a random fifth; the
Avalon recipe stays. The comparisons are named by setting ("rate_0.1" against "rate_0.05",
"ece_unscaled" against "ece_platt", the two calibration rules), so a rerun reads the same way;
the verdict's "served" side is the setting served before that run.

Rows are written one file a dataset and seed under `benchmarks/results/decisions/` as they are
computed (several runs can share the datasets); the decisions are made over every row present.

Run: .venv/bin/python -m benchmarks.bench_decisions [--datasets herg,dili] [--seeds 1]
     [--threads 1] [--decide]
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from benchmarks.bench_tdc import PUBLISHED, training_options
from molserve.data import tdc
from molserve.models import metrics as M

RESULTS = Path(__file__).resolve().parent / "results" / "decisions.json"
ROWS = RESULTS.parent / "decisions"  # one file a dataset and seed


def _oof(key: str, seed: int, threads: int, **overrides) -> dict:
    """The fast tier trained on train_val only (nothing held out), with `overrides` of
    `fit_and_evaluate`'s arguments; its out-of-fold predictions and what they were made with."""
    from molserve.models.gbm_train import fit_and_evaluate

    entry = next(e for e in tdc.CATALOG.values() if e.key == key)
    train_val, _ = tdc.load(entry.endpoint)  # the test file is never used here
    options = {"profile": "standard", **training_options(entry), **overrides}
    started = time.perf_counter()
    _, result = fit_and_evaluate(train_val, entry.endpoint, test=None, hold_out=False,
                                 split="tdc-scaffold", seed=seed, threads=threads, **options)
    result["seconds"] = time.perf_counter() - started
    result["entry"] = entry
    return result


def _score(metric: str, y: np.ndarray, p: np.ndarray) -> float:
    """Higher is better."""
    value = M.tdc_metric(metric, y, p)
    return -value if metric == "mae" else value


def _in_label_units(result: dict) -> np.ndarray:
    entry = result["entry"]
    oof = np.asarray(result["fitted_out_of_fold"], dtype=np.float64)
    if entry.task == "regression" and entry.log_target:
        return 10.0 ** oof
    return oof


def decide_recipes(key: str, seed: int, threads: int) -> dict:
    from molserve.models.gbm_train import PROFILES

    served = _oof(key, seed, threads)
    without = _oof(key, seed, threads, recipes=[r for r in PROFILES["standard"].recipes
                                                if "avalon" not in r.blocks])
    metric = served["entry"].metric
    y = np.asarray(served["fitted_labels"], dtype=np.float64)
    return {"with_avalon": _score(metric, y, _in_label_units(served)),
            "without_avalon": _score(metric, y, _in_label_units(without)),
            "chosen_recipe_with": served["recipe"].to_dict()["blocks"],
            "seconds": round(served["seconds"] + without["seconds"], 1), "served": served}


def decide_rate(key: str, seed: int, threads: int, served: dict) -> dict | None:
    from molserve.models.gbm_train import PROFILES

    if served["entry"].task != "classification":
        return None
    # Both rates named explicitly, whichever the standard profile serves.
    served_rate = PROFILES["standard"].rate("classification")
    other_rate = 0.1 if abs(served_rate - 0.05) < 1e-12 else 0.05
    PROFILES["other_rate"] = replace(PROFILES["standard"], classification_learning_rate=other_rate)
    try:
        other = _oof(key, seed, threads, profile="other_rate")
    finally:
        PROFILES.pop("other_rate", None)
    metric = served["entry"].metric
    y = np.asarray(served["fitted_labels"], dtype=np.float64)
    scores = {served_rate: _score(metric, y, _in_label_units(served)),
              other_rate: _score(metric, y, _in_label_units(other))}
    return {"rate_0.1": scores[0.1], "rate_0.05": scores[0.05], "seconds": round(other["seconds"], 1)}


def _calibration(served: dict, seed: int, rule: str) -> np.ndarray:
    """Positions (in fitted order) of the calibration molecules the rule draws."""
    from molserve.chem.molecules import parse_smiles
    from molserve.models.gbm_train import calibration_molecules

    fit_index = np.asarray(served["fit_index"])
    valid = set(np.asarray(served["valid_index"]).tolist())
    train = np.array([i for i, row in enumerate(fit_index) if row not in valid], dtype=np.int64)
    mols = [parse_smiles(s).mol for s in served["fitted_smiles"]]
    return calibration_molecules(mols, train, seed, rule=rule)


def decide_platt(served: dict, seed: int) -> dict | None:
    from molserve.models.gbm_train import fit_platt

    if served["entry"].task != "classification":
        return None
    y = np.asarray(served["fitted_labels"], dtype=np.float64)
    p = np.clip(np.asarray(served["fitted_out_of_fold"], dtype=np.float64), 1e-7, 1 - 1e-7)
    margin = np.log(p / (1 - p))
    calib = _calibration(served, seed, "rarest_scaffolds")
    rest = np.setdiff1d(np.arange(len(y)), calib)
    a, b = fit_platt(margin[calib], y[calib])
    scaled = 1 / (1 + np.exp(-(a * margin[rest] + b)))
    return {"ece_unscaled": M.expected_calibration_error(y[rest], p[rest]),
            "ece_platt": M.expected_calibration_error(y[rest], scaled), "molecules": int(len(rest))}


def decide_interval(served: dict, seed: int) -> dict | None:
    from molserve.models.gbm_train import conformal_quantile

    entry = served["entry"]
    if entry.task != "regression":
        return None
    y = np.asarray(served["fitted_labels"], dtype=np.float64)
    z = np.log10(y) if entry.log_target else y
    oof = np.asarray(served["fitted_out_of_fold"], dtype=np.float64)
    out = {}
    for rule in ("rarest_scaffolds", "random"):
        calib = _calibration(served, seed, rule)
        rest = np.setdiff1d(np.arange(len(y)), calib)
        q = conformal_quantile(np.abs(z[calib] - oof[calib]), 0.9)
        out[rule] = float(np.mean(np.abs(z[rest] - oof[rest]) <= q))
    return {"coverage_rarest_scaffolds": out["rarest_scaffolds"], "coverage_random": out["random"]}


def run(keys: list[str], seeds: list[int], threads: int, redo: bool = False) -> list[dict]:
    """Each dataset and seed's row, written to `ROWS/<dataset>-seed<N>.json` as it is computed
    (rows already there are kept unless `redo`), so several runs can share the datasets."""
    rows = []
    for seed in seeds:
        for key in keys:
            path = ROWS / f"{key}-seed{seed}.json"
            if path.exists() and not redo:
                rows.append(json.loads(path.read_text()))
                continue
            recipes = decide_recipes(key, seed, threads)
            served = recipes.pop("served")
            row = {"dataset": key, "seed": seed, "metric": served["entry"].metric, "avalon": recipes,
                   "classifier_rate": decide_rate(key, seed, threads, served),
                   "platt": decide_platt(served, seed), "interval_set": decide_interval(served, seed)}
            rows.append(row)
            ROWS.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(row, indent=1) + "\n")
            print(json.dumps(row), flush=True)
    return rows


def decide(rows: list[dict]) -> dict:
    """Each setting, kept or changed, with the count of datasets for each side."""
    def tally(pairs: list[tuple[float, float]]) -> dict:
        served_wins = sum(a > b + 1e-12 for a, b in pairs)
        other_wins = sum(b > a + 1e-12 for a, b in pairs)
        return {"datasets": len(pairs), "served_better": served_wins, "other_better": other_wins,
                "mean_served": float(np.mean([a for a, _ in pairs])) if pairs else None,
                "mean_other": float(np.mean([b for _, b in pairs])) if pairs else None}

    avalon = tally([(r["avalon"]["with_avalon"], r["avalon"]["without_avalon"]) for r in rows])
    rate = tally([(r["classifier_rate"]["rate_0.1"], r["classifier_rate"]["rate_0.05"])
                  for r in rows if r["classifier_rate"]])
    # Lower calibration error is better: negated so that "better" reads the same way.
    platt = tally([(-r["platt"]["ece_unscaled"], -r["platt"]["ece_platt"]) for r in rows if r["platt"]])
    # Coverage nearer 90% is better.
    interval = tally([(-abs(r["interval_set"]["coverage_rarest_scaffolds"] - 0.9),
                       -abs(r["interval_set"]["coverage_random"] - 0.9)) for r in rows if r["interval_set"]])

    def verdict(t: dict, served: str, other: str) -> str:
        if t["other_better"] > t["served_better"] or (
                t["other_better"] == t["served_better"] and (t["mean_other"] or 0) > (t["mean_served"] or 0)):
            return other
        return served

    return {
        "avalon": {**avalon, "keep": verdict(avalon, "with the Avalon recipe", "without the Avalon recipe")},
        "classifier_rate": {**rate, "keep": verdict(rate, "0.1", "0.05")},
        "platt": {**platt, "keep": verdict(platt, "not applied", "applied")},
        "interval_set": {**interval, "keep": verdict(interval, "rarest scaffold groups", "a random fifth")},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default=",".join(PUBLISHED))
    parser.add_argument("--seeds", default="1")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--redo", action="store_true", help="recompute rows that have a file")
    parser.add_argument("--decide", action="store_true",
                        help="only decide, over every row file present")
    args = parser.parse_args()
    if not args.decide:
        run(args.datasets.split(","), [int(s) for s in args.seeds.split(",")], args.threads, args.redo)
    rows = [json.loads(p.read_text()) for p in sorted(ROWS.glob("*-seed*.json"))]
    outcome = {"rows": rows, "decisions": decide(rows)}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(outcome, indent=1) + "\n")
    print(json.dumps(outcome["decisions"], indent=1))


if __name__ == "__main__":
    main()
