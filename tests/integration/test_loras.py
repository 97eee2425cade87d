"""LoRA adapters served end to end on both engines (tiny models; fastvideo through the CPU shim):
the folder listing, per-request LoRAs in both key formats, no bleed between requests, the
errors, and the model's default LoRAs and sampling defaults.

The synthetic LoRAs come in two files per model that encode the same weight delta in the two
key formats (``videoserve.devtools.synthetic_loras``): their videos must be identical."""

from __future__ import annotations

import io
import shutil
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

import numpy as np
import pytest
import requests

from tests.helpers import png_b64
from videoserve.core.config import Settings
from videoserve.serve.presets import build_specs

T2V_DIFFUSERS, T2V_WAN = "synthetic-t2v-diffusers-r64", "synthetic-t2v-wan-r64"
I2V_DIFFUSERS, I2V_WAN = "synthetic-i2v-diffusers-r64", "synthetic-i2v-wan-r64"
BASE = {"prompt": "a lighthouse at dusk", "seed": 7, "model_type": "t2v"}


@pytest.fixture(scope="module", params=["diffusers", "fastvideo"])
def backend(request, serve_cluster, tmp_path_factory):
    """The tiny pair on one engine, with the synthetic LoRAs (and files that are no LoRA) in
    its folder; the I2V model runs a default LoRA at 0.5 and 3 steps unless told otherwise."""
    from videoserve.devtools.synthetic_loras import ensure_tiny_loras
    from videoserve.serve.deployments import deploy, undeploy

    engine = request.param
    root = tmp_path_factory.mktemp(f"loras-{engine}")
    folder = root / "loras"
    folder.mkdir()
    for files in ensure_tiny_loras().values():
        for path in files.values():
            shutil.copy(path, folder / path.name)
    (folder / "corrupt.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    (folder / "pickled.pt").write_bytes(b"\x80\x04never unpickled")
    (folder / "pickled.bin").write_bytes(b"\x80\x04never unpickled")
    specs = build_specs("tiny", engine=engine, gpu_count=0)
    specs["i2v"] = replace(specs["i2v"], loras=((I2V_WAN, 0.5),),
                           defaults=replace(specs["i2v"].defaults, num_inference_steps=3))
    settings = Settings(models=specs, output_path=root / "out", lora_dir=folder)
    name = f"lora-{engine}"
    deploy(settings, name, f"/{name}")
    yield f"{serve_cluster.url}/{name}", folder
    undeploy(name)


def generate(root: str, **body) -> requests.Response:
    return requests.post(f"{root}/generate_video", json={**BASE, **body}, timeout=300)


def frames_of(root: str, answer: requests.Response) -> np.ndarray:
    import av

    assert answer.status_code == 200, answer.text
    # video_url carries the app's route prefix: it is joined to the server, not to the app.
    server = root.rsplit("/", 1)[0]
    data = requests.get(server + answer.json()["video_url"], timeout=60).content
    with av.open(io.BytesIO(data)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


def delete(root: str, answer: requests.Response) -> None:
    """Remove a job so that an identical later request runs again instead of being served
    from the result cache."""
    assert requests.delete(f"{root}/v1/videos/{answer.json()['id']}", timeout=30).status_code == 200


def run(root: str, **body) -> np.ndarray:
    answer = generate(root, **body)
    frames = frames_of(root, answer)
    delete(root, answer)
    return frames


def lora(lora_id: str, scale: float = 1.0) -> list[dict]:
    return [{"id": lora_id, "scale": scale}]


def differs(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(int) - b.astype(int)).mean())


def test_the_folder_is_listed(backend):
    root, _ = backend
    listed = {e["id"]: e for e in requests.get(f"{root}/v1/loras", timeout=60).json()["data"]}
    assert sorted(listed) == sorted([T2V_DIFFUSERS, T2V_WAN, I2V_DIFFUSERS, I2V_WAN, "corrupt"])
    assert listed[T2V_DIFFUSERS]["format"] == "diffusers" and listed[T2V_WAN]["format"] == "wan"
    assert listed[T2V_WAN]["rank"] == 64 and len(listed[T2V_WAN]["sha256"]) == 64
    # The tiny models share their layer sizes: a T2V LoRA fits the I2V model too, not the
    # other way round (k_img / v_img exist on I2V only).
    assert listed[T2V_DIFFUSERS]["tasks"] == ["t2v", "i2v"]
    assert listed[I2V_WAN]["tasks"] == ["i2v"]
    assert listed["corrupt"]["tasks"] == [] and "not a safetensors file" in listed["corrupt"][
        "error"]


def test_a_lora_changes_the_frames_and_leaves_no_trace(backend):
    root, _ = backend
    base = run(root)
    with_diffusers_keys = run(root, loras=lora(T2V_DIFFUSERS))
    with_wan_keys = run(root, loras=lora(T2V_WAN))
    at_zero = run(root, loras=lora(T2V_WAN, 0.0))
    half = run(root, loras=lora(T2V_DIFFUSERS, 0.5))
    after = run(root)
    assert differs(with_diffusers_keys, base) > 2.0
    # The same delta written in the other key format gives the same video.
    assert np.array_equal(with_wan_keys, with_diffusers_keys)
    assert 0.0 < differs(half, base) < differs(with_diffusers_keys, base)
    # Scale 0 is the base model, and a LoRA leaves nothing behind in the weights.
    assert np.array_equal(at_zero, base)
    assert np.array_equal(after, base)


def test_concurrent_mixed_requests_give_their_sequential_frames(backend):
    root, _ = backend
    bodies = [{}, {"loras": lora(T2V_WAN)}, {"loras": []}, {"loras": lora(T2V_DIFFUSERS, 1.5)},
              {"seed": 8, "loras": lora(T2V_WAN, 0.5)}]
    sequential = [run(root, **body) for body in bodies]
    with ThreadPoolExecutor(len(bodies)) as pool:
        answers = list(pool.map(lambda body: generate(root, **body), bodies))
    for body, answer, expected in zip(bodies, answers, sequential, strict=True):
        assert answer.json()["cached"] is False  # really generated again
        assert np.array_equal(frames_of(root, answer), expected), body


def test_jobs_echo_their_loras_and_the_cache_tells_them_apart(backend):
    root, _ = backend
    listed = {e["id"]: e for e in requests.get(f"{root}/v1/loras", timeout=60).json()["data"]}
    body = {**BASE, "seed": 11, "loras": lora(T2V_WAN, 0.75)}
    job = requests.post(f"{root}/v1/videos", json=body, timeout=60).json()
    assert job["loras"] == [{"id": T2V_WAN, "scale": 0.75, "sha256": listed[T2V_WAN]["sha256"]}]
    first = generate(root, seed=11, loras=lora(T2V_WAN, 0.75))
    assert first.json()["loras"][0]["sha256"] == listed[T2V_WAN]["sha256"]
    other = generate(root, seed=11, loras=lora(T2V_WAN, 0.5))  # another strength: not cached
    assert other.json()["cached"] is False
    same = generate(root, seed=11, loras=lora(T2V_WAN, 0.75))
    assert same.json()["cached"] is True and same.json()["id"] == first.json()["id"]
    history = requests.get(f"{root}/v1/videos?limit=5", timeout=30).json()["data"]
    assert {"id": T2V_WAN, "scale": 0.5, "sha256": listed[T2V_WAN]["sha256"]} in [
        entry for job in history for entry in job["loras"]]
    key = {"Idempotency-Key": "lora-key-1"}
    assert requests.post(f"{root}/v1/videos", json=body, headers=key, timeout=60).status_code == 200
    changed = {**body, "loras": lora(T2V_WAN, 0.5)}
    reused = requests.post(f"{root}/v1/videos", json=changed, headers=key, timeout=60)
    assert reused.status_code == 409 and reused.json()["error"]["code"] == "idempotency_key_reused"


@pytest.mark.parametrize("loras, status, code", [
    ([{"id": "nope"}], 404, "lora_not_found"),
    ([{"id": "pickled"}], 404, "lora_not_found"),  # pickled.pt exists; it is never a LoRA
    ([{"id": I2V_DIFFUSERS}], 422, "lora_incompatible"),
    ([{"id": "corrupt"}], 422, "lora_unreadable"),
    ([{"id": "../loras/" + T2V_WAN}], 422, "invalid_lora_id"),
    ([{"id": "/etc/passwd"}], 422, "invalid_lora_id"),
    ([{"id": T2V_WAN}, {"id": T2V_WAN, "scale": 0.5}], 422, None),
    ([{"id": T2V_WAN, "scale": 2.5}], 422, None),
    ([{"id": T2V_WAN, "scale": -0.1}], 422, None),
    ([{"id": T2V_WAN, "scale": True}], 422, None),
    ([{"id": f"x{i}"} for i in range(5)], 422, None),
    ([{"id": T2V_WAN, "path": "/etc"}], 422, None),
    ("synthetic", 422, None),
])
def test_bad_loras_are_refused_with_a_reason(backend, loras, status, code):
    root, _ = backend
    for url in ("/generate_video", "/v1/videos"):
        answer = requests.post(root + url, json={**BASE, "loras": loras}, timeout=60)
        assert answer.status_code == status, answer.text
        error = answer.json()["error"]
        if code is not None:
            assert error["code"] == code
    incompatible = generate(root, loras=[{"id": I2V_DIFFUSERS}]).json()["error"]["message"]
    assert incompatible.endswith("layer blocks.0.attn2.add_k_proj: the model has no such layer")


def test_multipart_and_batch_take_loras(backend):
    root, _ = backend
    form = {"prompt": BASE["prompt"], "seed": "21", "loras": f'[{{"id": "{T2V_WAN}"}}]'}
    job = requests.post(f"{root}/v1/videos", files={k: (None, v) for k, v in form.items()},
                        timeout=60).json()
    assert [e["id"] for e in job["loras"]] == [T2V_WAN]
    bad = requests.post(f"{root}/v1/videos", files={"prompt": (None, "x"),
                                                     "loras": (None, "not json")}, timeout=60)
    assert bad.status_code == 422
    batch = requests.post(f"{root}/v1/videos/batch", json={"requests": [
        {**BASE, "seed": 22, "loras": lora(T2V_DIFFUSERS)}, {**BASE, "seed": 23}]}, timeout=60)
    assert batch.status_code == 200, batch.text
    first = requests.get(f"{root}/v1/videos/{batch.json()['ids'][0]}", timeout=30).json()
    assert [e["id"] for e in first["loras"]] == [T2V_DIFFUSERS]
    refused = requests.post(f"{root}/v1/videos/batch", json={"requests": [
        {**BASE, "loras": lora("nope")}]}, timeout=60)
    assert refused.status_code == 404


def test_model_default_loras_and_defaults(backend):
    root, folder = backend
    models = {m["task"]: m for m in requests.get(f"{root}/v1/models", timeout=30).json()["data"]}
    assert models["i2v"]["loras"] == [{"id": I2V_WAN, "scale": 0.5}]
    assert models["i2v"]["defaults"]["num_inference_steps"] == 3
    assert models["t2v"]["loras"] == []
    image = {"model_type": "i2v", "image": png_b64(), "seed": 5}
    by_default = generate(root, **image)
    assert by_default.json()["loras"][0]["id"] == I2V_WAN
    assert by_default.json()["loras"][0]["scale"] == 0.5
    assert by_default.json()["num_inference_steps"] == 3
    explicit = generate(root, **image, loras=lora(I2V_DIFFUSERS, 0.5))
    none = generate(root, **image, loras=[])
    assert none.json()["loras"] == []
    default_frames, explicit_frames = frames_of(root, by_default), frames_of(root, explicit)
    assert np.array_equal(default_frames, explicit_frames)  # the same delta, either format
    assert differs(frames_of(root, none), default_frames) > 1.0
    # A LoRA copied into the folder is listed and usable without a restart.
    shutil.copy(folder / f"{T2V_WAN}.safetensors", folder / "late-arrival.safetensors")
    listed = [e["id"] for e in requests.get(f"{root}/v1/loras", timeout=60).json()["data"]]
    assert "late-arrival" in listed
    assert generate(root, loras=lora("late-arrival")).status_code == 200
