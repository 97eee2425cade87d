import subprocess
import sys

import pytest

CHECK = "import sys, {module}; print(sorted(m for m in {heavy} if m in sys.modules))"


@pytest.mark.parametrize(
    ("module", "heavy"),
    [
        ("videoserve.ui", ("torch", "ray", "fastvideo", "diffusers")),
        ("videoserve.client", ("torch", "ray", "fastvideo", "diffusers", "gradio")),
        ("videoserve.api", ("torch", "fastvideo", "diffusers")),
        ("videoserve.deployments", ("torch", "fastvideo", "diffusers")),
    ],
)
def test_light_layers_do_not_import_gpu_libraries(module, heavy):
    out = subprocess.run([sys.executable, "-c", CHECK.format(module=module, heavy=heavy)],
                         capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
