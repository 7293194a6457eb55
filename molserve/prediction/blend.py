"""Answers made of two tiers' answers, served where they were shown to beat each tier alone.

- `fast+graph`, the fast and graph tiers' mean. A graph model is trained on its endpoint's fast
  model's curated rows and split; its training scores the mean of the two tiers' answers on the
  validation molecules they share (`tiers_mean` in the graph model's metrics, with the fast
  model's version). A classifier's interval spans both tiers' member ranges; a regression
  interval averages both tiers' interval ends as the values are averaged.
- `fast+foundation`, a stacked blend `(1 - w) fast + w foundation` on the model's scale. A
  foundation model is trained on the fast model's scaffold folds; its training fits the weight
  on the two tiers' out-of-fold predictions and calibrates the blend's intervals on them
  (`blend` in its manifest, with the fast model's version; `molserve.models.stacking`).

The router serves a blend where its recorded score beats every tier's and the live fast model is
the one it was fitted with (`usable`, `usable_blend`). Answers are combined as in training
(`molserve.models.tier_mean.mean_values`). A molecule only the fast tier could answer gets the
fast answer, marked degraded with the worker's reason.

Plain numpy and the answer types: the gateway stays light.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from molserve.answers import Answer, Provenance, Uncertainty
from molserve.models.tier_mean import mean_values, shifted

MEAN_TIER = "fast+graph"
BLEND_TIER = "fast+foundation"
# Each tier made of two: the worker tier it asks besides the fast tier.
COMBINED_TIERS = {MEAN_TIER: "graph", BLEND_TIER: "foundation"}


def usable(listing: dict[str, Any] | None, fast_version: int) -> dict[str, Any] | None:
    """The graph model's `tiers_mean` scores (validation, and test where the fast model held a
    test set out) when they were scored with this fast model version (else None: the mean of
    other answers was measured)."""
    mean = (listing or {}).get("tiers_mean") or {}
    if not (mean.get("valid") or mean.get("test")) or mean.get("fast_version") != fast_version:
        return None
    return mean


def usable_blend(listing: dict[str, Any] | None, fast_version: int) -> dict[str, Any] | None:
    """A foundation model's stacked blend when it was fitted with this fast model version."""
    blend = (listing or {}).get("blend") or {}
    if blend.get("weight") is None or blend.get("fast_version") != fast_version:
        return None
    return blend


def combine(endpoint: str, fast: list[Answer], graph: list[Answer], *, task: str, transform: Any,
            label_names: list[str] | None, listing: dict[str, Any],
            tier: str = MEAN_TIER) -> list[Answer]:
    """One answer per molecule: the two tiers' mean (`fast+graph`) or stacked blend
    (`fast+foundation`, `graph` then holding the foundation tier's answers) where both answered,
    the fast answer (marked degraded, with the worker's reason) where only it did. Combined in
    one numpy pass."""
    blend = (listing.get("blend") or {}) if tier == BLEND_TIER else {}
    weight = float(blend.get("weight", 0.5))
    mean = listing.get("tiers_mean") or {}
    coverage = (mean.get("test") or {}).get("interval_coverage")
    out: list[Answer] = list(fast)
    both = [i for i, (f, g) in enumerate(zip(fast, graph, strict=True))
            if not f.is_error and not g.is_error and g.value is not None]
    for i, (f, g) in enumerate(zip(fast, graph, strict=True)):
        if not f.is_error and (g.is_error or g.value is None):
            out[i] = f.degrade(str(g.provenance.details.get("error_code") or "worker_error"))
    if not both:
        return out
    combined = mean_values(np.array([fast[i].value for i in both]), np.array([graph[i].value for i in both]),
                           task, transform, weight)
    values = combined.tolist()
    with_intervals = all(fast[i].uncertainty and fast[i].uncertainty.interval
                         and graph[i].uncertainty and graph[i].uncertainty.interval for i in both)
    ends: list[tuple[float, float]] | None = None
    quantile = (blend.get("quantiles") or {}).get("0.9")
    if tier == BLEND_TIER and task == "regression" and quantile is not None:
        # The blend's own interval, calibrated on its out-of-fold residuals.
        ends = list(zip(shifted(combined, -quantile, task, transform).tolist(),
                        shifted(combined, quantile, task, transform).tolist(), strict=True))
    elif with_intervals:
        fi = np.array([fast[i].uncertainty.interval for i in both], dtype=np.float64)
        gi = np.array([graph[i].uncertainty.interval for i in both], dtype=np.float64)
        if task == "classification":  # the range of both tiers' member probabilities
            ends = list(zip(np.minimum(fi[:, 0], gi[:, 0]).tolist(), np.maximum(fi[:, 1], gi[:, 1]).tolist(),
                            strict=True))
        else:
            ends = list(zip(mean_values(fi[:, 0], gi[:, 0], task, transform, weight).tolist(),
                            mean_values(fi[:, 1], gi[:, 1], task, transform, weight).tolist(), strict=True))
    log_scale = task == "regression" and getattr(transform, "kind", "") == "log10"
    scale = " on the log10 scale" if log_scale else ""
    if tier == BLEND_TIER:
        kind = f"stacked blend: {1 - weight:.2f} x fast + {weight:.2f} x foundation{scale}"
    else:
        kind = "mean of the fast and graph tiers' answers" + scale
    if task == "classification":
        method = "the range of both tiers' member probabilities"
    elif tier == BLEND_TIER:
        method = ("split conformal on the blend's out-of-fold residuals of calibration molecules"
                  if quantile is not None else "both tiers' 90% intervals, ends blended as the values are")
    else:
        said = f"{coverage:.3f}" if coverage is not None else "not measured"
        method = ("both tiers' 90% intervals, ends averaged as the values are; coverage on the "
                  f"held-out test split: {said}")
    names = label_names or ["negative", "positive"]
    for slot, i in enumerate(both):
        f, g = fast[i], graph[i]
        provenance = Provenance(f"{endpoint}/{tier}", f"{f.provenance.version}+{g.provenance.version}",
                                tier, {"kind": kind,
                                       "members": [f.provenance.to_json(), g.provenance.to_json()]})
        value = values[slot]
        uncertainty = None
        if ends is not None:
            low, high = ends[slot]
            uncertainty = Uncertainty(None, (round(low, 4), round(high, 4)), method,
                                      None if task == "classification" else 0.9)
        out[i] = Answer(provenance, round(value, 4), f.units,
                        label=(names[1] if value >= 0.5 else names[0]) if task == "classification" else None,
                        uncertainty=uncertainty, applicability_domain=f.applicability_domain)
    return out
