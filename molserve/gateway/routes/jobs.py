"""Jobs over HTTP: uploads, submission (202), status with progress and logs, cancel, result.

Uploads and jobs belong to their submitter (`molserve.gateway.security.Caller`): every route
here answers another key's upload or job with the same 404 as a missing one, admins excepted,
and an anonymous job only to the holder of its job token. Submissions count against the key's
quotas (stored upload bytes, queued jobs); the runner applies the rest (fair queue, running jobs
per key, time limits, retention).
"""

from __future__ import annotations

import asyncio
import re
import uuid
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import FileResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from molserve.errors import Conflict, InvalidInput, NotFound, StorageError, Unavailable
from molserve.gateway.errors import AUTH, QuotaExceeded, UnsupportedFile, documented
from molserve.gateway.schemas import (
    ENDPOINT_NAME,
    MAX_ENDPOINTS,
    EndpointRef,
    Job,
    JobWithLogs,
    SubmittedJob,
    Upload,
)
from molserve.gateway.security import (
    TOKEN_HEADER,
    Caller,
    hidden_from,
    job_reader,
    job_submitter,
    may_publish,
    new_job_token,
)
from molserve.jobs.store import QuotaFull
from molserve.responses import JSONResponse

router = APIRouter(tags=["jobs"])
UPLOAD_ID = r"^[0-9a-f]{32}$"
UPLOAD_SUFFIXES = {".csv", ".tsv", ".smi", ".txt", ".sdf"}


EXAMPLE_UPLOAD = "0123456789abcdef0123456789abcdef"
# Which fields each kind of job needs, stated in the document (the route checks them, with a
# code for each case): a screen reads an upload or a dataset; a gradient-boosted model trains on
# a dataset or on an upload's labelled column; a transformer starts from an endpoint's fast model.
_TEXT = {"type": "string", "minLength": 1}
_NAMED_FAST_ENDPOINT = {"type": "string", "format": "endpoint"}
# Bases are for fast models: named endpoints, or "auto" alone.
_BASES = {"anyOf": [{"type": "null"}, {"type": "array", "minItems": 1, "items": {"const": "auto"}},
                    {"type": "array", "minItems": 1,
                     "items": {**_NAMED_FAST_ENDPOINT, "not": {"const": "auto"}}}]}
_NO_BASES = {"type": "null"}
JOB_RULES = [
    {"properties": {"kind": {"const": "screen"}},
     "anyOf": [{"required": ["upload_id"], "properties": {"upload_id": _TEXT}},
               {"required": ["dataset"], "properties": {"dataset": _TEXT}}]},
    {"properties": {"kind": {"const": "train"}, "model": {"const": "gbm"}, "bases": _BASES},
     "anyOf": [{"required": ["dataset"], "properties": {"dataset": _TEXT}},
               {"required": ["upload_id", "label_col", "endpoint"],
                "properties": {"upload_id": _TEXT, "label_col": _TEXT, "endpoint": _TEXT}}]},
    {"properties": {"kind": {"const": "train"}, "model": {"const": "transformer"},
                    "endpoint": _NAMED_FAST_ENDPOINT, "bases": _NO_BASES,
                    "endpoints": {"anyOf": [{"type": "array", "items": _NAMED_FAST_ENDPOINT, "minItems": 2},
                                            {"type": "null"}]}},
     "required": ["model", "endpoint"]},
    {"properties": {"kind": {"const": "train"}, "model": {"enum": ["graph", "foundation"]},
                    "endpoint": _NAMED_FAST_ENDPOINT, "bases": _NO_BASES,
                    "endpoints": {"anyOf": [{"type": "array", "items": _NAMED_FAST_ENDPOINT, "minItems": 1},
                                            {"type": "null"}]}},
     "anyOf": [{"required": ["model", "endpoint"]}, {"required": ["model", "endpoints"]}]},
]


class JobRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"anyOf": JOB_RULES, "examples": [
        {"kind": "screen", "upload_id": EXAMPLE_UPLOAD, "endpoints": ["solubility"]},
        {"kind": "train", "dataset": "chembl_egfr_pic50", "model": "gbm"},
        {"kind": "train", "upload_id": EXAMPLE_UPLOAD, "endpoint": "my_assay", "label_col": "pIC50"},
    ]})

    kind: Literal["train", "screen"]
    upload_id: str | None = Field(None, pattern=UPLOAD_ID, description="A file from POST /v1/uploads.")
    # A dataset name is a directory name in the dataset store: the store's own rule, checked
    # here, so no other string reaches the file system.
    dataset: str | None = Field(None, pattern=ENDPOINT_NAME,
                                description="A stored dataset (molserve data list).")
    endpoints: list[EndpointRef] | None = Field(
        None, max_length=MAX_ENDPOINTS,
        description="screen: endpoints to predict. train with model=transformer: two or more "
        "endpoints make one multi-task model, registered under `endpoint`; with model=graph or "
        "model=foundation: one model of that kind for each.",
        json_schema_extra={"minItems": 1})
    smiles_col: str | None = None
    chunk_size: int = Field(1000, ge=10, le=10000)
    # A screen's engine, filter and output (the Ray cluster's address is the server's setting).
    engine: Literal["local", "ray", "modal"] = Field(
        "local", description="screen: where shards are scored (this server, its Ray cluster, Modal).")
    where: str | None = Field(None, max_length=2000, description="screen: keep only hits, e.g. "
                              "`herg_inhibition < 0.5 and solubility > -5` (output columns).",
                              json_schema_extra={"format": "where-expression"})
    top_k: int | None = Field(None, ge=1, le=1_000_000,
                              description="screen: keep the k best rows of each ranked endpoint.")
    rank_by: list[Annotated[str, Field(json_schema_extra={"format": "output-column"})]] | None = Field(
        None, description="screen: columns ranked for top_k, `-` first for lowest first (default: "
        "each regression endpoint).")
    id_col: str | None = Field(None, max_length=200, description="screen: the input's identifier "
                               "column (an SDF property, `_Name`), kept in the output.")
    output_format: Literal["csv", "parquet"] = Field(
        "csv", description="screen: the shard files kept beside the result CSV.")
    shard_size: int = Field(100_000, ge=100, le=10_000_000, description="screen: molecules a shard.")
    model: Literal["gbm", "transformer", "graph", "foundation"] = "gbm"
    visibility: Literal["private", "public"] | None = Field(
        None, description="train: who may see the endpoint's answers. `private` (the default for "
        "a key that is not admin): its owner and admins only, to anyone else it does not exist; "
        "`public`: everyone may ask it, but answers from a model trained on an upload never show "
        "its training structures to others. Publishing a version of an endpoint another key owns, "
        "or of a bundled one, needs an admin key.")
    endpoint: str | None = Field(None, description="train: the endpoint to (re)train.",
                                 json_schema_extra={"pattern": ENDPOINT_NAME})
    label_col: str | None = None
    task: Literal["regression", "classification"] = "regression"
    units: str = ""
    split: Literal["scaffold", "random", "time"] = "scaffold"
    profile: Literal["standard", "quick"] = "standard"
    base: str | None = Field(None, description="transformer: hub id or local directory.")
    bases: list[Annotated[str, Field(max_length=64)]] | None = Field(
        None, min_length=1, max_length=10,
        description="train (gbm): endpoints to learn on top of (their fast models): the local model "
        "competes with them recalibrated to its labels and with the stack of the two, out of fold; "
        "[\"auto\"] tries every bundled endpoint of the same task type and keeps those that help.")
    epochs: int = Field(30, ge=1, le=1000)
    ensemble: int = Field(5, ge=1, le=20, description="graph: networks per endpoint.")
    heads: list[Literal["trees", "trees+fast", "mlp"]] | None = Field(
        None, min_length=1, description="foundation: head kinds that compete out of fold "
        "(default: all three).")


def _check_screen_options(router, body: JobRequest, hidden: frozenset[str]) -> None:
    """A filter, a ranking or an engine that cannot work is refused at submission (400)."""
    import importlib.util

    from molserve.operations.screen import _columns
    from molserve.operations.sharded import parse_rank_by
    from molserve.operations.where import compile_where

    names = router.resolve_endpoints(body.endpoints, hidden)
    computed = set(router.computed.endpoints())
    classification = {n for n, m in router.fast.models.items() if m.task == "classification"}
    columns = _columns(names, computed, classification, body.id_col)
    if body.where:
        compile_where(body.where, columns)
    if body.rank_by:
        parse_rank_by(body.rank_by, columns, [])
    needs = {"ray": "ray", "modal": "modal"}.get(body.engine)
    if needs and importlib.util.find_spec(needs) is None:
        raise Unavailable(f"this server cannot run screens on {body.engine} (its package is not "
                          "installed); use engine=local", code="engine_unavailable")
    if body.output_format == "parquet" and importlib.util.find_spec("pyarrow") is None:
        raise Unavailable("this server cannot write Parquet (pyarrow is not installed); use "
                          "output_format=csv", code="pyarrow_missing")


def _runner(request: Request):
    runner = request.app.state.jobs
    if runner is None:
        raise Unavailable("this gateway runs no jobs (MOLSERVE_JOBS_DIR)", code="jobs_disabled")
    return runner


def _upload_path(request: Request, upload_id: str, caller: Caller) -> str:
    if not re.match(UPLOAD_ID, upload_id):  # it becomes a file name pattern below
        raise InvalidInput("upload_id is the hex id POST /v1/uploads returned", code="invalid_upload_id")
    store = _runner(request).store
    store.touch_upload(upload_id)  # before the check: the retention cleaner then keeps it
    upload = store.upload(upload_id)
    # An anonymous upload's 128-bit id is itself the secret that opens it.
    if upload is None or not (caller.sees(upload["owner"]) or upload["owner"] == caller.owner):
        raise NotFound(f"no upload {upload_id}", code="upload_not_found")
    return upload["path"]


def _dataset(request: Request, name: str, caller: Caller):
    """A stored dataset the caller may use: the operator's datasets (`molserve data import`)
    are for admin keys unless imported `--public`. Any other is as missing as one that never was."""
    from molserve.data.store import DatasetStore

    missing = NotFound(f"no dataset named {name!r} on this server (molserve data list shows "
                       "the stored ones)", code="dataset_not_found")
    try:
        dataset = DatasetStore(request.app.state.settings.datasets).get(name)
    except Exception:  # the store's message names its directory: not for callers
        raise missing from None
    if not (caller.admin or dataset.manifest.get("public")):
        raise missing
    return dataset


def _visible_job(request: Request, job_id: str, caller: Caller) -> dict[str, Any]:
    job = _runner(request).store.get(job_id)
    if job is None or not caller.sees(job.get("owner"), job.get("token_hash")):
        raise NotFound(f"no job {job_id}", code="job_not_found")
    return job


def _public(job: dict) -> dict:
    """A job as its callers see it: no server paths (the input's, the result's) and no process
    details."""
    shown = {k: v for k, v in job.items() if k not in ("pid", "checkpoint", "token_hash")}
    if isinstance(job.get("params"), dict) and "input_path" in job["params"]:
        shown["params"] = {k: v for k, v in job["params"].items() if k != "input_path"}
    if job.get("result") and "path" in job["result"]:
        shown["result"] = {k: v for k, v in job["result"].items() if k != "path"}
        shown["result_url"] = f"/v1/jobs/{job['id']}/result"
    return shown


def _quota(which: str, used: int, limit: int, message: str) -> QuotaExceeded:
    return QuotaExceeded(message, details={"quota": which, "used": used, "limit": limit})


# Multipart framing around the file: a declared length this far over the remaining quota is
# refused before a byte of the body is read.
_FRAMING_BYTES = 64 * 1024


@router.post("/v1/uploads", status_code=201, response_model=Upload,
             responses=documented(400, *AUTH, 413, 415, 422, 503, 507),
             summary="Upload a CSV/TSV/SMI/SDF file for a screen or a training job",
             # The body is read by the route after the caller and its quota are checked, so a
             # refused upload is not received first; the document still states its form.
             openapi_extra={"requestBody": {"required": True, "content": {"multipart/form-data": {
                 "schema": {"type": "object", "required": ["file"], "title": "UploadBody",
                            "properties": {"file": {"type": "string", "title": "File",
                                                    "contentMediaType": "application/octet-stream"}}}}}}})
async def upload(request: Request) -> JSONResponse:
    caller = job_submitter(request, "predict")
    runner = _runner(request)
    quota = request.app.state.settings.jobs.quota_upload_bytes
    used = runner.store.upload_bytes(caller.owner)
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and used + int(declared) > quota + _FRAMING_BYTES:
        raise _quota("upload_bytes", used, quota, f"{caller.owner} stores {used} bytes of uploads; "
                     f"this one ({declared} bytes) would pass the quota of {quota}. Uploads are "
                     "deleted after the retention period", )
    form = await request.form()
    file = form.get("file")
    if file is None or isinstance(file, str):
        raise InvalidInput("send the file as the multipart form field 'file' "
                           "(curl -F file=@molecules.csv)", code="no_file")
    name = file.filename or "upload.csv"
    # A name without a suffix (`curl -F file=@molecules`) is read as text, one SMILES a line.
    suffix = "." + name.rsplit(".", 1)[-1].lower() if "." in name else ".txt"
    if suffix not in UPLOAD_SUFFIXES:
        raise UnsupportedFile(f"{name}: use one of {sorted(UPLOAD_SUFFIXES)}")
    upload_id = uuid.uuid4().hex
    folder = runner.jobs_dir / "uploads"
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"{upload_id}{suffix}"
    size = 0
    try:
        with open(target, "wb") as handle:
            while block := await file.read(1 << 20):
                size += len(block)
                if used + size > quota:
                    break
                handle.write(block)
    except OSError as error:  # disk full or read-only: keep nothing, say what happened
        target.unlink(missing_ok=True)
        raise StorageError(f"the upload could not be stored after {size} bytes: {error.strerror}; "
                           "free space in the jobs directory and upload again",
                           code="insufficient_storage") from None
    if used + size > quota:
        target.unlink(missing_ok=True)
        raise _quota("upload_bytes", used, quota, f"{caller.owner} stores {used} bytes of uploads; "
                     f"this one would pass the quota of {quota}. Uploads are deleted after the "
                     "retention period")
    stored = str(target)
    storage_url = request.app.state.settings.fleet.storage_url
    if storage_url:  # a fleet: any gateway's job may read it, on any machine
        from molserve.storage import ObjectStore

        try:
            stored = await asyncio.to_thread(ObjectStore(storage_url).put_file, target,
                                             f"uploads/{upload_id}{suffix}")
        except OSError as error:
            raise StorageError(f"the upload could not be stored in the object store: {error}",
                               code="insufficient_storage") from None
        finally:
            target.unlink(missing_ok=True)
    try:  # counted again with the insert: two uploads at once cannot both pass the quota
        runner.store.add_upload(upload_id, caller.owner, name, stored, size, quota=quota)
    except QuotaFull as full:
        target.unlink(missing_ok=True)
        raise _quota("upload_bytes", full.used, quota, f"{caller.owner} stores {full.used} bytes of "
                     f"uploads; this one would pass the quota of {quota}. Uploads are deleted after "
                     "the retention period") from None
    return JSONResponse({"upload_id": upload_id, "filename": name, "bytes": size}, status_code=201)


@router.post("/v1/jobs", status_code=202, response_model=SubmittedJob,
             responses=documented(400, *AUTH, 404, 413, 415, 422, 503),
             summary="Submit a training job or a screen; returns at once")
async def submit(body: JobRequest, request: Request) -> JSONResponse:
    caller = job_submitter(request, "train" if body.kind == "train" else "predict")
    runner = _runner(request)
    limit = request.app.state.settings.jobs.quota_queued_jobs
    queued = runner.store.active_counts(caller.owner)["queued"]
    if queued >= limit:
        raise _quota("queued_jobs", queued, limit, f"{caller.owner} has {queued} queued jobs, its "
                     f"quota; wait for some to start or cancel them")
    params = body.model_dump(exclude_none=True)
    if body.upload_id:
        params["input_path"] = _upload_path(request, body.upload_id, caller)
    router = request.app.state.router
    hidden = hidden_from(request, caller)
    if body.kind == "screen":
        if body.dataset:
            params["input_path"] = str(_dataset(request, body.dataset, caller).file("data.csv"))
            params["smiles_col"] = "canonical_smiles"
        if "input_path" not in params:
            raise InvalidInput("a screen needs upload_id or dataset", code="no_input")
        # Unknown endpoints are refused now, not later; the job screens exactly the endpoints its
        # submitter may see (named here, so none of another key's private ones is added later).
        params["endpoints"] = router.resolve_endpoints(body.endpoints, hidden)
        _check_screen_options(router, body, hidden)
    else:
        if body.model == "transformer" and body.endpoints:
            tasks = list(dict.fromkeys(body.endpoints))
            missing = [e for e in tasks if e not in router.fast.models or e in hidden]
            if len(tasks) < 2 or missing or not body.endpoint:
                raise InvalidInput("multi-task training needs two or more `endpoints` that have fast "
                                   "models (missing: " + (", ".join(missing) or "none") + ") and "
                                   "`endpoint`, the name to register the model under",
                                   code="invalid_multitask_job")
            params["tasks"] = tasks
        elif body.model in ("graph", "foundation"):
            if not body.endpoints and not body.endpoint:
                # Not found, like an endpoint without a fast model: there is nothing to train.
                raise NotFound(f"{body.model} training needs `endpoint` (or `endpoints`): the "
                               f"endpoint(s) to train a {body.model} model for", code="no_endpoint")
            tasks = list(dict.fromkeys(body.endpoints or [body.endpoint]))
            missing = [e for e in tasks if e not in router.fast.models or e in hidden]
            if missing:
                # A name without a fast model is as missing as an unknown one: 404.
                raise NotFound(f"{body.model} training needs endpoints with fast models, whose "
                               f"curated data and split it reuses (missing: {', '.join(missing)})",
                               code="no_fast_model")
            params["tasks"], params["endpoint"] = tasks, tasks[0]
        elif body.model == "transformer":
            if not body.endpoint or body.endpoint not in router.fast.models or body.endpoint in hidden:
                raise NotFound("transformer training needs `endpoint` with a fast model, whose "
                               "curated data and split it reuses", code="no_fast_model")
        elif body.dataset:
            params.setdefault("endpoint", body.endpoint)
            manifest = _dataset(request, body.dataset, caller).manifest
            if not body.endpoint:
                params["endpoint"] = manifest.get("endpoint_suggestion", body.dataset)
        elif not (body.upload_id and body.label_col and body.endpoint):
            raise InvalidInput("train needs dataset, or upload_id with label_col and endpoint",
                               code="incomplete_training_job")
        if body.bases:
            if body.model != "gbm":
                raise InvalidInput("bases are for fast models (model gbm)", code="invalid_base")
            names = list(dict.fromkeys(body.bases))
            if "auto" in names and names != ["auto"]:
                raise InvalidInput("bases: auto chooses among every bundled endpoint; name it alone",
                                   code="invalid_base")
            if names != ["auto"]:
                # Another key's private endpoint is as missing here as everywhere.
                missing = [n for n in names if n not in router.fast.models or n in hidden]
                if missing:
                    raise NotFound(f"bases must be endpoints with fast models, or auto alone "
                                   f"(not: {', '.join(missing)})", code="no_base")
            params["bases"] = names
        if body.model == "transformer" and not caller.admin:
            # The base reaches the hub, never this machine's files (checked again by the job).
            from molserve.operations.training import DEFAULT_BASE, check_hub_base

            check_hub_base(body.base or DEFAULT_BASE)
            params["base_from"] = "hub"
        from molserve.registry.store import validate_endpoint_name

        try:
            validate_endpoint_name(params["endpoint"])
        except ValueError as error:
            raise InvalidInput(str(error), code="invalid_endpoint_name") from None
        # What a job publishes (a new version of each endpoint a graph or foundation job trains,
        # else of `endpoint`) must be the caller's to publish; another key's private endpoints
        # are missing to it (above), as they are everywhere.
        publishes = params["tasks"] if body.model in ("graph", "foundation") else [params["endpoint"]]
        for endpoint in publishes:
            may_publish(router.registry, caller, endpoint)
        params["owner"] = caller.owner
        if not caller.admin:  # the registry refuses the version unless the key owns the endpoint
            params["publish_as"] = caller.owner
        params["visibility"] = body.visibility or ("public" if caller.admin else "private")
        params["training_data"] = "upload" if body.upload_id else "dataset" if body.dataset else "registry"
    token, token_hash = new_job_token() if caller.key is None else (None, None)
    try:  # counted again with the insert: two submissions at once cannot both pass the quota
        job = runner.store.create(body.kind, params, owner=caller.owner, token_hash=token_hash,
                                  max_queued=limit)
    except QuotaFull as full:
        raise _quota("queued_jobs", full.used, limit, f"{caller.owner} has {full.used} queued jobs, "
                     "its quota; wait for some to start or cancel them") from None
    runner.wake()
    request.app.state.metrics.jobs_submitted.labels(body.kind).inc()
    answer = {**_public(job), "url": f"/v1/jobs/{job['id']}"}
    if token is not None:  # shown this once; the store keeps its hash
        answer["job_token"] = token
    return JSONResponse(answer, status_code=202)


@router.get("/v1/jobs", response_model=list[Job], responses=documented(*AUTH, 422, 503),
            summary="Recent jobs: the key's own (every job for an admin key)")
async def list_jobs(request: Request, limit: int = Query(50, ge=1, le=500)) -> JSONResponse:
    caller = job_reader(request)
    store = _runner(request).store
    if caller.admin:
        jobs = store.list(limit)
    elif caller.key is None:  # anonymous jobs are reached one by one, with their tokens
        jobs = []
    else:
        jobs = store.list(limit, owner=caller.owner)
    return JSONResponse([_public(j) for j in jobs])


# An anonymous job is opened by its token (returned when it was submitted), sent as a header so
# it stays out of URLs and access logs.
JobToken = Header(None, alias=TOKEN_HEADER, description="An anonymous job's token (from its submission).")


@router.get("/v1/jobs/{job_id}", response_model=JobWithLogs, responses=documented(*AUTH, 404, 422, 503),
            summary="State, progress (fraction, step, ETA, metrics so far) and recent logs")
async def get_job(job_id: str, request: Request, job_token: str | None = JobToken) -> JSONResponse:
    job = _visible_job(request, job_id, job_reader(request, job_token))
    return JSONResponse({**_public(job), "logs": _runner(request).store.logs(job_id, 50)})


@router.post("/v1/jobs/{job_id}/cancel", response_model=Job, responses=documented(*AUTH, 404, 422, 503),
             summary="Cancel a job; it stays listed, in state cancelled once it has stopped")
# Cancelling is not deleting (the job and its logs stay readable): DELETE is kept for existing
# clients only.
@router.delete("/v1/jobs/{job_id}", response_model=Job, responses=documented(*AUTH, 404, 422, 503),
               deprecated=True, summary="Cancel a job (use POST /v1/jobs/{job_id}/cancel)")
async def cancel_job(job_id: str, request: Request, job_token: str | None = JobToken) -> JSONResponse:
    job = _visible_job(request, job_id, job_reader(request, job_token))
    runner = _runner(request)
    cancelled = runner.cancel(job_id)
    runner.wake()
    return JSONResponse(_public(cancelled or job))


@router.get("/v1/jobs/{job_id}/result", response_class=FileResponse,
            responses={200: {"content": {"text/csv": {"schema": {"type": "string"}}},
                             "description": "One row per input molecule"},
                       **documented(*AUTH, 404, 409, 422, 503)},
            summary="Download a finished screen's CSV")
async def job_result(job_id: str, request: Request, job_token: str | None = JobToken):
    job = _visible_job(request, job_id, job_reader(request, job_token))
    result = job.get("result") or {}
    if result.get("expired"):
        raise NotFound(f"job {job_id}'s result was deleted after the retention period",
                       code="result_expired")
    if job["state"] != "succeeded" or not result.get("path"):
        raise Conflict(f"job {job_id} is {job['state']} and has no result file", code="no_result")
    headers = {"content-disposition": f'attachment; filename="molserve-{job_id}.csv"'}
    from molserve.storage import is_object_url

    if is_object_url(result["path"]):  # written by a job on any machine of the fleet
        from molserve.storage import open_url

        def chunks():
            with open_url(result["path"]) as handle:
                while block := handle.read(1 << 20):
                    yield block

        return StreamingResponse(chunks(), media_type="text/csv", headers=headers)
    return FileResponse(result["path"], media_type="text/csv", filename=f"molserve-{job_id}.csv")
