"""Who may manage models: admin keys only (403 for user keys); without any key nobody, unless
the backend allows it, and then only clients on loopback. In-process, through the middlewares
the app is built with."""

from __future__ import annotations

import pytest
from fastapi import FastAPI
from starlette.testclient import TestClient

from videoserve.core.config import Settings
from videoserve.http.app import add_middlewares
from videoserve.serve.presets import build_specs

USER, ADMIN = "user-key-0123", "admin-key-4567"
LOCAL = ("127.0.0.1", 40000)
REMOTE = ("192.0.2.7", 40000)


def client(settings: Settings, address: tuple[str, int] = LOCAL) -> TestClient:
    app = FastAPI()
    add_middlewares(app, settings)

    @app.put("/v1/models/{task}")
    async def put_model(task: str) -> dict:
        return {"changed": task}

    @app.delete("/v1/models/{task}")
    async def delete_model(task: str) -> dict:
        return {"unloaded": task}

    @app.get("/v1/models")
    async def models() -> dict:
        return {"object": "list"}

    @app.get("/v1/videos")
    async def videos() -> dict:
        return {"object": "list"}

    return TestClient(app, base_url="http://127.0.0.1:8000", client=address)


def settings(**changes) -> Settings:
    return Settings(models=build_specs("tiny", gpu_count=0), **changes)


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def management(http: TestClient, headers: dict[str, str] | None = None) -> list:
    return [http.put("/v1/models/t2v", json={"replicas": 1}, headers=headers),
            http.delete("/v1/models/i2v", headers=headers)]


def test_user_keys_get_403_on_model_management_and_admin_keys_may_do_everything():
    http = client(settings(api_keys=(USER,), admin_api_keys=(ADMIN,)))
    for answer in management(http, bearer(USER)):
        assert answer.status_code == 403, answer.text
        error = answer.json()["error"]
        assert error["code"] == "admin_key_required" and error["type"] == "invalid_request_error"
        assert "admin key" in error["message"]
    assert [a.status_code for a in management(http, bearer(ADMIN))] == [200, 200]
    for key in (USER, ADMIN):  # both use the rest of the API
        assert http.get("/v1/videos", headers=bearer(key)).status_code == 200
        assert http.get("/v1/models", headers=bearer(key)).status_code == 200
    for answer in management(http) + management(http, bearer("wrong")):
        assert answer.status_code == 401 and answer.json()["error"]["code"] == "unauthorized"


def test_admin_keys_alone_still_close_the_api():
    http = client(settings(admin_api_keys=(ADMIN,)))
    assert http.get("/v1/videos").status_code == 401
    assert http.get("/v1/videos", headers=bearer(ADMIN)).status_code == 200
    assert [a.status_code for a in management(http, bearer(ADMIN))] == [200, 200]


@pytest.mark.parametrize("address", [LOCAL, REMOTE, ("::1", 1), ("testclient", 1)])
def test_without_keys_model_management_is_refused(address):
    http = client(settings(), address)
    for answer in management(http):
        assert answer.status_code == 403, answer.text
        assert answer.json()["error"]["code"] == "model_management_disabled"
        assert "--admin_api_key" in answer.json()["error"]["message"]
    assert http.get("/v1/videos").status_code == 200  # the open API stays open


def test_allow_model_management_opens_it_to_loopback_clients_only():
    allowed = settings(allow_model_management=True)
    for address in (LOCAL, ("::1", 1), ("::ffff:127.0.0.1", 1)):
        assert [a.status_code for a in management(client(allowed, address))] == [200, 200]
    for address in (REMOTE, ("::ffff:192.0.2.7", 1), ("testclient", 1)):
        answers = management(client(allowed, address))
        assert [a.status_code for a in answers] == [403, 403], address
