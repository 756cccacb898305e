"""One exception hierarchy for Nubis.

Every error carries a message written for the user who has to act on it: what was wrong,
where (file, line, field), what was expected and what was found. Errors are grouped by what
the caller does next: fix the input (`SpecError`), fix the environment (`BuildError`), or
retry/restart (`WorkerError`).

One branch decides retries, as kopf's does: a `TemporaryError` says "the same request may succeed
later" (an agent restarting, a database blip) and the reconciler retries it with backoff, the
function staying `building`; every other error is permanent, and `PermanentError` names that
explicitly where a caller might otherwise guess (a deploy ends in `error` with the message).
Control-plane errors carry the HTTP status the API answers with (`ApiError.status_code`); the
API maps them in one place (`nubis.control.api.responses.from_exception`).
"""

from __future__ import annotations


class NubisError(Exception):
    """Root of every error Nubis raises on purpose; `str(err)` is the user-facing message."""

    #: the process exit code a CLI command uses when this error ends it
    exit_code = 1

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class TemporaryError(NubisError):
    """Retrying the same operation later may succeed: what failed is outside it and recovers.

    `delay`: the seconds the caller should wait first when the error knows (a Retry-After), or
    None to use the caller's own backoff.
    """

    def __init__(self, message: str, *, delay: float | None = None) -> None:
        super().__init__(message)
        self.delay = delay


class PermanentError(NubisError):
    """Retrying the same operation fails the same way: its input or environment must change."""


class SpecError(PermanentError):
    """A function configuration is invalid; the message names file, line, field, expected and found."""

    exit_code = 2

    def __init__(
        self,
        message: str,
        *,
        file: str | None = None,
        line: int | None = None,
        field: str | None = None,
        expected: str | None = None,
        found: object = None,
    ) -> None:
        self.file = file
        self.line = line
        self.field = field
        self.expected = expected
        self.found = found
        super().__init__(self._compose(message))

    def _compose(self, message: str) -> str:
        where = ""
        if self.file:
            where = self.file + (f":{self.line}" if self.line else "")
        parts = [f"{where}: " if where else ""]
        if self.field:
            parts.append(f"{self.field}: ")
        parts.append(message)
        if self.expected is not None:
            parts.append(f" (expected {self.expected}")
            parts.append(f", found {self.found!r})" if self.found is not None else ")")
        return "".join(parts)


class BuildError(PermanentError):
    """Building a function's environment failed (installer error, missing interpreter, timeout)."""

    exit_code = 3


class WorkerError(NubisError):
    """A worker process could not be started or died in a way the pool cannot hide."""

    exit_code = 4


class ProcessorError(NubisError):
    """A processor (one replica) could not start: port taken, trigger misconfigured."""

    exit_code = 5


class ApiError(NubisError):
    """A request cannot be done as asked; `status_code` is the HTTP status the API answers with."""

    status_code = 500


class NotFound(ApiError):
    """The named object does not exist."""

    status_code = 404


class Conflict(ApiError):
    """The object exists already, or changed since the caller read it (resourceVersion)."""

    status_code = 409


class PreconditionFailed(ApiError):
    """The object is not in a state that allows the operation (missing project, non-empty project)."""

    status_code = 412


class BadRequest(ApiError):
    """The request itself is malformed or invalid; the message says what to change.

    `status_code` may be narrowed per instance (413 for an oversized body).
    """

    status_code = 400

    def __init__(self, message: str, *, status_code: int | None = None) -> None:
        super().__init__(message)
        if status_code is not None:
            self.status_code = status_code
