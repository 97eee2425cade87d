import ast
import subprocess
import sys
from pathlib import Path

import pytest

CHECK = "import sys, {module}; print(sorted(m for m in {heavy} if m in sys.modules))"


@pytest.mark.parametrize(
    ("module", "heavy"),
    [
        ("videoserve.ui.app", ("torch", "ray", "fastvideo", "diffusers")),
        ("videoserve.client", ("torch", "ray", "fastvideo", "diffusers", "gradio")),
        ("videoserve.http.app", ("torch", "fastvideo", "diffusers")),
        ("videoserve.serve.deployments", ("torch", "fastvideo", "diffusers")),
    ],
)
def test_light_layers_do_not_import_gpu_libraries(module, heavy):
    out = subprocess.run([sys.executable, "-c", CHECK.format(module=module, heavy=heavy)],
                         capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# Each wing of the package and what it may not import (checked on the source, every import
# statement, function-level ones included). Imports go one way: ui talks HTTP only; http and
# serve sit on core; engines sit on core; core knows none of them.
PACKAGE = Path(__file__).resolve().parents[2] / "videoserve"
FORBIDDEN = {
    "core": ("fastapi", "starlette", "ray", "torch", "gradio", "diffusers", "fastvideo",
             "videoserve.http", "videoserve.serve", "videoserve.ui", "videoserve.engines",
             "videoserve.devtools"),
    "engines": ("fastapi", "starlette", "gradio", "videoserve.http", "videoserve.serve",
                "videoserve.ui"),
    "http": ("torch", "diffusers", "fastvideo", "gradio", "ray", "videoserve.engines",
             "videoserve.serve", "videoserve.ui", "videoserve.devtools"),
    "serve": ("gradio", "videoserve.ui", "videoserve.devtools"),
    "ui": ("torch", "ray", "diffusers", "fastvideo", "fastapi", "videoserve.core",
           "videoserve.http", "videoserve.serve", "videoserve.engines", "videoserve.devtools"),
}
# The one place the product resolves a ``builtin:`` model id by building it.
DEVTOOLS_RESOLVER = PACKAGE / "engines" / "__init__.py"


def imported_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def breaks(name: str, forbidden: tuple[str, ...]) -> bool:
    return any(name == f or name.startswith(f + ".") for f in forbidden)


@pytest.mark.parametrize("wing", sorted(FORBIDDEN))
def test_each_wing_imports_only_downward(wing):
    found = {f"{path.relative_to(PACKAGE)}: {name}"
             for path in (PACKAGE / wing).rglob("*.py")
             for name in imported_modules(path) if breaks(name, FORBIDDEN[wing])}
    assert not found, sorted(found)


def test_only_devtools_and_the_model_id_resolver_import_devtools():
    found = {f"{path.relative_to(PACKAGE)}: {name}"
             for path in PACKAGE.rglob("*.py")
             if "devtools" not in path.relative_to(PACKAGE).parts and path != DEVTOOLS_RESOLVER
             for name in imported_modules(path) if breaks(name, ("videoserve.devtools",))}
    # videoserve/tiny_models.py keeps `python -m videoserve.tiny_models` working.
    assert {f.split(": ")[0] for f in found} == {"tiny_models.py"}, sorted(found)


def test_the_rules_catch_a_forbidden_import(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from fastapi import FastAPI\n    import ray.serve\n")
    assert {n for n in imported_modules(bad) if breaks(n, FORBIDDEN["core"])} == {
        "fastapi", "fastapi.FastAPI", "ray.serve"}
