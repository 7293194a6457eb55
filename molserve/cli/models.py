"""`molserve models list`: the registry's models with their held-out test metrics, read through
the typed manifest (`Artifact.info`), and the endpoints a bootstrap is still training."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from molserve.cli.common import group, settings

app = group()


@app.command("list", help="list registered models with held-out metrics")
def list_models(ctx: typer.Context, as_json: Annotated[bool, typer.Option("--json")] = False) -> int:
    from molserve.registry import Registry

    registry = Registry(settings(ctx).registry)
    artifacts = registry.all_artifacts()
    if as_json:
        print(json.dumps([{"endpoint": a.endpoint, "version": a.version, "kind": a.kind,
                           "created": a.info.created, "test": a.info.metrics.test} for a in artifacts],
                         indent=2))
        return 0
    from molserve.operations.bootstrap import pending_endpoints

    pending = pending_endpoints(registry)
    if not artifacts and not pending:
        print(f"no models in {registry.root}; run `molserve bootstrap`")
        return 0
    print(f"{'endpoint':<24} {'ver':>4} {'kind':<12} {'task':<15} {'n_test':>6}  held-out (test) metrics")
    nan = float("nan")
    for a in artifacts:
        info = a.info
        rows = ([(f"{a.endpoint}:{e}", info.view(e)) for e in info.endpoints()] if info.multitask
                else [(a.endpoint, info.view(a.endpoint))])
        notes = registry.evidence_notes(a)
        for (label, view), endpoint in zip(rows, info.endpoints() if info.multitask else [a.endpoint],
                                           strict=True):
            test = view.metrics.test
            if view.task == "classification":
                shown = f"ROC AUC {test.get('roc_auc', nan):.3f}  PR AUC {test.get('pr_auc', nan):.3f}"
            else:
                shown = f"RMSE {test.get('rmse', nan):.3f}  R2 {test.get('r2', nan):.3f}"
            print(f"{label:<24} {a.version:>4} {a.kind:<12} {view.task:<15} {test.get('n', 0):>6}  {shown}")
            if endpoint in notes:  # a worker model tested on another split than the live fast one
                print(f"{'':<24} {'':>4} {'':<12} {'':<15} {'':>6}  {notes[endpoint]}")
    for name, entry in pending.items():
        state = (f"training {entry.get('progress', 0) * 100:.0f}% ({entry.get('step', '')})"
                 if entry["state"] == "training" else "queued")
        print(f"{name:<24} {'-':>4} {'gbm':<12} {'':<15} {'':>6}  bootstrap: {state}")
    return 0
