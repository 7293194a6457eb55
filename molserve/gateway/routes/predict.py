"""POST /v1/predict: parse the body, admit it, ask the router, render its answer once."""

from __future__ import annotations

from fastapi import APIRouter, Request

from molserve.errors import Unavailable
from molserve.gateway.errors import AUTH, documented
from molserve.gateway.schemas import PredictRequest, PredictResponse
from molserve.gateway.security import PredictCaller, hidden_from, redacted_for
from molserve.responses import JSONResponse

router = APIRouter(tags=["predict"])


@router.post(
    "/v1/predict",
    # Documented, not re-validated: the route returns the router's answer serialized once.
    response_model=PredictResponse,
    responses=documented(400, *AUTH, 404, 413, 415, 422, 503),
    summary="Predict endpoints for a batch of SMILES",
)
async def predict(body: PredictRequest, request: Request,
                  caller: PredictCaller) -> JSONResponse:
    """Answers every input in order. An unreadable SMILES gets a per-molecule `error` with
    RDKit's reason and the rest are answered; duplicates (same canonical SMILES) are computed
    once. Each answer carries units, uncertainty, applicability domain and provenance; with
    `explain`, each fast-tier answer also carries its explanation (at most 100 molecules a
    request by default; 413 beyond)."""
    state = request.app.state
    router = state.router
    router.check_size(len(body.molecules), body.explain)
    metrics = state.metrics
    # Admission control: beyond this many molecules in flight, say so at once (503) rather than
    # letting every client wait.
    limit = state.settings.gateway.max_pending_molecules
    if state.pending_molecules + len(body.molecules) > limit and state.pending_molecules > 0:
        raise Unavailable(f"{state.pending_molecules} molecules are being predicted; the gateway "
                          f"holds at most {limit}. Retry shortly or submit a screen job",
                          code="overloaded", details={"retry_after_s": 1.0})
    state.pending_molecules += len(body.molecules)
    try:
        return await _predict(body, state, router, metrics, hidden_from(request, caller),
                              redacted_for(request, caller))
    finally:
        state.pending_molecules -= len(body.molecules)


async def _predict(body: PredictRequest, state, router, metrics, hidden: frozenset[str],
                   redacted: frozenset[str]) -> JSONResponse:
    from molserve.logs import request_id

    result = await router.predict(
        body.molecules, body.endpoints, tier=body.tier, deadline_ms=body.deadline_ms,
        request_id=request_id.get(), inline_limit=state.settings.gateway.inline_batch,
        on_degraded=lambda name, reason: metrics.degraded.labels(metrics.endpoint(name), reason).inc(),
        explain=body.explain, reference=body.reference, confidence=body.confidence, hidden=hidden)
    if redacted & set(result["endpoints"]):
        _redact(result, redacted)
    metrics.batch_size.observe(len(body.molecules))
    if result["n_errors"]:
        metrics.invalid_molecules.inc(result["n_errors"])
    result["request_id"] = request_id.get()
    for name, tier in result["tiers"].items():  # the router names a tier for every endpoint
        metrics.predictions.labels(metrics.endpoint(name), tier).inc(result["n_unique"])
    return JSONResponse(result)


def _redact(result: dict, endpoints: frozenset[str]) -> None:
    """No training structure of another key's upload in an answer: the nearest training
    molecule is left out (the similarity and the domain verdict stay)."""
    from dataclasses import replace

    for row in result["results"]:
        for name, answer in row["predictions"].items():
            domain = getattr(answer, "applicability_domain", None)
            if name in endpoints and domain is not None and domain.nearest_training_smiles:
                row["predictions"][name] = replace(
                    answer, applicability_domain=replace(domain, nearest_training_smiles=None))
