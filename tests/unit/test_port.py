"""The backend's HTTP port held by someone else: a clear error and exit 2, never a backend
that looks up but serves nothing, and a client that names the problem instead of crashing."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.conftest import free_port
from videoserve.client import BackendError, VideoClient
from videoserve.core.config import ConfigError
from videoserve.serve.backend_cli import check_port_free, confirm_serving, main


def serve(body: bytes, content_type: str) -> Iterator[int]:
    """An HTTP server on a free port answering every GET with 200 and ``body``."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            self.send_response(200)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


@pytest.fixture
def metrics_exporter() -> Iterator[int]:
    """What Ray's metrics exporter does on whatever path it is asked: 200 and Prometheus text."""
    yield from serve(b"# HELP python_gc_objects_collected_total Objects collected\n",
                     "text/plain; version=0.0.4; charset=utf-8")


@pytest.fixture
def healthy_backend() -> Iterator[int]:
    yield from serve(json.dumps({"status": "ok"}).encode(), "application/json")


def test_a_held_port_stops_the_backend_before_ray_starts(metrics_exporter, monkeypatch, capsys):
    import ray

    def no_ray(**kwargs):
        raise AssertionError("Ray started although the port is taken")

    monkeypatch.setattr(ray, "init", no_ray)
    with pytest.raises(ConfigError, match=f"port {metrics_exporter} on 127.0.0.1 is already"):
        check_port_free("127.0.0.1", metrics_exporter)
    assert main(["--preset", "tiny", "--port", str(metrics_exporter)]) == 2
    err = capsys.readouterr().err
    assert f"error: port {metrics_exporter} on 127.0.0.1 is already in use" in err
    assert "choose another port" in err


def test_a_free_port_passes_the_check_and_stays_free():
    port = free_port()
    check_port_free("127.0.0.1", port)
    with socket.socket() as sock:  # the check let go of it
        sock.bind(("127.0.0.1", port))


def test_the_metrics_port_cannot_be_the_http_port(capsys):
    assert main(["--preset", "tiny", "--port", "9100", "--metrics_export_port", "9100"]) == 2
    assert "--metrics_export_port must differ from --port" in capsys.readouterr().err


def test_after_deploying_the_backend_confirms_it_answers_on_its_port(metrics_exporter,
                                                                     healthy_backend):
    confirm_serving("0.0.0.0", healthy_backend, timeout_s=5)  # clients reach it on loopback
    with pytest.raises(ConfigError) as raised:
        confirm_serving("127.0.0.1", metrics_exporter, timeout_s=1)
    message = str(raised.value)
    assert f"127.0.0.1:{metrics_exporter}/health does not answer as this backend" in message
    assert "HTTP 200 (text/plain" in message and "choose another port" in message


def test_the_client_names_another_program_on_the_port(metrics_exporter, healthy_backend):
    with pytest.raises(BackendError) as raised:
        VideoClient(f"http://127.0.0.1:{metrics_exporter}").ready()
    assert raised.value.status == 200
    assert "not as a videoserve backend: is another program on this port?" in str(raised.value)
    # /health of the healthy stand-in has no "ready": the same answer, not a KeyError
    with pytest.raises(BackendError, match="not as a videoserve backend"):
        VideoClient(f"http://127.0.0.1:{healthy_backend}").ready()
