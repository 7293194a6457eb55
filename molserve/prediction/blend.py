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
    degraded, with the graph tier's reason) where only it did."""
    mean = listing.get("tiers_mean") or {}
    coverage = (mean.get("test") or {}).get("interval_coverage")
    out: list[Answer] = []
    for f, g in zip(fast, graph, strict=True):
        if f.is_error:
            out.append(f)
            continue
        if g.is_error or g.value is None:
            reason = g.provenance.details.get("error_code") or "worker_error"
            out.append(f.degrade(str(reason)))
            continue
        value = float(mean_values(np.array([f.value]), np.array([g.value]), task, transform)[0])
        provenance = Provenance(
            f"{endpoint}/{MEAN_TIER}", f"{f.provenance.version}+{g.provenance.version}", MEAN_TIER,
            {"kind": "mean of the fast and graph tiers' answers"
                     + (" on the log10 scale" if getattr(transform, "kind", "") == "log10" else ""),
             "members": [f.provenance.to_json(), g.provenance.to_json()]})
        uncertainty = None
        fi = f.uncertainty.interval if f.uncertainty else None
        gi = g.uncertainty.interval if g.uncertainty else None
        label = None
        if task == "classification":
            names = label_names or ["negative", "positive"]
            label = names[1] if value >= 0.5 else names[0]
            if fi is not None and gi is not None:
                uncertainty = Uncertainty(None, (round(min(fi[0], gi[0]), 4), round(max(fi[1], gi[1]), 4)),
                                          "the range of both tiers' member probabilities")
        elif fi is not None and gi is not None:
            low, high = mean_values(np.array([fi[0], fi[1]]), np.array([gi[0], gi[1]]), task, transform)
            said = f"{coverage:.3f}" if coverage is not None else "not measured"
            uncertainty = Uncertainty(
                None, (round(float(low), 4), round(float(high), 4)),
                "both tiers' 90% intervals, ends averaged as the values are; coverage on the "
                f"held-out test split: {said}", 0.9, None)
        out.append(Answer(provenance, round(value, 4), f.units, label=label, uncertainty=uncertainty,
                          applicability_domain=f.applicability_domain))
    return out
