"""`molserve models list`: the registry's models with their figures, read through the typed
manifest (`Artifact.info`): out of fold (what the tiers are chosen on), validation, and held-out
test where the model had a test set; per endpoint, the tier that answers when a request names
none (`prediction.choice`, on the newest model of each kind); and the endpoints a bootstrap is
still training."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer

from molserve.cli.common import group, settings

app = group()

KEYS = {"regression": (("rmse", "RMSE"), ("mae", "MAE"), ("spearman", "Spearman")),
        "classification": (("roc_auc", "ROC AUC"), ("pr_auc", "PR AUC"))}


def _shown(task: str, scores: dict[str, Any] | None) -> str:
    scores = scores or {}
    parts = [f"{name} {scores[key]:.3f}" for key, name in KEYS.get(task, ()) if scores.get(key) is not None]
    return ", ".join(parts) or "-"


def answering(registry, endpoint: str) -> tuple[str, dict[str, Any] | None]:
    """The tier that answers `endpoint` with the registry's newest model of each kind, and the
    out-of-fold evidence it was chosen on."""
    from molserve.prediction.choice import cv_scores, preferred_tier
    from molserve.registry.manifest import routing_listing

    fast = registry.latest(endpoint, kind="gbm")
    served = {tier: routing_listing(a.manifest) for tier in ("graph", "foundation")
              if (a := registry.latest(endpoint, kind=tier)) is not None}
    if registry.latest(endpoint, kind="transformer") is not None:
        served["transformer"] = {}
    return preferred_tier(fast, served), cv_scores(fast, served.get("foundation"))


@app.command("list", help="list registered models with their out-of-fold, validation and test "
             "figures, and the tier that answers each endpoint")
def list_models(ctx: typer.Context, as_json: Annotated[bool, typer.Option("--json")] = False) -> int:
    from molserve.registry import Registry

    registry = Registry(settings(ctx).registry)
    artifacts = registry.all_artifacts()
    if as_json:
        print(json.dumps([{"endpoint": a.endpoint, "version": a.version, "kind": a.kind,
                           "created": a.info.created, "test": a.info.metrics.test,
                           "out_of_fold": a.info.metrics.out_of_fold,
                           "valid": a.info.metrics.valid} for a in artifacts], indent=2))
        return 0
    from molserve.operations.bootstrap import pending_endpoints

    pending = pending_endpoints(registry)
    if not artifacts and not pending:
        print(f"no models in {registry.root}; run `molserve bootstrap`")
        return 0
    print(f"{'endpoint':<24} {'ver':>4} {'kind':<12} {'task':<15} figures")
    for name in registry.endpoints():
        for a in registry.versions(name):
            _model_lines(registry, a)
        _answering_line(registry, name)
    for name, entry in pending.items():
        state = (f"training {entry.get('progress', 0) * 100:.0f}% ({entry.get('step', '')})"
                 if entry["state"] == "training" else "queued")
        print(f"{name:<24} {'-':>4} {'gbm':<12} {'':<15} bootstrap: {state}")
    return 0


def _model_lines(registry, a) -> None:
    info = a.info
    notes = registry.evidence_notes(a)
    for endpoint in info.endpoints():
        view = info.view(endpoint)
        label = f"{a.endpoint}:{endpoint}" if info.multitask else a.endpoint
        figures = []
        if view.metrics.out_of_fold:
            figures.append(f"out of fold: {_shown(view.task, view.metrics.out_of_fold)}")
        elif view.metrics.valid:
            figures.append(f"validation: {_shown(view.task, view.metrics.valid)}")
        test = view.metrics.test
        if test:
            figures.append(f"test (n={test.get('n', 0)}): {_shown(view.task, test)}")
        print(f"{label:<24} {a.version:>4} {a.kind:<12} {view.task:<15} {'; '.join(figures) or '-'}")
        if endpoint in notes:  # a worker model tested on another split than the live fast one
            print(f"{'':<24} {'':>4} {'':<12} {'':<15} {notes[endpoint]}")


def _answering_line(registry, endpoint: str) -> None:
    if registry.latest(endpoint, kind="gbm") is None:
        return
    tier, cv = answering(registry, endpoint)
    evidence = ""
    if cv is not None:
        from molserve.models.stacking import METRIC_KEYS

        key = METRIC_KEYS.get(cv["metric"], cv["metric"])
        shown = ", ".join(f"{name} {scores[key]:.3f}" for name, scores in cv["scores"].items()
                          if scores and scores.get(key) is not None)
        evidence = f" (out-of-fold {cv['metric']}: {shown})"
    print(f"{'':<24} {'':>4} {'answers:':<12} {tier}{evidence}")
