"""Quieter access logs for probes and polls: /ready, /health and /metrics, a job's GET polls
(/v1/videos/{id}, its /preview and /events) and the backend's readiness calls on the ingress
(``start_status``, twice a second while the models load) are logged at DEBUG; job changes are
the INFO lines (``videoserve.core.runner``; ``forward_service_logs`` lets them out of a replica).

Ray Serve 2.60 writes one INFO access line per request from the replica that handled it
(``ray.serve`` logger, ``serve_access_log`` set on the record, the matched route in ``route``),
to the replica's log file and to its stderr, which Ray forwards to the backend's console. The
launcher polls /ready every second and Prometheus scrapes /metrics, so those lines would bury
the others. The filter lowers them to DEBUG: dropped at the default INFO level, kept (as DEBUG)
when the Serve logger is set to DEBUG.

Serve's HTTP proxy writes its own access line per request to its log file only
(``logs/serve/proxy_*.log``, never to the console); the proxy runs inside Serve's own actor,
where no application code runs, so those lines stay.
"""

from __future__ import annotations

import logging

SERVE_LOGGER = "ray.serve"
QUIET_PATHS = ("/ready", "/health", "/metrics")
# Routes quiet for GET (and HEAD) only: a client watching a job polls them; DELETE and POST of the
# same routes are changes, and stay at INFO.
QUIET_POLLS = ("/v1/videos/{job_id}", "/v1/videos/{job_id}/preview",
               "/v1/videos/{job_id}/events")
POLL_METHODS = ("GET", "HEAD")
# Deployment-handle calls on the ingress that poll ("CALL start_status OK 3.1ms").
QUIET_CALLS = ("start_status", "ready")
SERVICE_LOGGER = "videoserve"


class ProbeAccessFilter(logging.Filter):
    """Lowers Serve's access lines for ``paths`` to DEBUG (and drops them below DEBUG)."""

    def __init__(self, paths: tuple[str, ...] = QUIET_PATHS,
                 polls: tuple[str, ...] = QUIET_POLLS, calls: tuple[str, ...] = QUIET_CALLS):
        super().__init__()
        self.paths, self.polls, self.calls = paths, polls, calls

    def quiet(self, record: logging.LogRecord) -> bool:
        if not getattr(record, "serve_access_log", False):
            return False
        # The route is the app's route pattern with the app's route prefix in front
        # ("/ready", "/myapp/ready"), never a client's raw path.
        route = str(getattr(record, "route", "") or "")
        if any(route == path or route.endswith(path) for path in self.paths):
            return True
        # The line: "[CLIENT ]METHOD ROUTE STATUS LATENCY"; a handle call's METHOD is CALL and
        # its ROUTE the method called.
        words = record.getMessage().split()
        if route and route in words[1:] and any(route.endswith(p) for p in self.polls):
            return words[words.index(route) - 1] in POLL_METHODS
        return "CALL" in words[:-1] and words[words.index("CALL") + 1] in self.calls

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno <= logging.DEBUG or not self.quiet(record):
            return True
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)


def quiet_probe_access_logs(logger_name: str = SERVE_LOGGER) -> None:
    """Install the filter on Serve's logger in this process (once; Serve replaces the logger's
    handlers when it configures logging, but keeps its filters)."""
    logger = logging.getLogger(logger_name)
    if not any(isinstance(f, ProbeAccessFilter) for f in logger.filters):
        logger.addFilter(ProbeAccessFilter())


class ToServeLogger(logging.Handler):
    """Hands records to Serve's logger, whose handlers write a replica's log file and stderr
    (which Ray forwards to the backend's console)."""

    def __init__(self, target: str = SERVE_LOGGER):
        super().__init__()
        self.target = target

    def emit(self, record: logging.LogRecord) -> None:
        logging.getLogger(self.target).handle(record)


def forward_service_logs(logger_name: str = SERVICE_LOGGER, target: str = SERVE_LOGGER) -> None:
    """In a Serve replica: the service's own INFO lines (jobs queued, started and finished,
    models loaded) go where Serve's do; without this a replica drops them (its root logger has
    no handler). Once per process."""
    logger = logging.getLogger(logger_name)
    if any(isinstance(h, ToServeLogger) for h in logger.handlers):
        return
    logger.addHandler(ToServeLogger(target))
    if logger.level == logging.NOTSET:
        logger.setLevel(logging.INFO)
    logger.propagate = False
