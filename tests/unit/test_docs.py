"""The README is a front door and the docs name only what exists.

* README.md has at most 200 lines (everything else lives in docs/).
* Every relative link in README.md and docs/*.md leads to a file that exists, and a ``#heading``
  in it to a heading that exists.
* Every ``--flag`` they name is a flag of this project's command lines (ray_serve_backend.py,
  start_ray_serve_app.py, gradio_frontend.py, as their parsers define them), of a tool that ships
  with it (benchmarks/*.py, ``python -m videoserve.tiny_models``, test_i2v.py: read from their
  ``add_argument`` calls), or of another program on the short list below. Where a command line in
  code names the script, its flags must be that script's own.
"""

from __future__ import annotations

import ast
import functools
import os
import re
import subprocess
import sys
from pathlib import Path
from urllib.parse import unquote

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
MAX_README_LINES = 200

# Flags of other programs that the docs show in their commands.
OTHER_TOOLS = {
    "--head", "--address", "--resources", "--include-dashboard",  # ray start (docs/CLUSTER.md)
    "--metrics-export-port",  # ray start, for Ray's own metrics (docs/OPERATIONS.md)
    "--generate",  # ray get-auth-token --generate (docs/CLUSTER.md)
    "--durations",  # pytest (docs/BENCHMARKS.md)
    "--dev",  # scripts/bootstrap.sh --dev
}

FENCE = re.compile(r"^ *(```|~~~).*?^ *\1[^\n]*$", re.S | re.M)
CODE_SPAN = re.compile(r"(`+)(.+?)\1", re.S)
LINK = re.compile(r"\[[^\]\n]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HEADING = re.compile(r"^ {0,3}#{1,6}\s+(.+?)\s*#*\s*$", re.M)
FLAG = re.compile(r"(?<![\w-])--[A-Za-z][\w-]*")
SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")
# Where a code line names one of these, the flags after it (to the end of its command) are its.
COMMAND = re.compile(r"(benchmarks/\w+\.py|ray_serve_backend\.py|start_ray_serve_app\.py|"
                     r"gradio_frontend\.py|test_i2v\.py|videoserve\.tiny_models|make run\b)")
COMMAND_END = re.compile(r"\s#|\||&&|;|\)")


def doc_files() -> list[Path]:
    return [README, *sorted((ROOT / "docs").glob("*.md"))]


# -- links --------------------------------------------------------------------------------------


def prose(text: str) -> str:
    """``text`` without code blocks and code spans (a link inside code is no link)."""
    return CODE_SPAN.sub("", FENCE.sub("", text))


def slug(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link: its text
    return re.sub(r"[^\w\- ]", "", text.strip().lower()).replace(" ", "-")


def anchors(text: str) -> set[str]:
    found: set[str] = set()
    seen: dict[str, int] = {}
    for match in HEADING.finditer(FENCE.sub("", text)):
        name = slug(match.group(1))
        count = seen.get(name, 0)
        seen[name] = count + 1
        found.add(name if count == 0 else f"{name}-{count}")
    return found


def broken_links(text: str, base: Path) -> list[str]:
    """Relative links of ``text`` (a page in folder ``base``) that lead nowhere."""
    problems = []
    for target in LINK.findall(prose(text)):
        if SCHEME.match(target):
            continue  # http(s), mailto: not checked here
        path, _, anchor = target.partition("#")
        if not path:
            if anchor and anchor not in anchors(text):
                problems.append(f"{target}: no such heading on this page")
            continue
        resolved = (base / unquote(path)).resolve()
        if not resolved.exists():
            problems.append(f"{target}: no such file")
        elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved.read_text()):
            problems.append(f"{target}: no heading #{anchor} in {path}")
    return problems


# -- flags --------------------------------------------------------------------------------------


def parser_flags(parser) -> set[str]:
    return {option for action in parser._actions for option in action.option_strings}


def source_flags(path: Path) -> set[str]:
    """The ``--flags`` a script's ``add_argument`` calls define (read, not imported: the
    benchmarks import torch and fastvideo)."""
    flags = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "add_argument":
            flags.update(arg.value for arg in node.args if isinstance(arg, ast.Constant)
                         and isinstance(arg.value, str) and arg.value.startswith("--"))
    return flags


def help_flags(script: str) -> set[str]:
    """The flags ``script --help`` lists (for a script whose parser is built inside main)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, str(ROOT / script), "--help"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=300, check=True).stdout
    return set(re.findall(r"^ {2}(?:-\w, )?(--[\w-]+)", out, re.M))


@functools.cache
def command_flags() -> dict[str, set[str]]:
    """Each command the docs may name, with its flags."""
    from videoserve.serve import backend_cli, launcher

    backend = parser_flags(backend_cli.build_parser())
    commands = {
        "ray_serve_backend.py": backend,
        "start_ray_serve_app.py": parser_flags(launcher.build_parser()),
        "gradio_frontend.py": help_flags("gradio_frontend.py"),
        "test_i2v.py": source_flags(ROOT / "videoserve" / "devtools" / "smoke.py"),
        "videoserve.tiny_models": source_flags(ROOT / "videoserve" / "devtools" /
                                               "tiny_models.py"),
    }
    commands["make run"] = commands["start_ray_serve_app.py"]
    shared = source_flags(ROOT / "benchmarks" / "helpers.py")  # add_model_args
    for script in sorted((ROOT / "benchmarks").glob("*.py")):
        own = source_flags(script)
        commands[f"benchmarks/{script.name}"] = (
            own | shared if "add_model_args(" in script.read_text() else own)
    return commands


def known_flags(commands: dict[str, set[str]]) -> set[str]:
    return set().union(*commands.values()) | OTHER_TOOLS


def unknown_flags(text: str, known: set[str]) -> list[str]:
    """Every ``--flag`` in ``text`` (prose and code) that no known command has."""
    return sorted({flag for flag in FLAG.findall(text) if flag not in known})


def code_lines(text: str) -> list[str]:
    """Command lines in ``text``: lines of code blocks (continuations joined) and code spans."""
    lines = []
    for block in FENCE.finditer(text):
        body = re.sub(r"\\\n\s*", " ", block.group(0))
        lines.extend(body.splitlines()[1:-1])
    lines.extend(match.group(2) for match in CODE_SPAN.finditer(FENCE.sub("", text)))
    return lines


def misplaced_flags(text: str, commands: dict[str, set[str]]) -> list[str]:
    """Flags given to a named command (in code) that the command does not have."""
    problems = []
    for line in code_lines(text):
        matches = list(COMMAND.finditer(line))
        for index, match in enumerate(matches):
            stop = matches[index + 1].start() if index + 1 < len(matches) else len(line)
            tail = line[match.end():stop]
            end = COMMAND_END.search(tail)
            tail = tail[:end.start()] if end else tail
            name = match.group(1)
            own = commands.get(name, set())
            problems.extend(f"{name} {flag}" for flag in FLAG.findall(tail) if flag not in own)
    return problems


# -- the docs -----------------------------------------------------------------------------------


def readme_too_long(text: str) -> str | None:
    lines = len(text.splitlines())
    if lines <= MAX_README_LINES:
        return None
    return (f"README.md has {lines} lines; keep it at most {MAX_README_LINES} and move the "
            "rest to docs/")


def test_readme_is_a_front_door():
    assert readme_too_long(README.read_text()) is None


def test_every_relative_link_leads_somewhere():
    problems = {page.relative_to(ROOT).as_posix(): broken_links(page.read_text(), page.parent)
                for page in doc_files()}
    assert not {page: p for page, p in problems.items() if p}


def test_every_flag_named_exists():
    commands = command_flags()
    known = known_flags(commands)
    unknown = {page.relative_to(ROOT).as_posix(): unknown_flags(page.read_text(), known)
               for page in doc_files()}
    misplaced = {page.relative_to(ROOT).as_posix(): misplaced_flags(page.read_text(), commands)
                 for page in doc_files()}
    assert not {page: flags for page, flags in unknown.items() if flags}
    assert not {page: flags for page, flags in misplaced.items() if flags}


def test_the_parsers_are_read():
    commands = command_flags()
    assert {"--preset", "--tasks", "--port", "--api_key"} <= commands["ray_serve_backend.py"]
    assert {"--backend_port", "--frontend_port", "--preset"} <= commands["start_ray_serve_app.py"]
    assert {"--backend_url", "--api_key"} <= commands["gradio_frontend.py"]
    assert "--preset" not in commands["gradio_frontend.py"]
    assert {"--size", "--out", "--tasks", "--force", "--seed"} <= commands["videoserve.tiny_models"]
    assert {"--models", "--part", "--levers"} <= commands["benchmarks/gpu.py"]


# -- the checkers catch what they are for -------------------------------------------------------


def test_the_checkers_fail_on_bad_docs(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "API.md").write_text("# API\n\n## Errors\n")
    page = ("[ok](docs/API.md) [ok](docs/API.md#errors) [web](https://example.com/x) "
            "[here](#top)\n\n# Top\n\n[gone](docs/NOPE.md) [no heading](docs/API.md#limits) "
            "[nowhere](#bottom) `[code](docs/IGNORED.md)`\n")
    assert broken_links(page, tmp_path) == [
        "docs/NOPE.md: no such file", "docs/API.md#limits: no heading #limits in docs/API.md",
        "#bottom: no such heading on this page"]

    commands = command_flags()
    known = known_flags(commands)
    bad = ("Start it with `ray_serve_backend.py --preset tiny --no_such_flag`.\n\n"
           "```bash\n.venv/bin/python gradio_frontend.py --backend_url URL \\\n"
           "    --preset tiny   # a backend flag given to the UI\n"
           "make run ARGS=\"--frontend_port 7861 --warp_speed\"\n```\n")
    assert unknown_flags(bad, known) == ["--no_such_flag", "--warp_speed"]
    assert misplaced_flags(bad, commands) == [
        "gradio_frontend.py --preset", "make run --warp_speed",
        "ray_serve_backend.py --no_such_flag"]
    good = "```bash\nray start --head --port 6379 | ray_serve_backend.py --port 8000\n```\n"
    assert unknown_flags(good, known) == [] and misplaced_flags(good, commands) == []

    assert readme_too_long("line\n" * MAX_README_LINES) is None
    assert readme_too_long("line\n" * (MAX_README_LINES + 1)) is not None


def test_headings_become_github_anchors():
    assert slug("Video jobs: `/v1/videos` (asynchronous, OpenAI videos API shape)") == \
        "video-jobs-v1videos-asynchronous-openai-videos-api-shape"
    assert slug("`POST /generate_video`") == "post-generate_video"
    assert slug("Host names (DNS rebinding)") == "host-names-dns-rebinding"
    assert anchors("# A\n## A\n```\n# not a heading\n```\n") == {"a", "a-1"}
