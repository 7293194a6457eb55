"""Held-out (scaffold split) metrics of every fast model next to its ridge baseline.

Run: .venv/bin/python -m benchmarks.bench_models [--registry registry]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from benchmarks.common import ensure_registry
from molserve.registry import Registry


def table(registry: Registry) -> str:
    lines = [
        "| endpoint | task | n train/valid/test | model (test) | ridge baseline (test) "
        "| 90% interval coverage | TDC metric (test file) | training s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for endpoint in registry.endpoints():
        artifact = registry.latest(endpoint, kind="gbm")
        if artifact is None:
            continue
        m = artifact.manifest
        sizes = m["split"]["sizes"]
        test, base = m["metrics"]["test"], m["metrics"]["baseline_test"]
        if m["task"] == "classification":
            model = f"ROC AUC {test['roc_auc']:.3f}, PR AUC {test['pr_auc']:.3f}"
            baseline = f"ROC AUC {base['roc_auc']:.3f}, PR AUC {base['pr_auc']:.3f}"
            coverage = "n/a"
        else:
            model = f"RMSE {test['rmse']:.3f}, R2 {test['r2']:.3f}"
            baseline = f"RMSE {base['rmse']:.3f}, R2 {base['r2']:.3f}"
            coverage = f"{test['interval_coverage']:.2f}"
        counts = f"{sizes['train']}/{sizes['valid']}/{sizes['test']}"
        tdc = m["metrics"].get("tdc")
        tdc_text = f"{tdc['metric']} {tdc['test']:.3f}" if tdc else "-"
        lines.append(f"| {endpoint} ({m['units']}) | {m['task']} | {counts} | {model} "
                     f"| {baseline} | {coverage} | {tdc_text} | {m.get('training_seconds', 0):.0f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--registry", default="registry")
    args = parser.parse_args()
    print(table(Registry(ensure_registry(Path(args.registry)))))


if __name__ == "__main__":
    main()
