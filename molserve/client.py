"""A small client of a running gateway's jobs API: upload a file, submit a screen or a training
job, read, list and cancel jobs, follow one until it ends, download a screen's result.

Every HTTP error becomes a `molserve.errors` error carrying the gateway's own message (404:
NotFound, 409: Conflict, 413: TooLarge, 400/415/422: InvalidInput, 5xx: Unavailable or
StorageError), and a gateway that cannot be reached is `Unavailable`, so a face prints one line
for either. A job submitted without a key comes back with a job token (the only way to read it
again); the client remembers it and sends it with every later call about that job. httpx is
imported when a client is made, not with this module.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from molserve.errors import (
    Conflict,
    InvalidInput,
    MolserveError,
    NotFound,
    StorageError,
    TooLarge,
    Unavailable,
)

TERMINAL = frozenset({"succeeded", "failed", "cancelled"})
_BY_STATUS: dict[int, type[MolserveError]] = {
    400: InvalidInput, 404: NotFound, 409: Conflict, 413: TooLarge, 415: InvalidInput,
    422: InvalidInput, 502: Unavailable, 503: Unavailable, 504: Unavailable, 507: StorageError}


@dataclass(frozen=True)
class Upload:
    upload_id: str
    filename: str
    bytes: int


@dataclass(frozen=True)
class Job:
    """A job as the gateway reports it; `data` is its whole JSON body (shown to users as is)."""

    data: dict[str, Any]

    @property
    def id(self) -> str:
        return self.data["id"]

    @property
    def kind(self) -> str:
        return self.data["kind"]

    @property
    def state(self) -> str:
        return self.data["state"]

    @property
    def progress(self) -> float:
        return float(self.data.get("progress") or 0.0)

    @property
    def step(self) -> str:
        return self.data.get("step") or ""

    @property
    def eta_s(self) -> float | None:
        return self.data.get("eta_s")

    @property
    def result_url(self) -> str | None:
        return self.data.get("result_url")

    @property
    def token(self) -> str | None:
        """An anonymous job's token (only in the answer to its submission)."""
        return self.data.get("job_token")

    @property
    def finished(self) -> bool:
        return self.state in TERMINAL


class GatewayClient:
    """The jobs API of the gateway at `url` (e.g. http://127.0.0.1:8000), with an API key when
    the gateway requires one. Use as a context manager, or call `close()`."""

    def __init__(self, url: str, api_key: str | None = None, *, timeout_s: float = 60.0,
                 transport: Any = None, job_tokens: dict[str, str] | None = None) -> None:
        import httpx

        if not url.startswith(("http://", "https://")):
            raise InvalidInput(f"gateway URL {url!r} must start with http:// or https://")
        self.url = url.rstrip("/")
        headers = {"x-api-key": api_key} if api_key else {}
        self._http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout_s,
                                  transport=transport)
        self.job_tokens: dict[str, str] = dict(job_tokens or {})

    def _about(self, job_id: str) -> dict[str, Any]:
        """Request arguments for a call about one job: its token, when the client has one."""
        token = self.job_tokens.get(job_id)
        return {"headers": {"x-job-token": token}} if token else {}

    def __enter__(self) -> GatewayClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    # HTTP --------------------------------------------------------------------------------
    def _request(self, method: str, path: str, **kwargs: Any) -> Any:
        import httpx

        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.HTTPError as error:
            raise self._unreachable(error) from None
        self._check(response)
        return response.json()

    def _unreachable(self, error: Exception) -> Unavailable:
        import httpx

        if isinstance(error, httpx.TimeoutException):
            return Unavailable(f"the gateway at {self.url} did not answer in time ({error}); retry "
                               "later", code="gateway_timeout")
        return Unavailable(f"cannot reach the gateway at {self.url} ({error or type(error).__name__}); "
                           "is `molserve serve` running there? (--url, MOLSERVE_URL)",
                           code="gateway_unreachable")

    @staticmethod
    def _check(response: Any) -> None:
        if response.status_code < 400:
            return
        code, message = None, response.text
        try:
            body = response.json()
            if isinstance(body, dict):
                code = body.get("error") if isinstance(body.get("error"), str) else None
                message = body.get("message") or body.get("detail") or message
        except ValueError:
            pass
        error = _BY_STATUS.get(response.status_code)
        if error is None:
            error = Unavailable if response.status_code >= 500 else MolserveError
        raise error(f"the gateway answered HTTP {response.status_code}: {message}", code=code,
                    details={"status": response.status_code})

    # Jobs --------------------------------------------------------------------------------
    def upload(self, path: Path) -> Upload:
        """Send a CSV/TSV/SMI/SDF file; its id is what a job names as `upload_id`."""
        path = Path(path)
        if not path.is_file():
            raise NotFound(f"no such file: {path}")
        with open(path, "rb") as handle:
            body = self._request("POST", "/v1/uploads", files={"file": (path.name, handle)})
        return Upload(upload_id=body["upload_id"], filename=body.get("filename", path.name),
                      bytes=int(body.get("bytes", 0)))

    def submit(self, kind: str, **fields: Any) -> Job:
        """Submit a job of `kind` (screen, train) with the request's fields; None fields are left
        out, so the gateway's defaults apply."""
        body = {"kind": kind, **{k: v for k, v in fields.items() if v is not None}}
        job = Job(self._request("POST", "/v1/jobs", json=body))
        if job.token:
            self.job_tokens[job.id] = job.token
        return job

    def submit_screen(self, *, upload_id: str | None = None, dataset: str | None = None,
                      endpoints: list[str] | None = None) -> Job:
        return self.submit("screen", upload_id=upload_id, dataset=dataset, endpoints=endpoints or None)

    def submit_train(self, *, upload_id: str | None = None, dataset: str | None = None,
                     endpoint: str | None = None, label_col: str | None = None,
                     model: str | None = None, profile: str | None = None, split: str | None = None,
                     base: str | None = None) -> Job:
        return self.submit("train", upload_id=upload_id, dataset=dataset, endpoint=endpoint,
                           label_col=label_col, model=model, profile=profile, split=split, base=base)

    def get(self, job_id: str) -> Job:
        return Job(self._request("GET", f"/v1/jobs/{job_id}", **self._about(job_id)))

    def list(self) -> list[Job]:
        return [Job(job) for job in self._request("GET", "/v1/jobs")]

    def cancel(self, job_id: str) -> Job:
        return Job(self._request("POST", f"/v1/jobs/{job_id}/cancel", **self._about(job_id)))

    def follow(self, job_id: str, on_update: Callable[[Job], None] | None = None, *,
               interval_s: float = 0.5) -> Job:
        """Poll a job until it succeeds, fails or is cancelled; `on_update` sees every poll."""
        while True:
            job = self.get(job_id)
            if on_update is not None:
                on_update(job)
            if job.finished:
                return job
            time.sleep(interval_s)

    def download(self, url: str, destination: Path) -> Path:
        """Stream a result (`Job.result_url`) into `destination`, which appears only complete."""
        import httpx

        destination = Path(destination)
        partial = destination.with_name(destination.name + ".partial")
        parts = url.rstrip("/").split("/")
        about = self._about(parts[-2]) if len(parts) >= 2 and parts[-1] == "result" else {}
        try:
            with self._http.stream("GET", url, **about) as response:
                if response.status_code >= 400:
                    response.read()
                    self._check(response)
                with open(partial, "wb") as handle:
                    for block in response.iter_bytes():
                        handle.write(block)
        except httpx.HTTPError as error:
            partial.unlink(missing_ok=True)
            raise self._unreachable(error) from None
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
        os.replace(partial, destination)
        return destination

    def download_result(self, job_id: str, destination: Path) -> Path:
        """A finished screen's CSV into `destination` (Conflict while the job has none)."""
        return self.download(f"/v1/jobs/{job_id}/result", destination)
