"""Multi-task against single-task fine-tuning, on B3DB's two tables: logBB (regression, about
1,000 molecules) and BBB permeability (classification, about 7,800), which share molecules.

Every arm starts from the same base with the same learning rate, batch size, epoch budget and
early stopping, and each endpoint is tested on its own fast model's scaffold test split.

Run: .venv/bin/python -m benchmarks.bench_multitask --base DIR [--registry registry]
(DIR from `molserve pretrain`, or random:small)
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

from benchmarks.common import ensure_registry

ENDPOINTS = ["logbb", "bbb_penetration"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--registry", default="registry")
    parser.add_argument("--base", default="random:small")
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--patience", type=int, default=3)
    parser.add_argument("--learning-rate", type=float, default=1e-4)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()
    source = ensure_registry(Path(args.registry), only=ENDPOINTS)

    from molserve.models.transformer.pipeline import finetune_endpoints
    from molserve.models.transformer.runtime import endpoint_manifest
    from molserve.registry import Registry

    settings = dict(base=args.base, epochs=args.epochs, patience=args.patience,
                    learning_rate=args.learning_rate, batch_size=args.batch_size, export=False)
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        registry = Registry(Path(tmp) / "registry")
        for endpoint in ENDPOINTS:
            shutil.copytree(source / endpoint, registry.root / endpoint)
        arms = [(f"single:{e}", [e], None) for e in ENDPOINTS] + [("multitask", ENDPOINTS, "b3db")]
        for label, endpoints, name in arms:
            artifact = finetune_endpoints(registry, endpoints, name=name, **settings)
            model = artifact.manifest["model"]
            for endpoint in endpoints:
                manifest = endpoint_manifest(artifact, endpoint)
                results.setdefault(endpoint, {"fast_tier": manifest["metrics"]["fast_model_test"]})
                results[endpoint][label.split(":")[0]] = {
                    "test": manifest["metrics"]["test"], "epochs": model["epochs_run"],
                    "seconds": model["seconds"]}
            # The multi-task hold-out: molecules left out of training because they share a
            # scaffold with another task's validation or test molecule.
            print(json.dumps({"arm": label, "epochs": model["epochs_run"], "seconds": model["seconds"],
                              "rows": artifact.manifest.get("rows")}), flush=True)
    print(json.dumps({"settings": {k: v for k, v in settings.items() if k != "export"},
                      "results": results}), flush=True)
    print("| endpoint | metric | fast tier | transformer, single-task | transformer, multi-task |")
    print("|---|---|---|---|---|")
    for endpoint, r in results.items():
        metric = "rmse" if "rmse" in r["fast_tier"] else "roc_auc"
        print(f"| {endpoint} | {metric} | {r['fast_tier'][metric]:.3f} | "
              f"{r['single']['test'][metric]:.3f} | {r['multitask']['test'][metric]:.3f} |")


if __name__ == "__main__":
    main()
