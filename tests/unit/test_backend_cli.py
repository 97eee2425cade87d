import pytest

from videoserve.backend_cli import app_builder, build_parser, main, settings_from_args
from videoserve.deployments import generator


def test_flags_become_settings(tmp_path):
    args = build_parser().parse_args(["--preset", "tiny", "--output_path", str(tmp_path),
                                      "--tasks", "i2v", "--replicas", "2"])
    settings = settings_from_args(args)
    assert list(settings.models) == ["i2v"] and settings.models["i2v"].replicas == 2
    assert settings.output_path == tmp_path and settings.inputs_dir == tmp_path / "inputs"


def test_fastvideo_without_gpu_exits_with_the_way_out(capsys, monkeypatch):
    monkeypatch.delenv("VIDEOSERVE_FASTVIDEO_CPU_SHIM", raising=False)
    monkeypatch.setattr("videoserve.backend_cli.cuda_gpu_count", lambda: 0)
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
    from videoserve.backend_cli import warn_if_open

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
    from videoserve.launcher import backend_command, key_environments
    from videoserve.launcher import build_parser as launcher_parser

    args = launcher_parser().parse_args(["--api_key", "secret-1", "--api_key", "secret-2",
                                         "--cors_origins", "https://a.example"])
    backend_env, ui_env = key_environments(args)
    assert backend_env == {"VIDEOSERVE_API_KEYS": "secret-1,secret-2"}
    assert ui_env == {"VIDEOSERVE_API_KEY": "secret-1"}
    command = backend_command(args)
    assert "secret-1" not in " ".join(command) and "https://a.example" in command


def test_metrics_export_port_goes_to_a_locally_started_ray(monkeypatch):
    import ray

    from videoserve.backend_cli import start
    from videoserve.launcher import backend_command
    from videoserve.launcher import build_parser as launcher_parser

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
    from videoserve.deployments import build_app

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
    from videoserve.launcher import backend_command
    from videoserve.launcher import build_parser as launcher_parser

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

    from videoserve import backend_cli, deployments

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
    monkeypatch.setattr("videoserve.backend_cli.cuda_gpu_count", lambda: 2)
    args = build_parser().parse_args(["--preset", "fastwan", "--tasks", "i2v",
                                      "--i2v_sp_size", "2"])
    spec = settings_from_args(args).models["i2v"]
    assert spec.engine_options["sp_size"] == 2 and spec.num_gpus == 2.0
    assert main(["--preset", "fastwan", "--t2v_sp_size", "4"]) == 2
    assert "--t2v_sp_size 4 needs 4 GPUs" in capsys.readouterr().err
    assert main(["--preset", "fastwan", "--engine", "diffusers", "--i2v_sp_size", "2"]) == 2
    assert "fastvideo engine" in capsys.readouterr().err


def test_launcher_forwards_sp_size():
    from videoserve.launcher import backend_command
    from videoserve.launcher import build_parser as launcher_parser

    command = backend_command(launcher_parser().parse_args(["--i2v_sp_size", "2"]))
    assert command[command.index("--i2v_sp_size") + 1] == "2"
    assert "--t2v_sp_size" not in command
