"""A model that cannot load ends the start with its reason, without Ray: the decision, the wait,
the backend's exit and what the launcher says (tests/integration/test_startup_failure.py runs
the real processes)."""

from __future__ import annotations

import sys
import threading
from types import SimpleNamespace

import pytest

from tests.conftest import free_port
from videoserve.core.model_switch import StartupFailed, failed_to_start
from videoserve.serve import backend_cli, deployments
from videoserve.serve.launcher import Managed, wait_for_backend

REASON = "its replicas did not start (FileNotFoundError: model folder /m does not exist)"


def test_only_a_failed_model_stops_the_wait():
    readiness = {"t2v": {"state": "UNHEALTHY"}, "i2v": {"state": "LOADING"}}
    assert failed_to_start(readiness) == ["t2v"]
    for state in ("LOADING", "RUNNING", "UNLOADED"):
        assert failed_to_start({"t2v": {"state": state}}) == []
    assert str(StartupFailed({"t2v": REASON})) == f"the t2v model could not be loaded: {REASON}"


class FakeIngress:
    """Answers ``start_status`` from a script, then repeats its last answer."""

    def __init__(self, *answers: dict):
        self.answers, self.calls = list(answers), 0
        self.start_status = SimpleNamespace(remote=self._remote)

    def _remote(self):
        answer = self.answers[min(self.calls, len(self.answers) - 1)]
        self.calls += 1
        return SimpleNamespace(result=lambda timeout_s: answer)


LOADING = {"ready": False, "failed": {}}


def test_the_wait_ends_at_the_first_failure_with_its_reason(monkeypatch):
    monkeypatch.setattr(deployments, "READINESS_POLL_S", 0)
    ingress = FakeIngress(LOADING, LOADING, {"ready": False, "failed": {"t2v": REASON}})
    with pytest.raises(StartupFailed, match=r"FileNotFoundError: model folder /m") as failed:
        deployments.wait_ready(ingress, timeout_s=5)  # not to hang should it not stop
    assert failed.value.reasons == {"t2v": REASON} and ingress.calls == 3
    deployments.wait_ready(FakeIngress(LOADING, {"ready": True, "failed": {}}), timeout_s=3600)
    with pytest.raises(TimeoutError, match="not running after 0 s"):
        deployments.wait_ready(FakeIngress(LOADING), timeout_s=0)


def test_a_failed_start_removes_what_it_started(monkeypatch):
    import ray
    from ray import serve

    calls: list = []

    def fail(handle, timeout_s):
        raise StartupFailed({"t2v": REASON})

    monkeypatch.setattr(deployments, "wait_ready", fail)
    monkeypatch.setattr(backend_cli, "_serve_running", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kw: None)
    monkeypatch.setattr(ray, "shutdown", lambda: calls.append("ray.shutdown"))
    monkeypatch.setattr(ray, "get_runtime_context",
                        lambda: SimpleNamespace(get_node_id=lambda: "node-1"))
    monkeypatch.setattr(serve, "start", lambda **kw: None)
    monkeypatch.setattr(serve, "run", lambda app, **kw: app)
    monkeypatch.setattr(serve, "shutdown", lambda: calls.append("serve.shutdown"))
    settings = backend_cli.settings_from_args(backend_cli.build_parser().parse_args(
        ["--preset", "tiny"]))
    with pytest.raises(StartupFailed):
        backend_cli.start(settings, "127.0.0.1", 8000, None)
    assert calls == ["serve.shutdown", "ray.shutdown"]


@pytest.mark.parametrize("error", [StartupFailed({"t2v": REASON}),
                                   TimeoutError("the models were not running after 3600 s")])
def test_the_backend_exits_3_with_one_error_line(monkeypatch, capsys, tmp_path, error):
    def start(*args, **kwargs):
        raise error

    monkeypatch.setattr(backend_cli, "start", start)
    code = backend_cli.main(["--preset", "tiny", "--output_path", str(tmp_path),
                             "--port", str(free_port())])
    assert code == backend_cli.EXIT_MODEL_FAILED == 3
    err = capsys.readouterr().err
    assert err == f"error: {error}\n"
    assert "exit codes" in backend_cli.build_parser().format_help()


def test_the_launcher_says_why_the_backend_stopped(capsys):
    script = ("import sys; print('loading'); print('error: the t2v model could not be loaded: "
              "boom', file=sys.stderr); print('shutting down'); sys.exit(3)")
    backend = Managed("backend", [sys.executable, "-c", script])
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens: the backend never got there
    assert not wait_for_backend(backend, url, 60, threading.Event())
    out = capsys.readouterr().out
    assert ("backend exited with code 3 before it was ready: the t2v model could not be "
            "loaded: boom") in out, out
