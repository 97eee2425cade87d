import pytest

from videoserve.backend_cli import app_builder, build_parser, main, settings_from_args


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
