"""Which tier answers an endpoint when a request names none: a pure function of the live fast
model and what the worker tiers list for the endpoint (`registry.manifest.routing_listing`), so
the router, `molserve models list` and the tests decide alike.

Evidence inside the training data only, never the test split:
1. Out of fold: the fast tier, the foundation tier and their stacked blend, each scored on the
   live fast model's scaffold folds (recorded by the foundation model, trained on those folds).
2. On validation, if the fast tier is still the choice: a graph model (trained on the fast
   model's split) and the fast and graph tiers' mean against the fast tier's selection model,
   on the validation molecules they share (`preferred_over`).
A worker model tested on another split than the live fast model's is never compared
(`evidence_mismatch`). A transformer has no evidence comparable with the fast tier's (it
validates on its own part of the split): it answers when asked by name. An endpoint without a
fast model is answered by the first worker tier that serves it.
"""

from __future__ import annotations

from typing import Any

from molserve.models import stacking
from molserve.prediction.blend import BLEND_TIER, MEAN_TIER, usable, usable_blend
from molserve.registry.manifest import evidence_mismatch, preferred_over

WORKER_TIERS = ("transformer", "graph", "foundation")


def cv_scores(fast: Any, listing: dict[str, Any] | None) -> dict[str, Any] | None:
    """The out-of-fold evidence for the endpoint of `fast` (an Artifact): the metric, folds,
    molecules and the fast tier's, the foundation tier's and their blend's scores, from the
    foundation model's listing; None without a foundation model fitted on this fast model."""
    if fast is None or not listing:
        return None
    cv = listing.get("cv") or {}
    if cv.get("fast_version") != fast.version or evidence_mismatch(listing.get("evidence"), fast.manifest):
        return None
    # A fast model written before it recorded its out-of-fold answers: its own out-of-fold
    # metrics, on the same folds (the foundation model rebuilt them from the same molecules).
    scores = {"fast": cv.get("fast") or fast.info.metrics.out_of_fold, "foundation": cv.get("foundation")}
    if usable_blend(listing, fast.version) is not None:
        scores[BLEND_TIER] = cv.get(BLEND_TIER)
    return {"metric": cv.get("metric") or "rmse", "folds": cv.get("folds"),
            "molecules": cv.get("molecules"), "scores": scores}


def preferred_tier(fast: Any, served: dict[str, dict[str, Any]]) -> str:
    """The tier that answers (see the module docstring). `fast`: the live fast model's Artifact
    or None; `served`: worker tier -> its listing for this endpoint (absent: not served)."""
    if fast is None:
        return next((tier for tier in WORKER_TIERS if served.get(tier)), "fast")
    cv = cv_scores(fast, served.get("foundation"))
    if cv is not None:
        choice = stacking.best_choice(cv["metric"], cv["scores"])
        if choice is not None and choice != "fast":
            return choice
    best, best_scores = "fast", {"valid": fast.info.metrics.valid}
    graph = served.get("graph")
    if not graph or evidence_mismatch(graph.get("evidence"), fast.manifest):
        return best
    scores = {"valid": graph.get("valid")}
    if preferred_over(scores, best_scores):
        best, best_scores = "graph", scores
    # The two tiers' mean, scored with this very fast model, when it beats both.
    mean = usable(graph, fast.version)
    if mean is not None and preferred_over(mean, best_scores):
        return MEAN_TIER
    return best
