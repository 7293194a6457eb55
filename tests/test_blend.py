"""The fast and graph tiers' mean: averaged on the scale the models learn on, intervals averaged
the same way, and a molecule the graph tier could not answer gets the fast answer, degraded."""

from __future__ import annotations

import math

import numpy as np

from molserve.answers import Answer, Domain, Provenance, Uncertainty
from molserve.models.gbm_runtime import TargetTransform
from molserve.models.tier_mean import mean_values
from molserve.prediction.blend import MEAN_TIER, combine, usable

DOMAIN = Domain(0.7, True, 0.3, "CCO")


def _answer(tier: str, version: int, value, interval=None, label=None, error=None) -> Answer:
    return Answer(Provenance(f"clearance/{tier}", version, tier), value, "uL/min/mg", label=label,
                  uncertainty=Uncertainty(None, interval, "m", 0.9) if interval else None,
                  applicability_domain=DOMAIN if tier == "fast" else None, error=error)


def test_a_log_scale_endpoint_is_averaged_as_its_logarithms():
    log10 = TargetTransform("log10", 1.0)
    assert np.allclose(mean_values(np.array([9.0]), np.array([99.0]), "regression", log10),
                       [math.sqrt(10 * 100) - 1])
    assert np.allclose(mean_values(np.array([1.0]), np.array([3.0]), "regression", TargetTransform()), [2.0])
    assert np.allclose(mean_values(np.array([0.2]), np.array([0.6]), "classification", None), [0.4])


def test_combined_answers_name_both_models_and_fall_back_per_molecule():
    log10 = TargetTransform("log10", 0.0)
    fast = [_answer("fast", 4, 10.0, (1.0, 100.0)), _answer("fast", 4, 1.0, (0.1, 10.0)),
            _answer("fast", 4, None, error="unreadable")]
    graph = [_answer("graph", 2, 1000.0, (100.0, 10000.0)),
             Answer(Provenance("clearance/graph", 2, "graph", {"error_code": "too_long_for_model"}),
                    error="too long"),
             _answer("graph", 2, None, error="unreadable")]
    listing = {"tiers_mean": {"fast_version": 4, "test": {"rmse": 1.0, "interval_coverage": 0.91}}}
    out = combine("clearance", fast, graph, task="regression", transform=log10, label_names=None,
                  listing=listing)
    assert out[0].value == 100.0 and out[0].uncertainty.interval == (10.0, 1000.0)
    assert "0.910" in out[0].uncertainty.method and out[0].uncertainty.confidence == 0.9
    assert out[0].provenance.tier == MEAN_TIER and out[0].provenance.version == "4+2"
    assert [m["tier"] for m in out[0].provenance.details["members"]] == ["fast", "graph"]
    assert out[0].applicability_domain == DOMAIN
    assert out[1].value == 1.0 and out[1].provenance.tier == "fast"
    assert out[1].provenance.degraded and out[1].provenance.degraded_reason == "too_long_for_model"
    assert out[2].is_error


def test_a_classifier_mean_is_labelled_by_the_mean_probability():
    fast = [_answer("fast", 1, 0.7, (0.6, 0.8), "toxic")]
    graph = [_answer("graph", 1, 0.2, (0.1, 0.35), "safe")]
    out = combine("herg", fast, graph, task="classification", transform=None,
                  label_names=["safe", "toxic"], listing={})
    assert out[0].value == 0.45 and out[0].label == "safe"
    assert out[0].uncertainty.interval == (0.1, 0.8)


def test_a_mean_scored_with_another_fast_model_is_not_usable():
    listing = {"tiers_mean": {"fast_version": 3, "test": {"rmse": 0.4}}}
    assert usable(listing, 3) == listing["tiers_mean"]
    assert usable(listing, 4) is None and usable({}, 3) is None and usable(None, 3) is None
