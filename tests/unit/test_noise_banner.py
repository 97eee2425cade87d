"""The launcher's banner after the backend is ready: shown whenever a served model has random
weights, however it was chosen; not shown for real models."""

from videoserve.client import BackendError
from videoserve.serve.launcher import noise_banner


class FakeClient:
    def __init__(self, models=None, error=None):
        self._models, self._error = models, error

    def models(self):
        if self._error:
            raise self._error
        return self._models


def test_a_synthetic_model_gets_the_banner_naming_it(capsys):
    client = FakeClient({"t2v": {"id": "/data/full/synthetic-fastwan", "synthetic": True},
                         "i2v": {"id": "Wan-AI/Wan2.1-I2V-14B-480P-Diffusers",
                                 "synthetic": False}})
    assert noise_banner(client) == ["t2v"]
    out = capsys.readouterr().out
    assert "t2v: /data/full/synthetic-fastwan" in out and "noise" in out
    assert "Wan2.1-I2V-14B" not in out


def test_real_models_and_an_unreadable_list_get_no_banner(capsys):
    real = FakeClient({"t2v": {"id": "FastVideo/FastWan2.1-T2V-1.3B-Diffusers",
                               "synthetic": False}})
    assert noise_banner(real) == []
    assert noise_banner(FakeClient(error=BackendError(401, "a key is needed"))) == []
    assert capsys.readouterr().out == ""
