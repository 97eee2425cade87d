import re

import pytest

from videoserve.core.config import ConfigError
from videoserve.serve.backend_cli import app_builder, build_parser, main, settings_from_args
from videoserve.serve.generations import generator


def test_flags_become_settings(tmp_path):
    args = build_parser().parse_args(["--preset", "tiny", "--output_path", str(tmp_path),
                                      "--tasks", "i2v", "--replicas", "2"])
    settings = settings_from_args(args)
    assert list(settings.models) == ["i2v"] and settings.models["i2v"].replicas == 2
    assert settings.output_path == tmp_path and settings.inputs_dir == tmp_path / "inputs"


def test_fastvideo_without_gpu_exits_with_the_way_out(capsys, monkeypatch):
    monkeypatch.delenv("VIDEOSERVE_FASTVIDEO_CPU_SHIM", raising=False)
    monkeypatch.setattr("videoserve.serve.backend_cli.cuda_gpu_count", lambda: 0)
    assert main(["--preset", "fastwan"]) == 2
    assert "--preset tiny" in capsys.readouterr().err


def test_bad_tasks_flag(capsys):
    assert main(["--preset", "tiny", "--tasks", "t2v,foo"]) == 2
    assert "--tasks" in capsys.readouterr().err


def test_serve_run_builder_parses_the_same_options(tmp_path):
    app = app_builder({"preset": "tiny", "output_path": str(tmp_path), "tasks": "t2v"})
    settings = app._bound_deployment.init_args[0]
    assert list(settings.models) == ["t2v"] and settings.output_path == tmp_path
    with pytest.raises(SystemExit):
        app_builder({"no_such_flag": "1"})


def test_api_keys_and_origins_from_flags_and_environment(monkeypatch, caplog):
    from videoserve.serve.backend_cli import warn_if_open

    monkeypatch.setenv("VIDEOSERVE_API_KEYS", "k2, k3,,k1")
    args = build_parser().parse_args(["--preset", "tiny", "--api_key", "k1", "--api_key", "k4",
                                      "--cors_origins", "https://a.example/, http://b:8080"])
    settings = settings_from_args(args)
    assert settings.api_keys == ("k1", "k4", "k2", "k3")
    assert settings.cors_origins == ("https://a.example", "http://b:8080")
    assert "k1" not in repr(settings)
    monkeypatch.delenv("VIDEOSERVE_API_KEYS")
    open_settings = settings_from_args(build_parser().parse_args(["--preset", "tiny"]))
    assert open_settings.api_keys == ()
    with caplog.at_level("WARNING"):
        warn_if_open("0.0.0.0", open_settings)
        warn_if_open("127.0.0.1", open_settings)
    assert len(caplog.records) == 1 and "without an API key" in caplog.text


def test_launcher_passes_keys_in_the_environment():
    from videoserve.serve.launcher import backend_command, key_environments
    from videoserve.serve.launcher import build_parser as launcher_parser

    args = launcher_parser().parse_args(["--api_key", "secret-1", "--api_key", "secret-2",
                                         "--cors_origins", "https://a.example"])
    backend_env, ui_env = key_environments(args)
    assert backend_env == {"VIDEOSERVE_API_KEYS": "secret-1,secret-2"}
    assert ui_env == {"VIDEOSERVE_API_KEY": "secret-1"}
    command = backend_command(args)
    assert "secret-1" not in " ".join(command) and "https://a.example" in command


def test_metrics_export_port_goes_to_a_locally_started_ray(monkeypatch):
    import ray

    from videoserve.serve.backend_cli import start
    from videoserve.serve.launcher import backend_command
    from videoserve.serve.launcher import build_parser as launcher_parser

    class Started(Exception):
        pass

    seen: dict = {}

    def fake_init(**kwargs):
        seen.update(kwargs)
        raise Started

    monkeypatch.setattr(ray, "init", fake_init)
    args = build_parser().parse_args(["--preset", "tiny", "--metrics_export_port", "9100"])
    with pytest.raises(Started):
        start(settings_from_args(args), "127.0.0.1", 8000, None, None, args.metrics_export_port)
    assert seen["_metrics_export_port"] == 9100
    command = backend_command(launcher_parser().parse_args(["--metrics_export_port", "9100"]))
    assert command[-2:] == ["--metrics_export_port", "9100"]


def test_generator_resources_go_to_every_generator_replica(tmp_path):
    args = build_parser().parse_args(["--preset", "tiny", "--output_path", str(tmp_path),
                                      "--generator_resources", '{"gpu_node": 1, "ssd": 0.5}'])
    settings = settings_from_args(args)
    assert [s.resources for s in settings.models.values()] == [{"gpu_node": 1.0, "ssd": 0.5}] * 2
    app = app_builder({"preset": "tiny", "output_path": str(tmp_path),
                       "generator_resources": {"gpu_node": 1}})
    ingress = app._bound_deployment
    built = ingress.init_args[0]  # the settings the ingress deploys its generators from
    for task in ("t2v", "i2v"):
        options = generator(built.models[task], None, "x")._bound_deployment.ray_actor_options
        assert options["resources"] == {"gpu_node": 1.0} and options["num_cpus"] == 1.0
    # serve run's builder cannot know the node it will run on: the ingress goes to the head.
    assert ingress.ray_actor_options["resources"] == {"node:__internal_head__": 0.001}
    assert ingress.ray_actor_options["num_cpus"] == 0


def test_the_backend_pins_the_ingress_to_its_own_node(tmp_path):
    from videoserve.serve.deployments import build_app

    settings = settings_from_args(build_parser().parse_args(["--preset", "tiny"]))
    options = build_app(settings, ingress_node_id="ab12")._bound_deployment.ray_actor_options
    assert options["label_selector"] == {"ray.io/node-id": "ab12"}
    assert "resources" not in options and options["num_cpus"] == 0
    spec = build_app(settings)._bound_deployment.init_args[0].models["t2v"]
    assert generator(spec, None, "x")._bound_deployment.ray_actor_options["resources"] == {}


@pytest.mark.parametrize(("value", "message"), [
    ("gpu_node", "must be a JSON object"),
    ('["gpu_node"]', "must be a JSON object"),
    ('{"gpu_node": "1"}', "'gpu_node' must be a number"),
    ('{"gpu_node": true}', "'gpu_node' must be a number"),
    ('{"gpu_node": -1}', "'gpu_node' must be positive"),
    ('{"gpu_node": 0}', "'gpu_node' must be positive"),
    ('{"GPU": 1}', "'GPU' is not a custom resource name"),
    ('{" ": 1}', "is not a custom resource name"),
])
def test_bad_generator_resources_name_the_problem(capsys, value, message):
    assert main(["--preset", "tiny", "--generator_resources", value]) == 2
    err = capsys.readouterr().err
    assert "--generator_resources" in err and message in err, err


def test_launcher_forwards_generator_resources():
    from videoserve.serve.launcher import backend_command
    from videoserve.serve.launcher import build_parser as launcher_parser

    args = launcher_parser().parse_args(["--ray_address", "10.0.0.1:6379",
                                         "--generator_resources", '{"gpu_node": 1}'])
    command = backend_command(args)
    assert command[command.index("--generator_resources") + 1] == '{"gpu_node": 1}'
    assert command[command.index("--ray_address") + 1] == "10.0.0.1:6379"


def test_local_start_never_joins_another_cluster_and_shutdown_removes_only_its_own(
        monkeypatch, tmp_path):
    from types import SimpleNamespace

    import ray
    from ray import serve

    from videoserve.serve import backend_cli, deployments

    monkeypatch.setattr(deployments, "wait_ready", lambda handle, timeout_s: None)
    calls: list = []
    apps: dict = {}
    monkeypatch.setattr(ray, "init", lambda **kw: calls.append(("ray.init", kw)))
    monkeypatch.setattr(ray, "shutdown", lambda: calls.append("ray.shutdown"))
    monkeypatch.setattr(ray, "get_runtime_context",
                        lambda: SimpleNamespace(get_node_id=lambda: "node-1"))
    monkeypatch.setattr(serve, "start", lambda **kw: None)
    monkeypatch.setattr(serve, "run", lambda app, **kw: app)
    monkeypatch.setattr(serve, "shutdown", lambda: calls.append("serve.shutdown"))
    monkeypatch.setattr(serve, "delete", lambda name: calls.append(f"serve.delete {name}"))
    monkeypatch.setattr(serve, "status", lambda: SimpleNamespace(applications=apps))
    settings = settings_from_args(build_parser().parse_args(["--preset", "tiny"]))

    def run(address, serve_was_running, other_apps=()):
        calls.clear()
        apps.clear()
        apps.update(dict.fromkeys(other_apps))
        monkeypatch.setattr(backend_cli, "_serve_running", lambda: serve_was_running)
        running = backend_cli.start(settings, "127.0.0.1", 8000, address)
        pinned = running.app._bound_deployment.ray_actor_options["label_selector"]
        assert pinned == {"ray.io/node-id": "node-1"}
        backend_cli._shutdown(running)
        return calls[0][1]["address"], calls[1:]

    # A bare ray.init() would join RAY_ADDRESS's cluster or the last `ray start` one.
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.9:6379")
    assert run(None, False) == ("local", ["serve.shutdown", "ray.shutdown"])
    joined = "10.0.0.1:6379"
    assert run(joined, False) == (joined, ["serve.delete videoserve", "serve.shutdown",
                                           "ray.shutdown"])
    assert run(joined, True) == (joined, ["serve.delete videoserve", "ray.shutdown"])
    assert run(joined, False, ["someone_else"]) == (joined, ["serve.delete videoserve",
                                                             "ray.shutdown"])


def test_sp_size_flags(monkeypatch, capsys):
    monkeypatch.setattr("videoserve.serve.backend_cli.cuda_gpu_count", lambda: 2)
    args = build_parser().parse_args(["--preset", "fastwan", "--tasks", "i2v",
                                      "--i2v_sp_size", "2"])
    spec = settings_from_args(args).models["i2v"]
    assert spec.engine_options["sp_size"] == 2 and spec.num_gpus == 2.0
    assert main(["--preset", "fastwan", "--t2v_sp_size", "4"]) == 2
    assert "--t2v_sp_size 4 needs 4 GPUs" in capsys.readouterr().err
    assert main(["--preset", "fastwan", "--engine", "diffusers", "--i2v_sp_size", "2"]) == 2
    assert "fastvideo engine" in capsys.readouterr().err


def test_launcher_forwards_sp_size():
    from videoserve.serve.launcher import backend_command
    from videoserve.serve.launcher import build_parser as launcher_parser

    command = backend_command(launcher_parser().parse_args(["--i2v_sp_size", "2"]))
    assert command[command.index("--i2v_sp_size") + 1] == "2"
    assert "--t2v_sp_size" not in command


class Started(Exception):
    """Raised by a stand-in for ``start``: the backend got as far as starting Ray."""


def refuse_to_start(*args, **kwargs):
    raise Started


def test_admin_keys_from_flags_and_environment_and_non_ascii_keys_refused(monkeypatch, capsys):
    # Keys that cannot occur in the settings' other values (the run id is random hex).
    monkeypatch.setenv("VIDEOSERVE_ADMIN_API_KEYS", "admin-two, admin-one")
    args = build_parser().parse_args(["--preset", "tiny", "--api_key", "u1",
                                      "--admin_api_key", "admin-one", "--model_dir",
                                      "/data/models"])
    settings = settings_from_args(args)
    assert settings.api_keys == ("u1",) and settings.admin_api_keys == ("admin-one", "admin-two")
    assert "admin-one" not in repr(settings) and str(settings.model_dir) == "/data/models"
    monkeypatch.setattr("videoserve.serve.backend_cli.start", refuse_to_start)
    for flag in ("--api_key", "--admin_api_key"):
        assert main(["--preset", "tiny", flag, "clé-secrète"]) == 2
        err = capsys.readouterr().err
        assert flag in err and "printable ASCII" in err and "clé" not in err, err


def test_model_management_without_keys_only_on_loopback(monkeypatch, capsys, tmp_path):
    monkeypatch.delenv("VIDEOSERVE_API_KEYS", raising=False)
    monkeypatch.setattr("videoserve.serve.backend_cli.start", refuse_to_start)
    base = ["--preset", "tiny", "--output_path", str(tmp_path), "--allow_model_management"]
    assert main([*base, "--host", "0.0.0.0"]) == 2
    assert "--allow_model_management needs a loopback --host" in capsys.readouterr().err
    assert main([*base, "--api_key", "k"]) == 2
    assert "--admin_api_key" in capsys.readouterr().err
    with pytest.raises(Started):
        main([*base, "--host", "127.0.0.1", "--port", "1"])  # gets as far as starting Ray
    args = build_parser().parse_args(base)
    assert settings_from_args(args).allow_model_management is True


def test_launcher_passes_admin_keys_in_the_environment_and_forwards_the_switches():
    from videoserve.serve.launcher import backend_command, key_environments
    from videoserve.serve.launcher import build_parser as launcher_parser

    args = launcher_parser().parse_args(["--admin_api_key", "adm-1", "--recover_jobs",
                                         "--model_dir", "/data/models"])
    backend_env, ui_env = key_environments(args)
    assert backend_env == {"VIDEOSERVE_ADMIN_API_KEYS": "adm-1"}
    assert ui_env == {"VIDEOSERVE_API_KEY": "adm-1"}  # the UI needs some key
    command = backend_command(args)
    assert "adm-1" not in " ".join(command) and "--recover_jobs" in command
    assert command[command.index("--model_dir") + 1] == "/data/models"
    assert "--allow_model_management" not in command


def test_a_damaged_job_table_stops_the_backend_before_ray_starts(tmp_path, monkeypatch, capsys):
    from tests.unit.test_job_table import page_corrupted

    path = page_corrupted(tmp_path)
    damaged = path.read_bytes()
    monkeypatch.setattr("videoserve.serve.backend_cli.start", refuse_to_start)
    assert main(["--preset", "tiny", "--output_path", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert f"the job table {path} is damaged" in err and "--recover_jobs" in err, err
    assert path.read_bytes() == damaged


def test_recover_jobs_saves_the_readable_rows_then_starts(tmp_path, monkeypatch, caplog):
    from tests.unit.test_job_table import JOBS, page_corrupted

    path = page_corrupted(tmp_path)
    monkeypatch.setattr("videoserve.serve.backend_cli.start", refuse_to_start)
    with caplog.at_level("WARNING"), pytest.raises(Started):
        main(["--preset", "tiny", "--output_path", str(tmp_path), "--recover_jobs",
              "--port", "1"])
    assert f"recovered the job table {path}: {JOBS - 1} jobs saved" in caplog.text, caplog.text
    assert len(list(tmp_path.glob("jobs.sqlite3.damaged-*[0-9]"))) == 1


def test_the_backend_entry_point_refuses_a_truncated_job_table(tmp_path):
    import subprocess
    import sys

    from tests.conftest import REPO
    from tests.unit.test_job_table import truncated

    path = truncated(tmp_path)
    done = subprocess.run([sys.executable, str(REPO / "ray_serve_backend.py"), "--preset", "tiny",
                           "--output_path", str(tmp_path)], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 2, done.stderr
    assert f"error: the job table {path} is damaged" in done.stderr, done.stderr
    assert "move it aside" in done.stderr and "Traceback" not in done.stderr


def test_lora_flags_set_each_models_default_loras_and_defaults(tmp_path):
    from videoserve.serve.launcher import backend_command
    from videoserve.serve.launcher import build_parser as launcher_parser

    flags = ["--preset", "tiny", "--t2v_lora", "style:0.5", "--t2v_lora", "motion",
             "--i2v_defaults", "num_inference_steps=4,guidance_scale=1",
             "--lora_dir", str(tmp_path / "mine"), "--lora_max_mb", "10"]
    settings = settings_from_args(build_parser().parse_args(flags))
    t2v, i2v = settings.models["t2v"], settings.models["i2v"]
    assert t2v.loras == (("style", 0.5), ("motion", 1.0)) and i2v.loras == ()
    assert (i2v.defaults.num_inference_steps, i2v.defaults.guidance_scale) == (4, 1.0)
    assert t2v.describe()["loras"] == [{"id": "style", "scale": 0.5},
                                       {"id": "motion", "scale": 1.0}]
    assert settings.loras_dir == tmp_path / "mine" and settings.lora_max_bytes == 10 * 2**20
    # The start-up script passes every repeated flag on.
    command = backend_command(launcher_parser().parse_args(flags))
    assert command.count("--t2v_lora") == 2 and "style:0.5" in command and "motion" in command


@pytest.mark.parametrize("flags, message", [
    (["--t2v_lora", "../x"], "is not a LoRA id"),
    (["--t2v_lora", "a:3"], "between 0 and 2"),
    (["--t2v_lora", "a", "--t2v_lora", "a:0.5"], "at most 4 different LoRAs"),
    (["--i2v_defaults", "steps=4"], "is not KEY=VALUE"),
    (["--i2v_defaults", "num_inference_steps=4.5"], "must be an integer"),
    (["--i2v_defaults", "num_frames=10"], "4k+1"),
    (["--lora_max_mb", "0"], "must be positive"),
])
def test_bad_lora_flags_stop_the_start(flags, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        settings_from_args(build_parser().parse_args(["--preset", "tiny", *flags]))


def test_a_default_lora_must_exist_and_fit(tmp_path):
    import shutil

    from videoserve.devtools.synthetic_loras import ensure_tiny_loras
    from videoserve.serve.backend_cli import check_model_loras

    folder = tmp_path / "loras"
    folder.mkdir()
    i2v_lora = ensure_tiny_loras()["i2v"]["wan"]
    shutil.copy(i2v_lora, folder / i2v_lora.name)

    def settings(task: str, lora: str):
        args = ["--preset", "tiny", f"--{task}_lora", lora, "--lora_dir", str(folder)]
        return settings_from_args(build_parser().parse_args(args))

    check_model_loras(settings("i2v", i2v_lora.stem))  # there, and it fits
    with pytest.raises(ConfigError, match="no LoRA 'missing'"):
        check_model_loras(settings("t2v", "missing"))
    with pytest.raises(ConfigError, match="does not fit model builtin:tiny-wan-t2v: layer "
                       "blocks.0.attn2.add_k_proj: the model has no such layer"):
        check_model_loras(settings("t2v", i2v_lora.stem))
