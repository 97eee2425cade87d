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
