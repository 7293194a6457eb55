"""The project's own errors: what operations raise, and what only the faces translate.

Operations (screening, training, datasets, jobs) and the layers below them raise these; the CLI
turns them into one line on stderr and an exit code, the HTTP gateway into a status and a JSON
body (`{"error": code, "message": ..., "details": ...}`). Neither face needs to know which module
raised, and no module below the faces knows about exit codes or HTTP statuses.

Each error has a machine-readable `code` (stable, snake_case) and a message a chemist can act on.
"""

from __future__ import annotations

from typing import Any


class MolserveError(Exception):
    """Base of every error molserve raises on purpose."""

    code = "error"

    def __init__(self, message: str, *, code: str | None = None, details: Any = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.details = details

    def __str__(self) -> str:
        return self.message


class InvalidInput(MolserveError, ValueError):
    """The caller's input cannot be used as given (a bad option, a malformed file, a label that
    is neither a class nor a number). Fix the input and try again."""

    code = "invalid_input"


class NotFound(MolserveError, LookupError):
    """A named thing (endpoint, model version, dataset, job, upload, file) does not exist."""

    code = "not_found"


class Conflict(MolserveError):
    """The request is valid but clashes with current state (a job already finished)."""

    code = "conflict"


class TooLarge(MolserveError):
    """The input exceeds a configured bound (batch size, upload size, rows)."""

    code = "too_large"


class Unavailable(MolserveError):
    """The service cannot answer right now (overloaded, a model still training); retrying later
    may work. `details` may carry `retry_after_s`."""

    code = "unavailable"


class StorageError(MolserveError):
    """A file or directory molserve must write cannot be written (full disk, read only)."""

    code = "storage_error"
