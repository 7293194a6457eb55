"""The documentation: the site builds with every warning an error, and every code block in
README.md and docs/ runs, against a real gateway where it calls one.

How the blocks are run. Each page's blocks run in order, as a reader would run them, from a
folder laid out like a checkout (`docs/` and a copy of the test registry as `./registry`):

- `bash` blocks run in bash with `set -euo pipefail`; exported variables carry over to the
  page's next block. `curl` fails on an HTTP error status, so an example that answers 4xx fails.
- `python` blocks run in one namespace per page, in this process.
- The gateway the examples call (`localhost:8000` in the text) is a real `molserve serve`
  process on a free port, started once for this module, with an admin key in
  `MOLSERVE_API_KEY` (as in the shell that started it) and a keys file for `molserve keys`.
- A block preceded by `<!-- doc-test: syntax: <why> -->` (it needs an account, a cluster, a
  database, or hours) is only checked: bash for syntax, and every `molserve`, `modal` and `make`
  command in it against the real command line (commands, options, arguments); python compiled.
- `<!-- doc-test: fragment -->` marks a JSON excerpt (`"key": {...}`) that parses once wrapped in
  braces; other JSON blocks must parse as they are.
- Code blocks of the files the site includes (ARCHITECTURE.md, BENCHMARKS.md) are benchmark
  commands: checked like syntax-only blocks.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import free_port
from tests.processes import stop, wait_for

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PAGES = [ROOT / "README.md", *sorted(p for p in DOCS.rglob("*.md") if "hooks" not in p.parts)]
INCLUDED = [ROOT / "ARCHITECTURE.md", ROOT / "BENCHMARKS.md"]
RUNNABLE = {"bash": "bash", "sh": "bash", "shell": "bash", "python": "python"}
DIRECTIVE = re.compile(r"<!--\s*doc-test:\s*(?P<mode>[a-z]+)\s*(?::\s*(?P<why>.*?))?\s*-->")
FENCE = re.compile(r"^(?P<indent>\s*)(?P<fence>`{3,})\s*(?P<info>[^`]*)$")
GATEWAY_IN_TEXT = re.compile(r"\b(?:localhost|127\.0\.0\.1):8000\b")


@dataclass
class Block:
    page: Path
    line: int
    language: str
    code: str
    mode: str  # run | syntax | fragment | show (not code: output, a tree, a table)
    why: str = ""

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def blocks(page: Path, mode_of_runnable: str = "run") -> list[Block]:
    """The fenced code blocks of a Markdown page, each with how it is tested."""
    found: list[Block] = []
    lines = page.read_text(encoding="utf-8").splitlines()
    i = 0
    while i < len(lines):
        opening = FENCE.match(lines[i])
        if not opening:
            i += 1
            continue
        indent, fence = opening["indent"], opening["fence"]
        language = (opening["info"].split() or [""])[0].lower()
        end = i + 1
        while end < len(lines) and lines[end].strip() != fence:
            end += 1
        code = textwrap.dedent("\n".join(line[len(indent):] if line.startswith(indent) else line
                                         for line in lines[i + 1:end]))
        directive = DIRECTIVE.search(lines[i - 1]) if i > 0 else None
        if directive:
            mode, why = directive["mode"], directive["why"] or ""
        elif language in RUNNABLE:
            mode, why = mode_of_runnable, ""
        else:
            mode, why = "show", ""
        found.append(Block(page, i + 1, language, code + "\n", mode, why))
        i = end + 1
    return found


ALL_BLOCKS = [b for page in PAGES for b in blocks(page)] + [
    b for page in INCLUDED for b in blocks(page, "syntax")]


def test_every_block_is_marked_as_the_tests_read_it():
    """A directive is one the tests know, names why for a block that is not run, and sits on a
    block it applies to: no example is left out of the run by a typo."""
    problems = []
    for block in ALL_BLOCKS:
        if block.mode not in {"run", "syntax", "fragment", "show"}:
            problems.append(f"{block.where}: unknown doc-test mode {block.mode!r}")
        if block.mode == "syntax" and block.page not in INCLUDED and not block.why:
            problems.append(f"{block.where}: a syntax-only block must say why it is not run")
        if block.mode == "syntax" and block.language not in RUNNABLE:
            problems.append(f"{block.where}: syntax-only applies to bash and python blocks")
        if block.mode == "fragment" and block.language != "json":
            problems.append(f"{block.where}: fragment applies to JSON blocks")
    assert not problems, "\n".join(problems)
    assert sum(b.mode == "run" for b in ALL_BLOCKS) >= 30


# --- what can only be checked ---------------------------------------------------------------

def simple_commands(code: str) -> list[list[str]]:
    """The simple commands of a shell snippet (words after variable assignments), as far as a
    static reading can tell; commands inside `$(...)` and loops are left to `bash -n`."""
    joined = re.sub(r"\\\n", " ", code)
    commands: list[list[str]] = []
    for line in joined.splitlines():
        if "$(" in line or line.strip().startswith(("for ", "do ", "done")):
            continue
        lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        lexer.commenters = "#"
        current: list[str] = []
        for token in list(lexer) + [";"]:
            if token and set(token) <= set(";&|()<>"):
                words = current
                while words and re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", words[0]):
                    words = words[1:]
                if words and words[0] == "export":
                    words = []
                if words:
                    commands.append(words)
                current = []
            else:
                current.append(token)
    return commands


def check_molserve(words: list[str]) -> None:
    """Parse `molserve ...` as the real command line would, without running it."""
    import typer

    from molserve.cli import app

    command = typer.main.get_command(app)
    args, parent = words[1:], None
    while True:
        context = command.make_context("molserve", list(args), parent=parent, resilient_parsing=False)
        if not hasattr(command, "commands"):  # a command, not a group: parsed
            return
        # The subcommand's name and its arguments (Click keeps the name apart from the rest).
        rest = [*(getattr(context, "protected_args", None) or getattr(context, "_protected_args", [])),
                *context.args]
        if not rest:
            return
        sub = command.get_command(context, rest[0])
        assert sub is not None, f"molserve has no command {rest[0]!r} in `{' '.join(words)}`"
        command, args, parent = sub, rest[1:], context


def check_modal(words: list[str]) -> None:
    modal_cli = pytest.importorskip("modal.cli.entry_point")
    import click

    command, rest = modal_cli.entrypoint_cli, list(words[1:])
    while isinstance(command, click.Group):
        name, rest = rest[0], rest[1:]
        found = command.get_command(click.Context(command), name)
        assert found is not None, f"modal has no command {name!r} in `{' '.join(words)}`"
        command = found
    command.make_context(command.name, rest)


def check_make(words: list[str]) -> None:
    makefile = (ROOT / "Makefile").read_text()
    for target in (w for w in words[1:] if "=" not in w):
        assert re.search(rf"^{re.escape(target)}:", makefile, re.M), f"the Makefile has no target {target}"


CHECKERS = {"molserve": check_molserve, "modal": check_modal, "make": check_make}


def check_syntax(block: Block) -> None:
    if block.language == "python":
        compile(block.code, block.where, "exec")
        return
    out = subprocess.run(["bash", "-n"], input=block.code, capture_output=True, text=True)
    assert out.returncode == 0, f"{block.where}: bash -n: {out.stderr}"
    for words in simple_commands(block.code):
        checker = CHECKERS.get(Path(words[0]).name)
        if checker is not None:
            try:
                checker(words)
            except Exception as error:  # noqa: BLE001 - the message is the finding
                if isinstance(error, pytest.skip.Exception):
                    raise
                raise AssertionError(f"{block.where}: `{' '.join(words)}`: {error}") from None


CHECKED = [b for b in ALL_BLOCKS if b.mode in {"syntax", "fragment"} or b.language == "json"]


@pytest.mark.parametrize("block", CHECKED, ids=[b.where for b in CHECKED])
def test_blocks_that_are_not_run_are_checked(block):
    if block.language == "json":
        text = "{" + block.code + "}" if block.mode == "fragment" else block.code
        json.loads(text)
    else:
        check_syntax(block)


# --- what runs ------------------------------------------------------------------------------

ADMIN_KEY = "docs-admin-key"


@pytest.fixture(scope="module")
def checkout(trained_registry, tmp_path_factory):
    """A folder laid out as a checkout where `make serve` ran: docs/ and a registry of its own
    (the examples train into it and add reference sets), and a gateway serving that registry."""
    folder = tmp_path_factory.mktemp("checkout")
    (folder / "docs").symlink_to(DOCS)
    shutil.copytree(trained_registry.root, folder / "registry", ignore=shutil.ignore_patterns(".staging"))
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MOLSERVE_")}
    env.update(MOLSERVE_REGISTRY=str(folder / "registry"), MOLSERVE_JOBS_DIR=str(folder / "jobs"),
               MOLSERVE_DATASETS=str(folder / "datasets"), MOLSERVE_API_KEY=ADMIN_KEY,
               MOLSERVE_API_KEYS_FILE=str(folder / "keys.json"))
    log = open(folder / "gateway.log", "wb")  # noqa: SIM115 - the process writes it until the end
    process = subprocess.Popen(
        [sys.executable, "-m", "molserve", "serve", "--port", str(port), "--log-level", "warning"],
        cwd=folder, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for(f"http://127.0.0.1:{port}/readyz", timeout_s=120)
        yield folder, f"127.0.0.1:{port}", env
    finally:
        stop(process)
        log.close()


def shell_environment(folder: Path, address: str, gateway_env: dict[str, str]) -> dict[str, str]:
    """The reader's shell: molserve's virtualenv first on PATH, curl that fails on an HTTP
    error, the gateway's address for `molserve jobs`, and the admin key the gateway started with."""
    shims = folder / ".shims"
    if not shims.exists():
        curl = shutil.which("curl")
        shims.mkdir()
        if curl:
            (shims / "curl").write_text(f'#!/bin/sh\nexec {curl} --fail-with-body "$@"\n')
            (shims / "curl").chmod(0o755)
    env = {k: v for k, v in gateway_env.items() if k not in ("MOLSERVE_REGISTRY", "MOLSERVE_DATASETS")}
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), str(shims), env.get("PATH", "")])
    env["MOLSERVE_URL"] = f"http://{address}"
    env["NO_COLOR"] = "1"
    return env


def run_bash(block: Block, folder: Path, env: dict[str, str], state: Path) -> None:
    script = (f"set -euo pipefail\ncd {shlex.quote(str(folder))}\n"
              f"[ -f {shlex.quote(str(state))} ] && source {shlex.quote(str(state))}\n"
              f"{block.code}\nexport -p > {shlex.quote(str(state))}\n")
    out = subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, (f"{block.where} failed (exit {out.returncode}):\n{block.code}\n"
                                 f"--- stdout\n{out.stdout[-3000:]}\n--- stderr\n{out.stderr[-3000:]}")


def run_python(block: Block, namespace: dict, folder: Path, env: dict[str, str], monkeypatch) -> None:
    monkeypatch.chdir(folder)
    for name in ("MOLSERVE_API_KEY", "MOLSERVE_URL"):
        monkeypatch.setenv(name, env[name])
    printed = io.StringIO()
    try:
        with contextlib.redirect_stdout(printed):
            exec(compile(block.code, block.where, "exec"), namespace)  # noqa: S102 - the example
    except Exception as error:
        raise AssertionError(f"{block.where} failed: {error!r}\n{block.code}\n--- printed\n"
                             f"{printed.getvalue()[-3000:]}") from error


RUN_PAGES = [p for p in PAGES if any(b.mode == "run" for b in blocks(p))]


@pytest.mark.slow
@pytest.mark.parametrize("page", RUN_PAGES, ids=[str(p.relative_to(ROOT)) for p in RUN_PAGES])
def test_the_examples_run(page, checkout, monkeypatch, tmp_path):
    folder, address, gateway_env = checkout
    env = shell_environment(folder, address, gateway_env)
    if not shutil.which("curl"):
        pytest.skip("curl is not installed")
    namespace: dict = {"__name__": "__docs__"}
    state = tmp_path / "shell-state"
    for block in blocks(page):
        if block.mode != "run":
            continue
        code = GATEWAY_IN_TEXT.sub(address, block.code)
        runnable = Block(block.page, block.line, block.language, code, block.mode)
        if RUNNABLE[block.language] == "bash":
            run_bash(runnable, folder, env, state)
        else:
            run_python(runnable, namespace, folder, env, monkeypatch)


# --- the build and what it cannot see -------------------------------------------------------

@pytest.mark.slow
def test_the_site_builds_with_warnings_as_errors(tmp_path):
    """`make docs`: broken links or anchors, missing references and pages left out of the
    navigation fail the build; the reference pages are generated from the code on the way."""
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    out = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir",
                          str(tmp_path / "site")], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-4000:]
    site = tmp_path / "site"
    for page in ("tutorials/screen-a-library", "reference/cli", "reference/settings",
                 "reference/catalogue", "reference/openapi", "reference/python", "benchmarks"):
        assert (site / page / "index.html").is_file(), page
    assert json.loads((site / "reference" / "openapi.json").read_text())["paths"]["/v1/predict"]
    # Nothing is fetched from outside: the site works offline and under any path.
    index = (site / "index.html").read_text()
    assert "fonts.googleapis" not in index and 'href="/' not in index
    # The gateway serves the built site at /guide/, linked from its page; unbuilt, a JSON 404.
    from fastapi.testclient import TestClient

    from molserve.config import Settings
    from molserve.gateway.app import create_app

    registry = tmp_path / "registry"
    registry.mkdir()
    with TestClient(create_app(Settings(registry=registry, guide_dir=site))) as client:
        assert client.get("/guide/").text == index
        assert client.get("/guide/reference/cli/").status_code == 200
        assert 'href="/guide/"' in client.get("/").text
    with TestClient(create_app(Settings(registry=registry, guide_dir=tmp_path / "nothing"))) as client:
        missing = client.get("/guide/")
        assert missing.status_code == 404 and missing.json()["error"] == "guide_not_built"


def test_readme_links_point_at_files_that_exist():
    text = (ROOT / "README.md").read_text()
    links = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text)
    local = [link for link in links if "://" not in link]
    assert local, "the README links into the documentation"
    missing = [link for link in local if not (ROOT / link).exists()]
    assert not missing, missing


def test_the_readme_stays_short_and_links_every_tutorial():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 220
    for tutorial in (DOCS / "tutorials").glob("*.md"):
        if tutorial.name != "index.md":
            assert f"docs/tutorials/{tutorial.name}" in text, tutorial.name


def test_the_endpoint_tables_name_every_bundled_endpoint():
    from molserve.data.catalog import bundled_endpoints

    text = (DOCS / "concepts" / "endpoints.md").read_text()
    named = set(re.findall(r"^\| `([a-z0-9_]+)` \|", text, re.M))
    assert named == set(bundled_endpoints())


def known_variables() -> set[str]:
    """Every environment variable molserve reads: the settings classes' and the command line's."""
    import typer
    from pydantic_settings import BaseSettings

    from molserve import config
    from molserve.cli import app

    names = set()
    for model in vars(config).values():
        if isinstance(model, type) and issubclass(model, BaseSettings):
            prefix = model.model_config.get("env_prefix", "")
            names |= {prefix + field.upper() for field in model.model_fields}

    def walk(command) -> None:
        for param in command.params:
            envvar = getattr(param, "envvar", None)
            names.update([envvar] if isinstance(envvar, str) else envvar or [])
        for sub in getattr(command, "commands", {}).values():
            walk(sub)

    walk(typer.main.get_command(app))
    return names


def test_every_setting_the_docs_name_exists():
    """A variable renamed in the code, or misspelt on a page, fails here."""
    known = known_variables()
    named = {}
    for page in PAGES:
        for name in re.findall(r"\bMOLSERVE_[A-Z0-9_]*[A-Z0-9]\b", page.read_text()):
            named.setdefault(name, page.relative_to(ROOT))
    unknown = {name: str(page) for name, page in named.items() if name not in known}
    assert not unknown, unknown
