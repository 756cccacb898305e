"""What a message trigger does with an event that failed: retry it, later, or give it up to a
dead letter. One policy for every broker (dramatiq's retries middleware, not a loop per kind).

A **failure** is a handler exception, an event timeout, a worker crash, or an event refused
because the replica is shutting down (issue 10; Nuclio counts all but the first as successes and
loses them). A handler's answer of any status is a success, as in Nuclio, unless the function
sets `nubis.io/fail-on-status: "5xx"`, which makes an answer of 500-599 a failure too.

Attempts and backoff come from the trigger's attributes (Nubis extensions, the same for every
message kind): `maxAttempts` (default 3: the first try and two retries), `retryBackoff` (seconds
before the first retry, default 1, doubling each time) and `retryBackoffMax` (default 30); the
backoffs as numbers of seconds or as Go durations, as Nuclio writes them (`2s`).
"""

from __future__ import annotations

import contextlib
import enum
from dataclasses import dataclass
from typing import Any

from nubis.errors import SpecError
from nubis.processor.events import Response
from nubis.processor.outcomes import Outcome
from nubis.spec.durations import parse_duration

FAIL_ON_STATUS_ANNOTATION = "nubis.io/fail-on-status"
DEFAULT_MAX_ATTEMPTS = 3
DEFAULT_BACKOFF = 1.0
DEFAULT_BACKOFF_MAX = 30.0
#: the most attempts a trigger may ask for (an event is held by its replica meanwhile)
MAX_ATTEMPTS = 100


class Verdict(enum.Enum):
    #: handled: acknowledge it
    DONE = "done"
    #: failed, attempts remain: try again after `Policy.delay(attempt)`
    RETRY = "retry"
    #: failed for the last time: to the dead letter, then acknowledge it
    GIVE_UP = "give up"
    #: not the handler's doing (no worker, the replica stopping): back to the broker untouched
    RETURN = "return"


@dataclass(frozen=True)
class Policy:
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    backoff: float = DEFAULT_BACKOFF
    backoff_max: float = DEFAULT_BACKOFF_MAX
    #: answers of 500-599 count as failures (`nubis.io/fail-on-status: "5xx"`)
    fail_on_5xx: bool = False

    def judge(self, response: Response, attempt: int, stopping: bool = False) -> Verdict:
        """What to do after attempt number `attempt` (1 for the first) ended with `response`;
        `stopping`: the replica is draining, so a failed event goes back to its broker for the
        next replica instead of waiting here for a retry."""
        if failure(response, self.fail_on_5xx) is None:
            return Verdict.DONE
        if response.outcome in (Outcome.BUSY, Outcome.SHUTTING_DOWN) or stopping:
            return Verdict.RETURN
        return Verdict.RETRY if attempt < self.max_attempts else Verdict.GIVE_UP

    def delay(self, attempt: int) -> float:
        """Seconds to wait before attempt `attempt + 1`."""
        return float(min(self.backoff_max, self.backoff * 2 ** (attempt - 1)))


def failure(response: Response, fail_on_5xx: bool) -> str | None:
    """Why `response` is a failure, or None when it is a success."""
    if response.outcome is not Outcome.HANDLED:
        return f"{response.outcome.value}: {_error_text(response)}"
    if fail_on_5xx and 500 <= response.status <= 599:
        return f"the handler answered {response.status} (nubis.io/fail-on-status is 5xx): {_error_text(response)}"
    return None


def _error_text(response: Response) -> str:
    text = response.body[:500].decode("utf-8", "replace")
    return text or f"status {response.status}"


def policy_of(attributes: dict[str, Any], annotations: dict[str, str] | None, field: str) -> Policy:
    """The policy a trigger's attributes and the function's annotations ask for; SpecError at
    `<field>.attributes.<name>` for a bad value."""
    attempts = _number(attributes, "maxAttempts", DEFAULT_MAX_ATTEMPTS, field, whole=True)
    if not 1 <= attempts <= MAX_ATTEMPTS:
        raise SpecError(
            "maxAttempts out of range",
            field=f"{field}.attributes.maxAttempts",
            expected=f"1 to {MAX_ATTEMPTS}",
            found=str(attempts),
        )
    backoff = _number(attributes, "retryBackoff", DEFAULT_BACKOFF, field)
    backoff_max = _number(attributes, "retryBackoffMax", max(DEFAULT_BACKOFF_MAX, backoff), field)
    fail_on = (annotations or {}).get(FAIL_ON_STATUS_ANNOTATION, "")
    if fail_on not in ("", "5xx"):
        raise SpecError(
            "unknown fail-on-status value",
            field=f"metadata.annotations.{FAIL_ON_STATUS_ANNOTATION}",
            expected='"5xx" (or no annotation)',
            found=fail_on,
        )
    return Policy(int(attempts), backoff, backoff_max, fail_on == "5xx")


def _number(attributes: dict[str, Any], name: str, default: float, field: str, *, whole: bool = False) -> float:
    value = attributes.get(name, default)
    if isinstance(value, str) and not whole:
        # Nuclio writes its backoffs as Go durations (`retryBackoff: 2s`)
        with contextlib.suppress(SpecError):  # not one: refused below, saying both forms
            seconds = parse_duration(value, field=f"{field}.attributes.{name}")
            value = default if seconds is None else seconds
    kinds = (int,) if whole else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds) or value < 0:
        raise SpecError(
            f"{name} must be a {'whole ' if whole else ''}number of {'attempts' if whole else 'seconds'}",
            field=f"{field}.attributes.{name}",
            expected="a whole number" if whole else "a number of seconds, 0 or more, or a Go duration (2s)",
            found=repr(value),
        )
    return float(value)
