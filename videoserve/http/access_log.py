"""Quieter access logs for probes: /ready, /health and /metrics are logged at DEBUG.

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


class ProbeAccessFilter(logging.Filter):
    """Lowers Serve's access lines for ``paths`` to DEBUG (and drops them below DEBUG)."""

    def __init__(self, paths: tuple[str, ...] = QUIET_PATHS):
        super().__init__()
        self.paths = paths

    def quiet(self, record: logging.LogRecord) -> bool:
        if not getattr(record, "serve_access_log", False):
            return False
        # The route is the app's route pattern with the app's route prefix in front
        # ("/ready", "/myapp/ready"), never a client's raw path.
        route = str(getattr(record, "route", "") or "")
        return any(route == path or route.endswith(path) for path in self.paths)

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
