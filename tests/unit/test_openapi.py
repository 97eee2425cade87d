"""The OpenAPI document names every JSON answer's shape, and the routes still answer with every
key they had: the shapes document, they do not filter. In-process, over a fake deployer."""

from __future__ import annotations

import pytest
from starlette.testclient import TestClient

from tests.unit.test_service_unload import SMALL, new_service
from videoserve.http.app import create_app

TYPED = {("get", "/v1/videos/{job_id}"): "VideoObject", ("get", "/v1/videos"): "VideoList",
         ("post", "/v1/videos"): "VideoObject", ("get", "/v1/models"): "ModelList",
         ("post", "/generate_video"): "GenerateVideoResponse",
         ("post", "/v1/videos/{job_id}/cancel"): "VideoObject",
         ("delete", "/v1/videos/{job_id}"): "VideoDeleted",
         ("post", "/v1/videos/batch"): "BatchCreated", ("get", "/health"): "Health",
         ("get", "/v1/placement"): "Placement"}
CONTENT = ("/v1/videos/{job_id}/content", "/videos/{job_id}/video.mp4")
ERROR_REF = "#/components/schemas/ErrorResponse"


async def placement() -> dict:
    return {"ingress": {"node_id": "n1"}, "models": {}}


@pytest.fixture
def http(tmp_path):
    async def readiness() -> dict:
        return {}

    app = create_app(new_service(tmp_path), readiness, placement=placement)
    return TestClient(app, base_url="http://127.0.0.1:8000")


def answer_schema(operation: dict, status: str = "200") -> dict:
    return operation["responses"][status]["content"]["application/json"]["schema"]


def properties(spec: dict, name: str) -> set[str]:
    return set(spec["components"]["schemas"][name]["properties"])


def test_json_answers_reference_named_schemas_and_errors_the_one_error_shape(http):
    spec = http.get("/openapi.json").json()
    for (method, path), name in TYPED.items():
        operation = spec["paths"][path][method]
        assert answer_schema(operation) == {"$ref": f"#/components/schemas/{name}"}, path
        assert answer_schema(operation, "404") == {"$ref": ERROR_REF}, path
    for method in ("put", "delete"):
        operation = spec["paths"]["/v1/models/{model_type}"][method]
        assert answer_schema(operation, "202") == {"$ref": "#/components/schemas/ModelEntry"}
    assert "HTTPValidationError" not in spec["components"]["schemas"]


def test_content_routes_declare_mp4_ranges_and_head(http):
    spec = http.get("/openapi.json").json()
    for path in CONTENT:
        get, head = spec["paths"][path]["get"], spec["paths"][path]["head"]
        for status in ("200", "206"):
            assert set(get["responses"][status]["content"]) == {"video/mp4"}, (path, status)
        assert answer_schema(get, "416") == {"$ref": ERROR_REF}
        assert "Content-Range" in get["responses"]["416"]["headers"]
        assert {"Range", "If-Range"} <= {p["name"] for p in get["parameters"]}
        assert head["operationId"] != get["operationId"]
        assert all("content" not in answer for answer in head["responses"].values())


def test_answers_keep_every_key(http):
    spec = http.get("/openapi.json").json()
    created = http.post("/v1/videos", json={"prompt": "a fox", **SMALL})
    assert created.status_code == 200, created.text
    video = created.json()
    # Exactly the documented keys: none dropped by the schema, none left undocumented.
    assert set(video) == properties(spec, "VideoObject")
    assert set(video["progress_detail"]) == properties(spec, "ProgressDetail")
    assert http.get(f"/v1/videos/{video['id']}").json().keys() == video.keys()
    listed = http.get("/v1/videos").json()
    assert set(listed) == properties(spec, "VideoList") and listed["data"][0].keys() == video.keys()
    models = http.get("/v1/models").json()
    assert set(models) == properties(spec, "ModelList")
    for entry in models["data"]:
        assert set(entry) <= properties(spec, "ModelEntry")
        assert set(entry["defaults"]) == properties(spec, "SamplingDefaults")
        assert set(entry["limits"]) == properties(spec, "Limits")
    assert http.get("/v1/placement").json() == {"ingress": {"node_id": "n1"}, "models": {}}
    deleted = http.delete(f"/v1/videos/{video['id']}").json()
    assert set(deleted) == properties(spec, "VideoDeleted")
    assert deleted["video"].keys() == video.keys()
