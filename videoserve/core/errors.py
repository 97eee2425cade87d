"""What the core says when it cannot do what was asked, in its own terms: no HTTP status here.

Each kind of refusal is a class; ``videoserve.http.errors`` maps each class to its status and
the one JSON error shape, once, at the edge. The core raises them from the service, the runner,
the model-switch manager and the sampling rules; a caller that is not HTTP (a test, a script)
catches them by kind.
"""

from __future__ import annotations

import re


class ServiceError(Exception):
    """A request the service refuses or could not carry out.

    ``param`` names the request field at fault, ``code`` is a stable machine-readable reason,
    ``retry_after_s`` says when trying again may succeed (busy, unavailable), and ``type`` is
    the OpenAI-style error family a client sees (``invalid_request_error`` or ``server_error``).
    """

    type = "invalid_request_error"

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None,
                 retry_after_s: int | None = None, type: str | None = None):
        super().__init__(message)
        self.message, self.param, self.code = message, param, code
        self.retry_after_s = retry_after_s
        if type is not None:
            self.type = type


class InvalidInput(ServiceError):
    """A field's value is well-formed but not acceptable (out of range, wrong for the model)."""


class InvalidRequest(ServiceError):
    """The request itself is malformed or names something it cannot (a bad path, a cursor
    that is not in the list)."""


class Forbidden(ServiceError):
    """The caller may not do this, whoever asks the same way."""


class NotFound(ServiceError):
    """What the request names does not exist here (a job, a model, a file)."""


class Conflict(ServiceError):
    """Not in the state the request needs (a job not completed, a model being switched)."""


class Busy(ServiceError):
    """Too much work already queued for this caller or task; retry after ``retry_after_s``."""


class Unavailable(ServiceError):
    """The service cannot take this now (shutting down, a model unloaded, out of capacity)."""


class JobFailed(ServiceError):
    """The work was accepted and failed while it ran."""


class TimedOut(ServiceError):
    """The work did not finish within the time the caller was promised."""


# What a failure text from Ray or an engine may carry that clients must not see: file paths,
# addresses, process and actor ids, the Ray namespace. The full text goes to the log.
_INTERNALS = [
    (re.compile(r"\b(pid|ip|node_ip|namespace|actor_id|worker_id|node_id|job_id|task_id|"
                r"replica_id|name)\s*[=:]\s*['\"]?[^\s,'\")]+", re.IGNORECASE), r"\1=<hidden>"),
    (re.compile(r"\b(?:\d{1,3}\.){3}\d{1,3}(?::\d+)?\b"), "<address>"),
    (re.compile(r"(?<![\w.:/-])(?:~|\.{1,2})?/(?:[\w.@+~-]+/)*[\w.@+~-]*"), "<path>"),
    (re.compile(r"\b[0-9a-f]{16,}\b", re.IGNORECASE), "<id>"),
    (re.compile(r"\bpid \d+\b", re.IGNORECASE), "pid <hidden>"),
]


def public_reason(text: str, limit: int = 500) -> str:
    """``text`` without server internals (paths, addresses, pids, ids), for a client."""
    for pattern, replacement in _INTERNALS:
        text = pattern.sub(replacement, text)
    return text[:limit]
