"""Who may call each route of the gateway: one table, read by the authorization matrix
(tests/test_authorization.py) and by the fuzzing run's own check (tests/schemathesis_hooks.py).

A route the gateway serves and this table does not name fails the matrix test, so a new route
cannot ship without a stated rule.
"""

from __future__ import annotations

# (method, path template) -> rule
#   open     anyone, always (the page, health, metrics, the API document)
#   read     reads: anyone while reads are open, else a key with `read`
#   predict  predictions: anyone while reads are open, else a key with `predict`
#   admin    a key with `admin`
#   submit   uploads and jobs: a key with `predict` (`train` for training jobs); anonymous
#            callers only with MOLSERVE_ANONYMOUS_JOBS
#   any_key  any valid key (it sees its own jobs); anonymous callers where reads are open or
#            anonymous jobs are on (they see none)
#   owner    one job: its owner and admins; anyone else gets 404 (anonymous jobs: the token)
RULES: dict[tuple[str, str], str] = {
    ("GET", "/"): "open",
    ("GET", "/static"): "open",
    ("GET", "/guide"): "open",
    ("GET", "/healthz"): "open",
    ("GET", "/readyz"): "open",
    ("GET", "/metrics"): "open",
    ("GET", "/api/health"): "open",
    ("GET", "/openapi.json"): "open",
    ("GET", "/docs"): "open",
    ("GET", "/docs/oauth2-redirect"): "open",
    ("GET", "/redoc"): "open",
    ("GET", "/v1/endpoints"): "read",
    ("GET", "/v1/models"): "read",
    ("GET", "/v1/models/{endpoint}/{version}"): "read",
    ("GET", "/v1/status"): "read",
    ("GET", "/v1/depict"): "read",
    ("GET", "/v1/references"): "read",
    ("POST", "/v1/predict"): "predict",
    ("POST", "/v1/models/reload"): "admin",
    ("DELETE", "/v1/models/{endpoint}/{version}"): "admin",
    ("POST", "/v1/uploads"): "submit",
    ("POST", "/v1/jobs"): "submit",
    ("GET", "/v1/jobs"): "any_key",
    ("GET", "/v1/jobs/{job_id}"): "owner",
    ("POST", "/v1/jobs/{job_id}/cancel"): "owner",
    ("DELETE", "/v1/jobs/{job_id}"): "owner",
    ("GET", "/v1/jobs/{job_id}/result"): "owner",
}


def admitted(rule: str, scopes: frozenset[str] | None, *, reads_open: bool = True,
             anonymous_jobs: bool = False, needs: str = "predict") -> bool:
    """Whether a caller with `scopes` (None: no key) gets past authentication and scopes.
    `needs` is the scope a `submit` needs (`train` for a training job)."""
    anonymous = scopes is None
    admin = not anonymous and "admin" in scopes
    if rule == "open":
        return True
    if rule in ("read", "predict"):
        return reads_open or admin or (not anonymous and rule in scopes)
    if rule == "admin":
        return admin
    if rule == "submit":
        if anonymous:
            return anonymous_jobs and needs != "train"
        return admin or needs in scopes
    if rule in ("any_key", "owner"):
        return not anonymous or reads_open or anonymous_jobs
    raise ValueError(f"unknown rule {rule!r}")
