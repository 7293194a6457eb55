"""Request and response bodies of the public API, declared once: they validate requests and
make the OpenAPI document (and so generated clients) say what every route answers.

Routes that answer from dicts built below the gateway return them serialized once (orjson);
these models then document the shape without validating it again on every request. Response
models allow extra fields: a newer server may add fields an older client ignores."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from molserve.registry.manifest import Manifest
from molserve.registry.store import _ENDPOINT_NAME

# The registry's rule for endpoint names, stated in the document where a name is chosen.
ENDPOINT_NAME = _ENDPOINT_NAME.pattern

# Two custom formats say what a string means beyond its type: a molecule, or the name of an
# endpoint GET /v1/endpoints lists. Clients read them as plain strings; a fuzzer told how to draw
# them sends molecules and names rather than noise the server must refuse.
Smiles = Annotated[str, Field(json_schema_extra={"format": "smiles"})]
EndpointRef = Annotated[str, Field(json_schema_extra={"format": "endpoint"})]
# Bounds a request's lists have before anything else reads them (validation stops at the first
# item past them): the molecules of one request (the server's own `max_batch`, at most this, is
# enforced next, 413), and the endpoints one request may name.
MAX_MOLECULES = 100_000
MAX_ENDPOINTS = 1_000

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

    molecules: list[Smiles] = Field(
        ..., min_length=1, max_length=MAX_MOLECULES,
        description="SMILES strings, one molecule each; answered in order. The server's batch "
        "limit (`max_batch`, 1,000 by default) applies: more are refused with 413.",
    )
    endpoints: list[EndpointRef] | None = Field(
        None, max_length=MAX_ENDPOINTS,
        description="Endpoint names (GET /v1/endpoints). Default: every predicted endpoint.",
        # Stated, not enforced here: the router refuses an empty list with its own code.
        json_schema_extra={"minItems": 1},
    )
    tier: Literal["auto", "fast", "transformer", "graph", "foundation", "fast+graph",
                  "fast+foundation"] = Field(
        "auto", description="Which tier should answer; `auto` picks the one that scored best "
        "inside the training data (out of fold, else on validation; never on the test split). "
        "`fast+graph` is the mean of the fast and graph tiers' answers, `fast+foundation` the "
        "stacked blend of the fast and foundation tiers (its weight fitted out of fold).",
    )
    deadline_ms: float | None = Field(
        None, gt=0, le=60000,
        description="Answer within this time: past it, the fast tier answers (marked degraded).",
    )
    explain: bool = Field(
        False, description="Explain each fast-tier answer: per-atom and per-descriptor "
        "contributions to the model's raw output and a depiction shaded by them (`explanation`). "
        "Costs milliseconds a molecule and endpoint; at most 100 molecules a request by default "
        "(413 beyond).",
    )
    confidence: float | None = Field(
        None, ge=0.8, le=0.95,
        description="Level of the regression intervals (default 0.9). Intervals are calibrated at "
        "0.8, 0.9 and 0.95; another level gets the next calibrated one above it, and each answer's "
        "`uncertainty.confidence` says which. Worker tiers calibrate at 0.9 only: another level is "
        "answered by the fast tier.")
    reference: str | None = Field(
        # The names a reference set may have (molserve reference add --name).
        None, max_length=64, pattern=r"^[a-z0-9][a-z0-9_\-]{0,63}$",
        description="name of a reference set (GET /v1/references); each answer's "
        "reference_percentile is the value's percentile within that set's predictions; default: "
        "the default set",
    )


class Answered(BaseModel):
    """Base of response bodies: fields added later do not break older clients."""

    model_config = ConfigDict(extra="allow")


class Uncertainty(Answered):
    std: float | None = Field(None, description="Spread of the ensemble members (fast tier).")
    interval: list[float] | None = Field(..., description="Prediction interval (regression) or "
                                         "member probability range (classification).")
    confidence: float | None = Field(None, description="Nominal coverage of the interval.")
    method: str
    space: str | None = Field(None, description="Where `std` is measured when the model works on "
                              "another scale than the answer (e.g. log10 for half-life).")


class ApplicabilityDomain(Answered):
    max_similarity: float = Field(..., description="Max Tanimoto similarity to the training set.")
    in_domain: bool
    threshold: float
    nearest_training_smiles: str | None = None


class Provenance(Answered):
    model_id: str
    version: int | str
    tier: Literal["fast", "transformer", "graph", "foundation", "fast+graph", "fast+foundation",
                  "computed"]
    kind: str | None = None
    trained: str | None = None
    dataset: str | None = Field(None, description="The training data, e.g. `TDC Caco2_Wang`.")
    method: str | None = None
    software: str | None = None
    degraded: bool | None = Field(None, description="True when a preferred tier could not answer.")
    degraded_reason: str | None = None


class Explanation(Answered):
    """Why a fast-tier model answered what it did: `base + sum(atoms) + sum(descriptors) ==
    raw`, all in `space` (only `error` when the answer could not be explained)."""

    space: str | None = Field(None, description="Where the contributions add up: `log-odds` (classifiers: "
                       "the members' mean log-odds), `value`, or e.g. `log10(value)` for a model of "
                       "a log-transformed target.")
    base: float | None = Field(None, description="The model's expected raw output over its training data.")
    atoms: list[float] | None = Field(None, description="One contribution per atom, in the atom order of "
                               "`canonical_smiles` (atoms of stripped counter-ions and solvents: 0).")
    descriptors: dict[str, float] | None = Field(
        None, description="Contributions of features without atoms: each descriptor by name, the "
        "`erg`, `avalon` and `maccs` blocks as wholes, and `morgan_absent_bits` (substructures the "
        "molecule lacks). Zero contributions are left out.")
    raw: float | None = Field(None, description="The model's raw output, from which the value is derived.")
    svg: str | None = Field(None, description="The molecule with atoms shaded by contribution: "
                            "red raises the output, blue lowers it.")
    method: str | None = None
    error: str | None = Field(None, description="Why this answer could not be explained.")


class EndpointAnswer(Answered):
    value: Any = Field(None, description="The prediction, or the computed value (absent when "
                       "`error` says why there is none).")
    units: str
    kind: Literal["predicted", "computed"]
    label: str | None = None
    uncertainty: Uncertainty | None = None
    applicability_domain: ApplicabilityDomain | None = None
    provenance: Provenance
    error: str | None = None
    explanation: Explanation | None = Field(None, description="Asked with `explain`: fast-tier "
                                            "answers only.")
    details: dict[str, Any] | None = Field(None, description="What a computed rule or alert found.")
    reference_percentile: float | None = Field(
        None, description="The value's percentile (0-100) within the reference set's predictions.")


class MoleculeResult(Answered):
    index: int
    input: str
    canonical_smiles: str | None = None
    error: str | None = Field(None, description="Why this molecule could not be read.")
    predictions: dict[str, EndpointAnswer] = Field(..., description="endpoint -> answer; empty when "
                                                   "`error` says the molecule could not be read.")


class PredictResponse(Answered):
    results: list[MoleculeResult]
    endpoints: list[str]
    n_molecules: int
    n_errors: int
    n_unique: int = Field(..., description="Distinct molecules actually computed.")
    elapsed_ms: float
    tiers: dict[str, str] = Field(..., description="endpoint -> the tier that answered.")
    degraded: dict[str, str] = Field(..., description="endpoint -> why the preferred tier could not answer.")
    request_id: str = Field(..., description="Also in the X-Request-ID response header.")


class EndpointInfo(Answered):
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
    preferred_tier: str | None = Field(None, description="Served by several tiers: the one that "
                                       "scored best on equal evidence inside the training data: "
                                       "out of fold on the fast model's scaffold folds (fast, "
                                       "foundation, `fast+foundation`), then on the validation "
                                       "molecules the fast and graph tiers share (graph, "
                                       "`fast+graph`). Never on the test split.")
    cv: dict[str, Any] | None = Field(None, description="The out-of-fold evidence: metric, folds, "
                                      "molecules and each tier's scores (`scores`).")
    models: list[dict[str, Any]] = Field(default_factory=list)


class ErrorBody(BaseModel):
    """Every error answer: a stable snake_case code, a message to act on, and details."""

    error: str = Field(..., description="Stable machine-readable code, e.g. `unknown_endpoint`.")
    message: str
    details: Any | None = Field(None, description="Structured context (e.g. `retry_after_s`).")


# Health and status -------------------------------------------------------------------------
class Liveness(Answered):
    status: Literal["ok"]


class BootstrapSummary(Answered):
    state: str | None = None
    done: int
    total: int
    training: dict[str, dict[str, Any]] = Field(default_factory=dict)
    queued: list[str] = Field(default_factory=list)
    failed: dict[str, str | None] = Field(default_factory=dict)


class Readiness(Answered):
    ready: bool
    fast_models: list[str]
    load_errors: dict[str, str]
    bootstrap: BootstrapSummary | None = Field(
        None, description="While bundled endpoints are trained at start-up: their progress.")
    message: str | None = Field(None, description="When not ready: why, and what to do.")


class LegacyHealth(Answered):
    status: Literal["healthy", "degraded"]
    models_loaded: int
    model_type: str
    available_targets: list[str]
    computed_properties: list[str]


class FastTierStatus(Answered):
    models: list[str]
    load_errors: dict[str, str]


class WorkerTierStatus(Answered):
    configured: bool
    endpoints: list[str]
    preferred: dict[str, str] = Field(..., description="endpoint -> the tier `auto` picks.")
    not_preferred: dict[str, str] = Field(
        default_factory=dict, description="endpoint -> why this tier's model is not compared with the "
        "fast model (tested on another split or dataset version).")
    workers: list[dict[str, Any]] = Field(
        ..., description="Each worker: url, breaker state, reachability, load and recent latency.")


class ComputedTierStatus(Answered):
    endpoints: list[str]


class ServiceStatus(Answered):
    fast: FastTierStatus
    transformer: WorkerTierStatus
    graph: WorkerTierStatus
    computed: ComputedTierStatus


# Models (the registry) ---------------------------------------------------------------------
class TaskSummary(Answered):
    task: str
    metrics: dict[str, Any]


class ModelSummary(Answered):
    endpoint: str
    version: int
    kind: str
    tier: str | None = None
    created: str | None = None
    task: str | None = None
    metrics: dict[str, Any] | None = Field(None, description="Held-out test split metrics.")
    dataset: str | None = Field(None, description="The training dataset's name.")
    tasks: dict[str, TaskSummary] | None = Field(None, description="Multi-task models: per endpoint.")
    error: str | None = Field(None, description="Why the manifest could not be read.")


class ManifestFile(Answered):
    sha256: str
    bytes: int | None = None


class ModelManifest(Manifest):
    """A model version's manifest as stored: the shared fields below plus each model kind's own
    sections (features, model, split, applicability domain, uncertainty...)."""

    files: dict[str, ManifestFile] = Field(default_factory=dict, description="Files with sha256.")


class ReloadResult(Answered):
    loaded: list[str]
    errors: dict[str, str] = Field(..., description="endpoint -> why its newest model was not loaded.")


class ModelRef(Answered):
    endpoint: str
    version: int


class DeleteResult(Answered):
    deleted: ModelRef


# Jobs ----------------------------------------------------------------------------------------
class Upload(Answered):
    upload_id: str = Field(..., description="Use as `upload_id` in POST /v1/jobs.")
    filename: str
    bytes: int


class Job(Answered):
    id: str
    kind: Literal["train", "screen"]
    state: str = Field(..., description="queued, running, succeeded, failed or cancelled.")
    params: dict[str, Any]
    progress: float = Field(..., description="Fraction done, 0-1.")
    step: str | None = None
    eta_s: float | None = None
    metrics: dict[str, Any] | None = Field(None, description=(
        "Progress so far. A screen: `molecules_done`, `molecules_total`, `molecules_per_second`; "
        "a screen by shard (an engine, a filter or top-k) also `shards_done`, `shards_total` and "
        "`hits` (rows kept)."))
    result: dict[str, Any] | None = None
    result_url: str | None = Field(None, description="A finished screen: where its CSV is.")
    error: str | None = None
    attempts: int
    cancel_requested: bool
    created: float
    started: float | None = None
    finished: float | None = None
    heartbeat: float | None = None
    owner: str | None = Field(None, description="Who submitted it: `key:<id>`, or `anonymous`.")


class SubmittedJob(Job):
    url: str = Field(..., description="Where to follow the job.")
    job_token: str | None = Field(None, description="An anonymous job only: send it as "
                                  "`X-Job-Token` to read, cancel or download the job; shown once.")


class JobWithLogs(Job):
    logs: list[str] = Field(..., description="The most recent log lines.")
