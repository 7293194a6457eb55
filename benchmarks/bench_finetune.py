"""Fine-tuning quality on the bundled endpoints, on the same scaffold split as the fast tier:
a RoBERTa pretrained here with `molserve pretrain` on MOSES, against the same architecture from
random weights, against the fast tier.

Both arms get the same treatment: every learning rate in --learning-rates is tried, and the one
with the better validation score is kept (the test split decides nothing).

Run: .venv/bin/python -m benchmarks.bench_finetune [--registry registry] [--pretrain-minutes 25]
     [--reuse-base DIR] [--learning-rates 1e-4,3e-4]
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

from benchmarks.common import ensure_registry

ENDPOINTS = ["solubility", "logbb", "hydration_free_energy", "pic50_chembl2321810"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--registry", default="registry")
    parser.add_argument("--size", default="small")
    parser.add_argument("--pretrain-minutes", type=float, default=25)
    parser.add_argument("--corpus-limit", type=int, default=300_000)
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--endpoints", default=",".join(ENDPOINTS))
    parser.add_argument("--keep-base", help="directory to keep the pretrained model in")
    parser.add_argument("--reuse-base", help="a model already pretrained by `molserve pretrain`")
    parser.add_argument("--patience", type=int, default=6)
    parser.add_argument("--learning-rates", default="1e-4,3e-4",
                        help="tried for both arms; the better on validation is kept")
    args = parser.parse_args()
    source = ensure_registry(Path(args.registry))

    from molserve.models.transformer.corpus import read_corpus
    from molserve.models.transformer.modeling import pretrain
    from molserve.models.transformer.pipeline import finetune_endpoint
    from molserve.registry import Registry

    with tempfile.TemporaryDirectory() as tmp:
        if args.reuse_base:
            base = Path(args.reuse_base)
            summary = json.loads((base / "pretraining.json").read_text())
        else:
            base = Path(args.keep_base) if args.keep_base else Path(tmp) / "base"
            corpus = read_corpus("moses", limit=args.corpus_limit, seed=0)
            summary = pretrain(corpus, base, size=args.size, batch_size=64, learning_rate=5e-4,
                               max_length=128, epochs=1, max_seconds=args.pretrain_minutes * 60,
                               progress=lambda s, f, d: None)
        print(json.dumps({"pretraining": summary}), flush=True)
        rows = []
        for endpoint in args.endpoints.split(","):
            registry = Registry(Path(tmp) / f"reg-{endpoint}")
            shutil.copytree(source / endpoint, registry.root / endpoint)
            results = {"endpoint": endpoint}
            for label, start in (("pretrained", str(base)), ("random_init", f"random:{args.size}")):
                tried = []
                for rate in [float(x) for x in args.learning_rates.split(",")]:
                    artifact = finetune_endpoint(registry, endpoint, base=start, epochs=args.epochs,
                                                 learning_rate=rate, patience=args.patience,
                                                 export=False, batch_size=32)
                    tried.append((artifact.manifest["metrics"]["valid"]["rmse"], rate, artifact))
                valid_rmse, rate, artifact = min(tried, key=lambda t: t[0])
                results[label] = artifact.manifest["metrics"]["test"]
                results["fast_tier"] = artifact.manifest["metrics"]["fast_model_test"]
                results[f"{label}_learning_rate"] = rate
                results[f"{label}_valid_rmse_by_rate"] = {r: round(v, 4) for v, r, _ in tried}
                results[f"{label}_epochs"] = artifact.manifest["model"]["epochs_run"]
                results[f"{label}_seconds"] = sum(a.manifest["model"]["seconds"] for _, _, a in tried)
            print(json.dumps(results), flush=True)
            rows.append(results)
    print("| endpoint | fast tier RMSE | transformer, pretrained on MOSES | transformer, random init |")
    print("|---|---|---|---|")
    for r in rows:
        print(f"| {r['endpoint']} | {r['fast_tier']['rmse']:.3f} | {r['pretrained']['rmse']:.3f} "
              f"(lr {r['pretrained_learning_rate']:g}) | {r['random_init']['rmse']:.3f} "
              f"(lr {r['random_init_learning_rate']:g}) |")


if __name__ == "__main__":
    main()
