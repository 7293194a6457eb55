"""Request and response schemas of the public API, declared once for validation and OpenAPI."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

EXAMPLE_MOLECULES = ["CC(=O)Oc1ccccc1C(=O)O", "not a smiles"]


class PredictRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"molecules": EXAMPLE_MOLECULES, "endpoints": ["solubility", "bbb_penetration"]},
                {"molecules": ["c1ccccc1O"], "endpoints": ["logp_crippen", "tpsa", "qed"]},
            ]
        },
    )

    molecules: list[str] = Field(
        ..., min_length=1, description="SMILES strings, one molecule each; answered in order."
    )
    endpoints: list[str] | None = Field(
        None, description="Endpoint names (GET /v1/endpoints). Default: every predicted endpoint."
    )
    tier: Literal["auto", "fast", "transformer"] = Field(
        "auto", description="Which tier should answer; `auto` picks the best-validated healthy one."
    )
    deadline_ms: float | None = Field(
        None, gt=0, le=60000,
        description="Answer within this time: past it, the fast tier answers (marked degraded).",
    )


class Uncertainty(BaseModel):
    std: float | None = Field(None, description="Spread of the ensemble members (fast tier).")
    interval: list[float] = Field(..., description="Prediction interval (regression) or member "
                                  "probability range (classification).")
    confidence: float | None = Field(None, description="Nominal coverage of the interval.")
    method: str
    space: str | None = Field(None, description="Where `std` is measured when the model works on "
                              "another scale than the answer (e.g. log10 for half-life).")


class ApplicabilityDomain(BaseModel):
    max_similarity: float = Field(..., description="Max Tanimoto similarity to the training set.")
    in_domain: bool
    threshold: float
    nearest_training_smiles: str | None = None


class Provenance(BaseModel):
    model_id: str
    version: int | str
    tier: Literal["fast", "transformer", "computed"]
    kind: str | None = None
    trained: str | None = None
    dataset: str | None = Field(None, description="The training data, e.g. `TDC Caco2_Wang`.")
    method: str | None = None
    software: str | None = None
    degraded: bool | None = Field(None, description="True when a preferred tier could not answer.")
    degraded_reason: str | None = None


class EndpointAnswer(BaseModel):
    value: Any = Field(..., description="The prediction, or the computed value.")
    units: str
    kind: Literal["predicted", "computed"]
    label: str | None = None
    uncertainty: Uncertainty | None = None
    applicability_domain: ApplicabilityDomain | None = None
    provenance: Provenance
    error: str | None = None


class MoleculeResult(BaseModel):
    index: int
    input: str
    canonical_smiles: str | None = None
    error: str | None = Field(None, description="Why this molecule could not be read.")
    predictions: dict[str, EndpointAnswer] = Field(default_factory=dict)


class PredictResponse(BaseModel):
    results: list[MoleculeResult]
    endpoints: list[str]
    n_molecules: int
    n_errors: int
    n_unique: int = Field(..., description="Distinct molecules actually computed.")
    elapsed_ms: float


class EndpointInfo(BaseModel):
    name: str
    kind: Literal["predicted", "computed"]
    task: str
    units: str
    description: str
    status: Literal["available", "training", "queued"] = Field(
        "available", description="`training`/`queued`: a bundled endpoint the start-up bootstrap "
        "has not finished; it is served as soon as it is trained.")
    progress: float | None = Field(None, description="Training progress (0-1) while not available.")
    source: str | None = Field(None, description="The training data's source.")
    tdc_dataset: str | None = Field(None, description="Therapeutics Data Commons dataset name.")
    licence: str | None = None
    citation: str | None = Field(None, description="Publication to cite for the training data.")
    label_names: list[str] | None = Field(None, description="Classification: [negative, positive].")
    tiers: list[str]
    models: list[dict[str, Any]] = Field(default_factory=list)


class ErrorBody(BaseModel):
    error: str
    message: str
    details: Any | None = None
