"""The routers are module-level and shared by every app built in a process: each app answers
from its own service and callbacks (``app.state``), and the optional routes exist only on the
apps given what they serve."""

from __future__ import annotations

from pathlib import Path

from starlette.testclient import TestClient

from tests.unit.test_service_unload import SMALL, new_service
from videoserve.http.app import create_app


async def readiness() -> dict:
    return {}


def placement_of(node: str):
    async def placement() -> dict:
        return {"ingress": {"node_id": node}, "models": {}}
    return placement


def client(tmp_path: Path, name: str, **kwargs) -> TestClient:
    (tmp_path / name).mkdir()
    app = create_app(new_service(tmp_path / name), readiness, **kwargs)
    return TestClient(app, base_url="http://127.0.0.1:8000")


def test_two_apps_in_one_process_keep_their_own_service_and_routes(tmp_path):
    first = client(tmp_path, "a", placement=placement_of("n1"))
    second = client(tmp_path, "b", placement=placement_of("n2"))
    bare = client(tmp_path, "c")
    created = first.post("/v1/videos", json={"prompt": "a fox", **SMALL})
    assert created.status_code == 200, created.text
    video_id = created.json()["id"]
    assert first.get(f"/v1/videos/{video_id}").status_code == 200
    assert second.get(f"/v1/videos/{video_id}").status_code == 404
    assert [v["id"] for v in first.get("/v1/videos").json()["data"]] == [video_id]
    assert second.get("/v1/videos").json()["data"] == []
    assert first.get("/v1/placement").json()["ingress"] == {"node_id": "n1"}
    assert second.get("/v1/placement").json()["ingress"] == {"node_id": "n2"}
    for path in ("/v1/placement", "/metrics"):
        assert bare.get(path).status_code == 404, path
        assert path not in bare.get("/openapi.json").json()["paths"]
    assert bare.get("/health").json() == {"status": "ok"}
