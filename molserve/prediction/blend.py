"""The fast and graph tiers' mean, served where it has been shown to beat both.

A graph model is trained on its endpoint's fast model's curated rows and split, so the two are
tested on the same molecules. Its training also scores the mean of the two tiers' answers on
those molecules (`tiers_mean` in the graph model's metrics: the fast model's version, the
metrics, and for regression the measured coverage of the mean's interval). The router answers an
endpoint with the mean (tier `fast+graph`) when that test metric beats every single tier's, and
the fast model is still the one the mean was scored with.

Two answers are averaged as in training (`molserve.models.tier_mean.mean_values`): on the scale
the models learn on, intervals' ends alike (the answer says the coverage that interval had on the
held-out test molecules); a classifier's interval spans both tiers' member ranges.

Plain numpy and the answer types: the gateway stays light.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from molserve.answers import Answer, Provenance, Uncertainty
from molserve.models.tier_mean import mean_values

MEAN_TIER = "fast+graph"


def usable(listing: dict[str, Any] | None, fast_version: int) -> dict[str, Any] | None:
    """The graph model's `tiers_mean` test metrics when they were scored with this fast model
    version (else None: the mean of other answers was measured)."""
    mean = (listing or {}).get("tiers_mean") or {}
    if not mean.get("test") or mean.get("fast_version") != fast_version:
        return None
    return mean


def combine(endpoint: str, fast: list[Answer], graph: list[Answer], *, task: str, transform: Any,
            label_names: list[str] | None, listing: dict[str, Any]) -> list[Answer]:
    """One answer per molecule: the tiers' mean where both answered, the fast answer (marked
    degraded, with the graph tier's reason) where only it did. Averaged in one numpy pass."""
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
    values = mean_values(np.array([fast[i].value for i in both]), np.array([graph[i].value for i in both]),
                         task, transform).tolist()
    with_intervals = all(fast[i].uncertainty and fast[i].uncertainty.interval
                         and graph[i].uncertainty and graph[i].uncertainty.interval for i in both)
    ends: list[tuple[float, float]] | None = None
    if with_intervals:
        fi = np.array([fast[i].uncertainty.interval for i in both], dtype=np.float64)
        gi = np.array([graph[i].uncertainty.interval for i in both], dtype=np.float64)
        if task == "classification":  # the range of both tiers' member probabilities
            ends = list(zip(np.minimum(fi[:, 0], gi[:, 0]).tolist(), np.maximum(fi[:, 1], gi[:, 1]).tolist(),
                            strict=True))
        else:
            ends = list(zip(mean_values(fi[:, 0], gi[:, 0], task, transform).tolist(),
                            mean_values(fi[:, 1], gi[:, 1], task, transform).tolist(), strict=True))
    kind = "mean of the fast and graph tiers' answers" + (
        " on the log10 scale" if task == "regression" and getattr(transform, "kind", "") == "log10" else "")
    if task == "classification":
        method = "the range of both tiers' member probabilities"
    else:
        said = f"{coverage:.3f}" if coverage is not None else "not measured"
        method = ("both tiers' 90% intervals, ends averaged as the values are; coverage on the "
                  f"held-out test split: {said}")
    names = label_names or ["negative", "positive"]
    for slot, i in enumerate(both):
        f, g = fast[i], graph[i]
        provenance = Provenance(f"{endpoint}/{MEAN_TIER}", f"{f.provenance.version}+{g.provenance.version}",
                                MEAN_TIER, {"kind": kind,
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
