"""Who is calling and what they may do: authorization by scope with per-key rate limits (the
statuses these answer are `molserve.gateway.errors.AUTH`), and ownership of uploads, jobs and
results.

Every upload and job belongs to the key that created it (`Caller.owner`). Another key asking for
it gets the same 404 as for something that does not exist, so ids leak nothing; admin keys see
everything. Callers without a key may predict (unless MOLSERVE_REQUIRE_KEY_FOR_READS), but may
upload and screen only when MOLSERVE_ANONYMOUS_JOBS is on; such a job is then readable only
with the job token returned when it was submitted (`X-Job-Token`), which the server keeps as a
SHA-256 hash.
"""

from __future__ import annotations

import hmac
import secrets
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request

from molserve.gateway.errors import Forbidden, MissingCredentials, RateLimited
from molserve.gateway.keys import KeyRecord, digest

# The owner of everything callers without a key create (they share one quota).
ANONYMOUS = "anonymous"
TOKEN_HEADER = "X-Job-Token"


@dataclass(frozen=True)
class Caller:
    """The key a request came with (None: anonymous) and the job token it presented, if any."""

    key: KeyRecord | None
    token: str | None = None

    @property
    def owner(self) -> str:
        return f"key:{self.key.id}" if self.key is not None else ANONYMOUS

    @property
    def admin(self) -> bool:
        return self.key is not None and "admin" in self.key.scopes

    def sees(self, owner: str | None, token_hash: str | None = None) -> bool:
        """Whether this caller may see a job or upload of `owner` (None: one stored before
        jobs had owners, which only admins see). Anonymous things need their token."""
        if self.admin:
            return True
        if owner == ANONYMOUS:
            return (token_hash is not None and self.token is not None
                    and hmac.compare_digest(digest(self.token), token_hash))
        return owner is not None and self.key is not None and owner == self.owner


def new_job_token() -> tuple[str, str]:
    """A job token (shown once, to the submitter) and the hash the store keeps."""
    token = "jt_" + secrets.token_urlsafe(32)
    return token, digest(token)


def presented_key(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    if header.lower().startswith("bearer "):
        return header[7:].strip()
    return request.headers.get("x-api-key")


def authorize(request: Request, scope: str | None, *, anonymous: bool | None = None) -> KeyRecord | None:
    """The caller's key record, or None for an anonymous caller where `anonymous` allows one
    (by default: reads and predictions, unless the server requires a key for those). A presented
    key is always checked (an invalid one is refused even where anonymous callers are not);
    `scope` None accepts a valid key of any scope."""
    settings = request.app.state.settings
    keys = request.app.state.keys
    key = presented_key(request)
    if anonymous is None:
        anonymous = scope in ("read", "predict") and not settings.gateway.require_key_for_reads
    if key is None:
        if anonymous:
            return None
        if not keys.configured:
            raise Forbidden("this route needs an API key and none is configured on the server "
                            "(MOLSERVE_API_KEY or MOLSERVE_API_KEYS_FILE)", code="writes_disabled")
        raise MissingCredentials("send the API key as 'Authorization: Bearer <key>' or 'X-API-Key'")
    record = keys.verify(key)
    if record is None:
        raise Forbidden("the API key is not valid", code="invalid_api_key")
    # Where anyone may call, a valid key needs no particular scope (it only counts against its
    # own rate); elsewhere the key must carry the scope.
    if scope is not None and not anonymous and not record.allows(scope):
        raise Forbidden(f"key {record.id} ({record.name}) lacks the '{scope}' scope",
                        code="insufficient_scope")
    wait = keys.throttle(record)
    if wait > 0:
        raise RateLimited(f"key {record.id} is limited to {record.rate_per_minute} requests/minute",
                          details={"retry_after_s": round(wait, 2)})
    return record


def job_submitter(request: Request, scope: str) -> Caller:
    """Who uploads or submits: a key with `scope`, or anyone when anonymous jobs are on (and
    the scope is not `train`: training always needs a key)."""
    open_ = request.app.state.settings.jobs.anonymous_jobs and scope != "train"
    return Caller(authorize(request, scope, anonymous=open_))


def job_reader(request: Request, token: str | None = None) -> Caller:
    """Who reads, lists or cancels jobs: any valid key (ownership decides what it sees), or an
    anonymous caller where reads are open or anonymous jobs are on (it sees only what its job
    token opens)."""
    settings = request.app.state.settings
    open_ = not settings.gateway.require_key_for_reads or settings.jobs.anonymous_jobs
    return Caller(authorize(request, None, anonymous=open_), token)


def require_read(request: Request) -> None:
    authorize(request, "read")


def require_predict(request: Request) -> None:
    authorize(request, "predict")


def reader(request: Request) -> Caller:
    """A read route's caller (as `require_read`), kept: what it may see depends on who it is."""
    return Caller(authorize(request, "read"))


def predictor(request: Request) -> Caller:
    """A prediction's caller (as `require_predict`)."""
    return Caller(authorize(request, "predict"))


# Route parameters that name the caller (FastAPI resolves them with the dependency).
ReadCaller = Annotated[Caller, Depends(reader)]
PredictCaller = Annotated[Caller, Depends(predictor)]


def hidden_from(request: Request, caller: Caller) -> frozenset[str]:
    """The endpoints `caller` may not see: other keys' private ones (not for admins)."""
    return request.app.state.router.hidden_from(caller.owner if caller.key else None, caller.admin)


def redacted_for(request: Request, caller: Caller) -> frozenset[str]:
    """Endpoints whose models learned from another key's upload: the caller may have their
    answers (the owner published them) but not the training structures (each answer's
    `nearest_training_smiles`) nor the server's paths."""
    if caller.admin:
        return frozenset()
    owner = caller.owner if caller.key else None
    return frozenset(name for name, model in request.app.state.router.fast.models.items()
                     if model.manifest.get("training_data") == "upload"
                     and model.manifest.get("owner") != owner)


def require_train(request: Request) -> None:
    authorize(request, "train")


def require_key(request: Request) -> None:
    """Write routes that change the registry: the admin scope."""
    authorize(request, "admin")


def may_publish(registry, caller: Caller, endpoint: str) -> None:
    """Refuse (403) a training job that would publish a version of an endpoint the caller does
    not own: a bundled endpoint, or one another key (or the operator) trained first. A new name
    becomes the caller's; admins publish anywhere. Checked again before the job registers."""
    if caller.admin:
        return
    from molserve.data.catalog import bundled_endpoints

    owned = (endpoint not in bundled_endpoints()
             and (registry.highest_allocated(endpoint) == 0 or registry.owner(endpoint) == caller.owner))
    if not owned:
        raise Forbidden(f"the endpoint name {endpoint!r} is taken (a bundled endpoint, or another "
                        "key's, or the operator's): publishing a version of it needs an admin key; "
                        "train under a name of your own", code="endpoint_not_owned")
