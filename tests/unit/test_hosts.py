"""The Host allow list (DNS rebinding) and the Origin check built on it, in-process."""

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from videoserve.http.hosts import AllowedHosts, default_allowed_hosts, parse_host
from videoserve.http.security import RequestGuard
from videoserve.serve.backend_cli import build_parser, main, settings_from_args
from videoserve.serve.launcher import backend_command
from videoserve.serve.launcher import build_parser as launcher_parser

PORT = 8000


@pytest.mark.parametrize(("value", "parsed"), [
    ("localhost", ("localhost", None)),
    ("LocalHost.:8000", ("localhost", 8000)),
    ("Example.COM", ("example.com", None)),
    ("127.0.0.1:80", ("127.0.0.1", 80)),
    ("[::1]:8000", ("::1", 8000)),
    ("[0:0:0:0:0:0:0:1]", ("::1", None)),
    ("[::FFFF:127.0.0.1]", ("::ffff:7f00:1", None)),
    ("host:", ("host", None)),
    ("", None), (".", None), ("::1", None), ("[::1", None), ("[127.0.0.1]", None),
    ("evil@localhost", None), ("localhost/x", None), ("a b", None), ("host:99999", None),
    ("host:8000:1", None),
])
def test_host_headers_are_parsed_strictly(value, parsed):
    assert parse_host(value) == parsed


@pytest.mark.parametrize("host", [
    "localhost", "LOCALHOST.", "localhost:1234", "127.0.0.1", "127.0.0.1:8000", "127.9.9.9",
    "[::1]", "[::1]:8000", "[::ffff:127.0.0.1]:8000", "lan.example:8000", "LAN.Example.",
    "10.0.0.5:8000", None,
])
def test_allowed_hosts(host):
    assert AllowedHosts(["lan.example"]).allows(host, local_address="10.0.0.5")


@pytest.mark.parametrize("host", [
    "rebind.attacker.example:8000", "rebind.attacker.example.", "10.0.0.6:8000",
    "lan.example.evil", "sub.lan.example", "localhost.attacker.example", "0.0.0.0:8000",
    "[::2]:8000", "", "evil@localhost", "local host",
])
def test_foreign_hosts(host):
    assert not AllowedHosts(["lan.example"]).allows(host, local_address="10.0.0.5")


def test_star_answers_to_any_host():
    assert AllowedHosts(["*"]).allows("rebind.attacker.example", None)


def guarded(**kwargs) -> TestClient:
    app = FastAPI()

    @app.api_route("/{path:path}", methods=["GET", "POST", "PUT", "DELETE", "OPTIONS"])
    async def anything(path: str) -> dict:
        return {"reached": path}

    # The server side of the connection: the address the test client "connects" to.
    return TestClient(RequestGuard(app, **kwargs), base_url=f"http://10.0.0.5:{PORT}")


REBINDING = f"rebind.attacker.example:{PORT}"


@pytest.mark.parametrize("method", ["GET", "POST", "PUT", "DELETE", "OPTIONS"])
@pytest.mark.parametrize("origin", [None, f"http://{REBINDING}"])
def test_a_rebound_host_gets_421_before_any_route(method, origin):
    headers = {"Host": REBINDING, "Content-Type": "application/json"}
    if origin:
        headers["Origin"] = origin
    response = guarded().request(method, "/v1/videos", headers=headers, content=b"{}")
    assert response.status_code == 421, response.text
    error = response.json()["error"]
    assert error["code"] == "host_not_allowed" and error["type"] == "invalid_request_error"
    assert "reached" not in response.text


@pytest.mark.parametrize("host", ["localhost", f"127.0.0.1:{PORT}", f"[::1]:{PORT}",
                                  f"10.0.0.5:{PORT}", "my.lan."])
def test_own_hosts_reach_the_routes(host):
    response = guarded(allowed_hosts=("my.lan",)).get("/health", headers={"Host": host})
    assert response.json() == {"reached": "health"}


@pytest.mark.parametrize(("host", "origin", "status"), [
    (f"127.0.0.1:{PORT}", f"http://127.0.0.1:{PORT}", 200),
    (f"127.0.0.1:{PORT}", f"http://localhost:{PORT}", 200),
    (f"[::1]:{PORT}", f"http://[::1]:{PORT}", 200),
    ("my.lan", "http://my.lan", 200),
    (f"10.0.0.5:{PORT}", f"http://10.0.0.5:{PORT}", 200),
    (f"127.0.0.1:{PORT}", "http://allowed.example", 200),
    # Another port of the same machine is another site.
    (f"127.0.0.1:{PORT}", "http://127.0.0.1:3000", 403),
    (f"127.0.0.1:{PORT}", f"http://{REBINDING}", 403),
    (f"127.0.0.1:{PORT}", "null", 403),
    (f"127.0.0.1:{PORT}", f"ftp://127.0.0.1:{PORT}", 403),
])
def test_origins_are_judged_by_the_allowed_hosts(host, origin, status):
    client = guarded(allowed_hosts=("my.lan",), allowed_origins=("http://allowed.example",))
    response = client.post("/v1/videos", content=b"{}", headers={
        "Host": host, "Origin": origin, "Content-Type": "application/json"})
    assert response.status_code == status, response.text


def test_star_hosts_never_make_a_foreign_origin_same_site():
    # With any Host answered, an Origin naming the request's own Host proves nothing.
    client = guarded(allowed_hosts=("*",))
    assert client.get("/x", headers={"Host": REBINDING}).status_code == 200
    response = client.post("/x", content=b"{}", headers={
        "Host": REBINDING, "Origin": f"http://{REBINDING}", "Content-Type": "application/json"})
    assert response.status_code == 403 and response.json()["error"]["code"] == \
        "origin_not_allowed"


def test_backend_flags_give_the_allowed_hosts(tmp_path):
    def hosts(*flags: str) -> tuple[str, ...]:
        args = build_parser().parse_args(["--preset", "tiny", "--output_path", str(tmp_path),
                                          *flags])
        return settings_from_args(args).allowed_hosts

    assert hosts() == ("127.0.0.1",)
    assert hosts("--host", "10.1.2.3", "--allowed_hosts", "video.lan, [fe80::1]:80") == (
        "10.1.2.3", "video.lan", "[fe80::1]:80")
    assert hosts("--host", "0.0.0.0") == default_allowed_hosts("0.0.0.0")
    assert hosts("--allowed_hosts", "*")[-1] == "*"


def test_a_wildcard_bind_answers_to_the_machine_names():
    import socket

    assert socket.gethostname() in default_allowed_hosts("0.0.0.0")
    assert default_allowed_hosts("0.0.0.0")[0] == "0.0.0.0"
    assert default_allowed_hosts("::")[1:] == default_allowed_hosts("0.0.0.0")[1:]
    assert AllowedHosts(default_allowed_hosts("::")).allows("[::]:8000", None)
    assert default_allowed_hosts("my.lan") == ("my.lan",)


def test_a_bad_allowed_host_is_refused_at_start(capsys):
    assert main(["--preset", "tiny", "--allowed_hosts", "ok.example,bad host"]) == 2
    assert "--allowed_hosts" in capsys.readouterr().err


def test_launcher_forwards_allowed_hosts():
    args = launcher_parser().parse_args(["--allowed_hosts", "video.lan"])
    command = backend_command(args)
    assert command[command.index("--allowed_hosts") + 1] == "video.lan"
