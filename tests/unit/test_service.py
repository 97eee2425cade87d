import pytest

from videoserve.core.errors import ServiceError
from videoserve.core.request import GenerateVideoRequest
from videoserve.core.sampling import resolve
from videoserve.core.service import read_sandboxed, select_task
from videoserve.http.errors import as_api_error
from videoserve.serve.presets import build_specs

TINY = build_specs("tiny", gpu_count=0)


def test_model_selection():
    assert select_task(GenerateVideoRequest(prompt="x")) == "t2v"
    assert select_task(GenerateVideoRequest(prompt="x", image="abcd")) == "i2v"
    assert select_task(GenerateVideoRequest(prompt="x", image_path="a.png")) == "i2v"
    assert select_task(GenerateVideoRequest(prompt="x", model_type="i2v")) == "i2v"


def test_defaults_fill_unset_fields_and_keep_set_ones():
    params = resolve(GenerateVideoRequest(prompt="x", num_frames=17, seed=7), TINY["t2v"])
    assert params.num_frames == 17 and params.seed == 7
    assert (params.height, params.width, params.num_inference_steps) == (64, 64, 2)


def test_randomize_seed_overrides_seed():
    seeds = {resolve(GenerateVideoRequest(prompt="x", seed=1, randomize_seed=True),
                     TINY["t2v"]).seed for _ in range(5)}
    assert seeds != {1}


@pytest.mark.parametrize(("field", "value"), [("num_frames", 85), ("height", 848),
                                               ("num_inference_steps", 51)])
def test_model_limits(field, value):
    with pytest.raises(ServiceError) as info:
        resolve(GenerateVideoRequest(prompt="x", **{field: value}), TINY["t2v"])
    assert as_api_error(info.value).status == 422 and info.value.param == field


def test_pixel_budget():
    with pytest.raises(ServiceError) as info:
        resolve(GenerateVideoRequest(prompt="x", height=832, width=832), TINY["t2v"])
    assert info.value.param == "width"


def test_sandbox(tmp_path):
    root = tmp_path / "inputs"
    root.mkdir()
    (root / "ok.png").write_bytes(b"ok")
    (tmp_path / "secret.png").write_bytes(b"secret")
    (root / "link.png").symlink_to(tmp_path / "secret.png")
    (root / "inner.png").symlink_to(root / "ok.png")
    (root / "outdir").symlink_to(tmp_path)
    (root / "loop.png").symlink_to(root / "loop.png")
    assert read_sandboxed(root, "ok.png", 100) == b"ok"
    assert read_sandboxed(root, str(root / "ok.png"), 100) == b"ok"
    for escape in ("../secret.png", str(tmp_path / "secret.png"), "link.png", "/etc/passwd",
                   "inner.png", "outdir/secret.png", "loop.png"):
        with pytest.raises(ServiceError) as info:
            read_sandboxed(root, escape, 100)
        assert as_api_error(info.value).status == 403, escape
        assert str(tmp_path) not in info.value.message
    for bad in ("missing.png", "a\x00b.png", "x" * 300, ".", "loop.png/x"):
        with pytest.raises(ServiceError) as info:
            read_sandboxed(root, bad, 100)
        assert as_api_error(info.value).status in (400, 403), bad
    with pytest.raises(ServiceError) as info:
        read_sandboxed(root, "ok.png", 1)
    assert as_api_error(info.value).status == 422


def test_a_job_table_written_before_owners_still_loads(tmp_path):
    import json
    import sqlite3

    from videoserve.core.jobs import Job, JobStore
    from videoserve.core.sampling import SamplingParams

    params = SamplingParams("x", "", 1, 1.0, 5, 16, 16, 1, 8)
    old = Job(id="video_" + "a" * 24, task="t2v", model="m", engine="e", synthetic=True,
              params=params).to_dict()
    for field in ("owner", "request_digest"):
        old.pop(field)
    db = sqlite3.connect(tmp_path / "jobs.sqlite3")
    db.executescript("CREATE TABLE jobs (seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT UNIQUE "
                     "NOT NULL, status TEXT NOT NULL, fingerprint TEXT, idempotency_key TEXT "
                     "UNIQUE, data TEXT NOT NULL);")
    db.execute("INSERT INTO jobs (id, status, data) VALUES (?, 'queued', ?)",
               (old["id"], json.dumps(old)))
    db.commit()
    db.close()
    store = JobStore(tmp_path / "jobs.sqlite3")
    job = store.get(old["id"])
    assert job is not None and job.owner is None and job.status == "queued"
    assert [j.id for j in store.page(10, None, "desc")[0]] == [job.id]
    assert store.page(10, None, "desc", owner="someone")[0] == []
