"""The `molserve` command: wires the library's pieces to the command line, nothing more.

Imports happen inside each verb, so `molserve serve` never loads the trainer.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path


def _settings(args: argparse.Namespace):
    from molserve.config import Settings

    overrides = {}
    if getattr(args, "registry", None):
        overrides["registry"] = Path(args.registry)
    return Settings(**overrides)


def _progress_bar(total: float = 1.0, desc: str = ""):
    from tqdm import tqdm

    bar = tqdm(total=100, desc=desc, unit="%", leave=True, file=sys.stderr,
               bar_format="{desc:<28} {percentage:3.0f}%|{bar}| {postfix}")

    def update(step: str, fraction: float) -> None:
        bar.n = int(round(fraction * 100))
        bar.set_postfix_str(step)
        bar.refresh()

    return bar, update


def cmd_bootstrap(args: argparse.Namespace) -> int:
    """Train the bundled endpoints that the registry does not have yet."""
    from molserve.data.bundled import BUNDLED
    from molserve.models.gbm_train import summarize, train_endpoint
    from molserve.registry import Registry

    registry = Registry(_settings(args).registry)
    todo = [n for n in BUNDLED if args.force or registry.latest(n, kind="gbm") is None]
    if not todo:
        print(f"registry {registry.root} already has every bundled endpoint", file=sys.stderr)
        return 0
    print(f"training {len(todo)} bundled endpoint(s) into {registry.root}", file=sys.stderr)
    for name in todo:
        bar, update = _progress_bar(desc=name)
        artifact = train_endpoint(BUNDLED[name](), registry, name, profile=args.profile,
                                  progress=update)
        bar.close()
        print(summarize(artifact), file=sys.stderr)
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from molserve.data.dataset import load_table
    from molserve.models.gbm_train import summarize, train_endpoint
    from molserve.registry import Registry
    from molserve.registry.store import validate_endpoint_name

    validate_endpoint_name(args.endpoint)
    dataset = load_table(
        args.data, smiles_col=args.smiles_col, label_col=args.label_col, task=args.task,
        name=args.endpoint, units=args.units, description=args.description or "",
        positive_label=args.positive_label,
    )
    registry = Registry(_settings(args).registry)
    bar, update = _progress_bar(desc=args.endpoint)
    artifact = train_endpoint(dataset, registry, args.endpoint, split=args.split,
                              profile=args.profile, seed=args.seed, progress=update)
    bar.close()
    print(summarize(artifact))
    print(json.dumps({"curation": artifact.manifest["curation"],
                      "valid": artifact.manifest["metrics"]["valid"]}, indent=2))
    print(f"registered {artifact.endpoint} v{artifact.version} at {artifact.path}")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from molserve.batch import predict_file

    settings = _settings(args)
    endpoints = [e for e in (args.endpoints or "").replace(",", " ").split() if e] or None
    summary = predict_file(
        Path(args.input), Path(args.output), settings=settings, endpoints=endpoints,
        smiles_col=args.smiles_col, chunk_size=args.chunk_size, jobs=args.jobs,
        progress=not args.quiet,
    )
    print(json.dumps(summary), file=sys.stderr)
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from molserve.registry import Registry

    registry = Registry(_settings(args).registry)
    artifacts = registry.all_artifacts()
    if args.json:
        print(json.dumps([{"endpoint": a.endpoint, "version": a.version, "kind": a.kind,
                           "created": a.manifest.get("created"),
                           "test": a.manifest.get("metrics", {}).get("test")} for a in artifacts],
                         indent=2))
        return 0
    if not artifacts:
        print(f"no models in {registry.root}; run `molserve bootstrap`")
        return 0
    print(f"{'endpoint':<24} {'ver':>4} {'kind':<12} {'task':<15} {'n_test':>6}  held-out (test) metrics")
    for a in artifacts:
        test = a.manifest.get("metrics", {}).get("test", {})
        if a.manifest.get("task") == "classification":
            nan = float("nan")
            shown = f"ROC AUC {test.get('roc_auc', nan):.3f}  PR AUC {test.get('pr_auc', nan):.3f}"
        else:
            shown = f"RMSE {test.get('rmse', float('nan')):.3f}  R2 {test.get('r2', float('nan')):.3f}"
        print(f"{a.endpoint:<24} {a.version:>4} {a.kind:<12} {a.manifest.get('task', ''):<15} "
              f"{test.get('n', 0):>6}  {shown}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from molserve.gateway.app import create_app

    settings = _settings(args)
    app = create_app(settings)
    uvicorn.run(app, host=args.host or settings.host, port=args.port or settings.port,
                log_level=args.log_level, access_log=False, loop="auto", http="auto")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="molserve", description=__doc__.splitlines()[0])
    parser.add_argument("--registry", help="registry directory (default: $MOLSERVE_REGISTRY or ./registry)")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("serve", help="serve the HTTP gateway")
    p.add_argument("--host")
    p.add_argument("--port", type=int)
    p.add_argument("--log-level", default="info")
    p.set_defaults(fn=cmd_serve)

    p = sub.add_parser("bootstrap", help="train the bundled endpoints missing from the registry")
    p.add_argument("--force", action="store_true", help="train a new version even if one exists")
    p.add_argument("--profile", default="standard", choices=["standard", "quick"])
    p.set_defaults(fn=cmd_bootstrap)

    p = sub.add_parser("train", help="train a fast model on a CSV/TSV/SDF file and register it")
    p.add_argument("data")
    p.add_argument("--endpoint", required=True)
    p.add_argument("--smiles-col", default="smiles")
    p.add_argument("--label-col", required=True)
    p.add_argument("--task", default="regression", choices=["regression", "classification"])
    p.add_argument("--units", default="")
    p.add_argument("--description")
    p.add_argument("--positive-label", help="classification: the label text that means positive")
    p.add_argument("--split", default="scaffold", choices=["scaffold", "random"])
    p.add_argument("--profile", default="standard", choices=["standard", "quick"])
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(fn=cmd_train)

    p = sub.add_parser("predict", help="predict a CSV/SMI/SDF file offline from the registry")
    p.add_argument("input")
    p.add_argument("-o", "--output", required=True)
    p.add_argument("--endpoints", help="comma-separated; default: every predicted endpoint")
    p.add_argument("--smiles-col", default=None, help="default: a column named smiles (any case)")
    p.add_argument("--chunk-size", type=int, default=1000)
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 1,
                   help="worker processes (default: one per core)")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(fn=cmd_predict)

    p = sub.add_parser("models", help="registered models")
    msub = p.add_subparsers(dest="models_command", required=True)
    q = msub.add_parser("list", help="list registered models with held-out metrics")
    q.add_argument("--json", action="store_true")
    q.set_defaults(fn=cmd_models)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except (ValueError, KeyError, FileNotFoundError) as error:
        print(f"molserve: error: {error}", file=sys.stderr)
        return 2
