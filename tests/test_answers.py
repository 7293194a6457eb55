"""Typed answers: built by the tiers, serialized once at the edge, and a worker's JSON checked."""

from __future__ import annotations

import orjson
import pytest

from molserve.answers import Answer, Domain, Provenance, Uncertainty
from molserve.responses import JSONResponse

WORKER_ANSWER = {
    "value": 0.42, "units": "log10(C_brain/C_blood)", "kind": "predicted",
    "uncertainty": {"interval": [0.1, 0.7], "confidence": 0.9, "method": "split conformal"},
    "applicability_domain": {"max_similarity": 0.61, "in_domain": True, "threshold": 0.3,
                             "nearest_training_smiles": "CCO"},
    "provenance": {"model_id": "logbb/transformer", "version": 3, "tier": "transformer",
                   "kind": "roberta (onnx, cpu)", "trained": "2026-11-01"},
}


def test_a_worker_answer_round_trips_unchanged():
    answer = Answer.from_json(WORKER_ANSWER)
    assert answer.provenance.details == {"kind": "roberta (onnx, cpu)", "trained": "2026-11-01"}
    assert answer.uncertainty.interval == (0.1, 0.7) and answer.uncertainty.std is None
    assert answer.to_json() == WORKER_ANSWER


def test_degrading_marks_the_provenance_and_keeps_the_rest():
    fast = Answer(Provenance("logbb/gbm", 7, "fast", {"kind": "gbm-ensemble"}), 0.3, "u",
                  uncertainty=Uncertainty(0.05, (0.1, 0.5), "conformal", 0.9),
                  applicability_domain=Domain(0.5, True, 0.3, "CC"))
    degraded = fast.degrade("deadline_exceeded")
    body = orjson.loads(JSONResponse({"results": [degraded]}).body)["results"][0]
    assert body["provenance"] == {"model_id": "logbb/gbm", "version": 7, "tier": "fast",
                                  "kind": "gbm-ensemble", "degraded": True,
                                  "degraded_reason": "deadline_exceeded"}
    assert body["value"] == 0.3 and body["uncertainty"]["std"] == 0.05
    assert "degraded" not in fast.to_json()["provenance"]  # the original is untouched


@pytest.mark.parametrize("bad", [
    [], {"units": "u"}, {"value": 1.0}, {"value": 1.0, "provenance": {"model_id": "m"}},
    {"value": 1.0, "provenance": {"model_id": "m", "version": 1, "tier": "t"},
     "uncertainty": {"interval": [1.0]}},
])
def test_a_malformed_worker_answer_is_refused(bad):
    with pytest.raises(ValueError):
        Answer.from_json(bad)


def test_an_error_answer_serializes_without_a_value():
    answer = Answer.from_json({"error": "unreadable", "provenance": {
        "model_id": "m", "version": 1, "tier": "transformer"}})
    assert answer.is_error and "value" not in answer.to_json()
