"""Every verb of the command line, given bad input, fails at once with one line that names the
problem, a non-zero exit code and no traceback; none of these cases starts a server, trains or
reaches the network."""

from __future__ import annotations

import subprocess
import sys

import httpx
import pytest
from typer.testing import CliRunner

from molserve.cli import app, main

UNREACHABLE = "http://127.0.0.1:9"  # the discard port: nothing listens there

# (verb, arguments, a word the message must contain). In arguments, {tmp} is a fresh directory
# holding data.csv (smiles,y), a subdirectory `folder`, and no file named missing.*.
CASES = [
    ("serve", ["serve", "--port", "eighty"], "--port"),
    ("serve", ["serve", "--log-level", "loud"], "loud"),
    ("worker", ["worker", "--backend", "tensorflow"], "tensorflow"),
    ("worker", ["worker", "--port", "0"], "--port"),
    ("bootstrap", ["bootstrap", "--only", "solubility,not_bundled", "--only", "nor_this"], "not_bundled"),
    ("bootstrap", ["bootstrap", "--profile", "slow"], "slow"),
    ("train", ["train", "{tmp}/missing.csv", "--endpoint", "e", "--label-col", "y"], "no such file"),
    ("train", ["train"], "--dataset"),
    ("train", ["train", "--dataset", "no_such_dataset"], "no_such_dataset"),
    ("train", ["train", "{tmp}/data.csv", "--endpoint", "e", "--label-col", "nope"], "nope"),
    ("train", ["train", "{tmp}/data.csv", "--endpoint", "Bad Name", "--label-col", "y"], "endpoint name"),
    ("train", ["train", "{tmp}/data.csv", "--label-col", "y", "--label-col", "z,w", "--endpoint", "e"],
     "drop the endpoint"),
    ("train", ["train", "{tmp}/data.csv", "--seed", "one"], "--seed"),
    ("predict", ["predict", "{tmp}/missing.csv", "-o", "{tmp}/out.csv"], "no such file"),
    ("predict", ["predict", "{tmp}/data.csv", "-o", "{tmp}/out.csv", "--endpoints", "solubilty"],
     "solubilty"),
    ("predict", ["predict", "{tmp}/data.csv"], "--output"),
    ("predict", ["predict", "{tmp}/data.csv", "-o", "{tmp}/out.csv", "--chunk-size", "0"], "--chunk-size"),
    ("predict", ["predict", "{tmp}/data.csv", "-o", "{tmp}/out.csv", "--smiles-col", "structure",
                 "--endpoints", "tpsa"], "no column 'structure'"),
    ("data chembl", ["data", "chembl", "KRAS"], "KRAS"),
    ("data import", ["data", "import", "{tmp}/missing.csv", "--name", "d", "--label-col", "y"],
     "no such file"),
    ("data import", ["data", "import", "{tmp}/data.csv", "--name", "d", "--label-col", "ic50"], "ic50"),
    ("data import", ["data", "import", "{tmp}/data.csv", "--label-col", "y"], "--name"),
    ("data tdc list", ["data", "tdc", "list", "--all"], "--all"),
    ("data tdc fetch", ["data", "tdc", "fetch", "--cache", "{tmp}/data.csv"], "cache"),
    ("data list", ["data", "list", "extra"], "extra"),
    ("data show", ["data", "show", "no_such_dataset"], "no_such_dataset"),
    ("data", ["data", "fetch"], "fetch"),
    ("jobs screen", ["jobs", "--url", UNREACHABLE, "screen", "--dataset", "d"], "cannot reach"),
    ("jobs screen", ["jobs", "--url", UNREACHABLE, "screen", "{tmp}/missing.csv"], "no such file"),
    ("jobs train", ["jobs", "--url", UNREACHABLE, "train", "--dataset", "d"], "cannot reach"),
    ("jobs train", ["jobs", "train", "--model", "forest"], "forest"),
    ("jobs list", ["jobs", "--url", UNREACHABLE, "list"], "cannot reach"),
    ("jobs list", ["jobs", "--url", "localhost:8000", "list"], "http://"),
    ("jobs show", ["jobs", "--url", UNREACHABLE, "show", "abc"], "cannot reach"),
    ("jobs cancel", ["jobs", "--url", UNREACHABLE, "cancel", "abc"], "cannot reach"),
    ("jobs result", ["jobs", "--url", UNREACHABLE, "result", "abc", "-o", "{tmp}/r.csv"], "cannot reach"),
    ("jobs result", ["jobs", "result", "abc"], "--output"),
    ("keys create", ["keys", "create", "--name", "ci"], "--file"),
    ("keys create", ["keys", "--file", "{tmp}/k.json", "create", "--name", "ci", "--scopes", "everything"],
     "scopes"),
    ("keys list", ["keys", "--file", "{tmp}/folder", "list"], "directory"),
    ("keys list", ["keys", "--file", "{tmp}/data.csv", "list"], "keys file"),
    ("keys revoke", ["keys", "--file", "{tmp}/missing.json", "revoke", "abcd1234"], "abcd1234"),
    ("deploy", ["deploy", "kubernetes"], "kubernetes"),
    ("deploy modal", ["deploy", "modal", "--port", "http"], "--port"),
    ("deploy ray", ["deploy", "ray", "--backend", "tensorrt"], "tensorrt"),
    ("models list", ["models", "list", "--jsn"], "--jsn"),
    ("models", ["models", "show"], "show"),
    ("pretrain", ["pretrain", "--corpus", "{tmp}/missing.smi", "--output", "{tmp}/model"], "missing.smi"),
    ("pretrain", ["pretrain", "--corpus", "{tmp}/data.csv"], "--output"),
    ("finetune", ["finetune", "--dataset", "logbb", "--epochs", "0"], "--epochs"),
    ("finetune", ["finetune", "--dataset", "logbb", "--learning-rate", "-1"], "--learning-rate"),
    ("finetune", ["finetune"], "--dataset"),
    ("finetune", ["finetune", "--model", "graph", "--dataset", "nosuch"], "no fast model for nosuch"),
    ("finetune", ["finetune", "--all"], "--model graph"),
    ("finetune", ["finetune", "--model", "graph", "--all", "--dataset", "logbb"], "not both"),
    ("finetune", ["finetune", "--model", "graph", "--dataset", "logbb", "--ensemble", "0"],
     "--ensemble"),
    ("molserve", ["predcit"], "predcit"),
    ("molserve", ["--registry"], "--registry"),
]


@pytest.fixture
def tmp(tmp_path, monkeypatch):
    (tmp_path / "data.csv").write_text("smiles,y\nCCO,1.0\nc1ccccc1O,2.0\n")
    (tmp_path / "folder").mkdir()
    monkeypatch.chdir(tmp_path)  # no .env file of the caller's is read
    for name in ("MOLSERVE_API_KEYS_FILE", "MOLSERVE_URL", "MOLSERVE_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MOLSERVE_REGISTRY", str(tmp_path / "registry"))
    monkeypatch.setenv("MOLSERVE_DATASETS", str(tmp_path / "datasets"))
    return tmp_path


def invoke(args: list[str]):
    return CliRunner().invoke(app, args)


@pytest.mark.parametrize(("verb", "args", "keyword"), CASES,
                         ids=[f"{verb}:{' '.join(a for a in args if '{' not in a)}"[:60]
                              for verb, args, _ in CASES])
def test_every_verb_with_bad_input_prints_one_line_and_fails(tmp, verb, args, keyword):
    result = invoke([a.replace("{tmp}", str(tmp)) for a in args])
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.exit_code == 2, (result.exit_code, result.output)
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("molserve: error: ") and len(lines[0]) > len("molserve: error: ") + 5
    assert keyword.lower() in lines[0].lower(), lines[0]
    assert "Traceback" not in result.output and result.stdout == ""
    assert result.exception is None or isinstance(result.exception, SystemExit)


def test_every_verb_has_a_bad_input_case():
    verbs = {verb for verb, _, _ in CASES}
    assert verbs >= {
        "serve", "worker", "bootstrap", "train", "predict", "data chembl", "data import",
        "data tdc list", "data tdc fetch", "data list", "data show", "jobs screen", "jobs train",
        "jobs list", "jobs show", "jobs cancel", "jobs result", "keys create", "keys list",
        "keys revoke", "deploy modal", "deploy ray", "models list", "pretrain", "finetune"}


def test_predict_with_a_mistyped_endpoint_prints_one_line_and_fails(tmp, capsys):
    """Run as the console script runs (main), not through the test runner."""
    code = main(["predict", str(tmp / "data.csv"), "-o", str(tmp / "out.csv"), "--endpoints", "nosuch"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("molserve: error: ") and "nosuch" in err
    assert "Traceback" not in err and not (tmp / "out.csv").exists()


def test_a_usage_error_is_one_plain_line_not_a_panel(tmp, capsys):
    assert main(["predict", str(tmp / "data.csv"), "-o", str(tmp / "o.csv"), "--xyzzy"]) == 2
    err = capsys.readouterr().err
    assert err == "molserve: error: No such option: --xyzzy (see 'molserve predict --help')\n"


def test_help_is_plain_text_that_lists_every_verb(tmp):
    result = invoke(["--help"])
    assert result.exit_code == 0 and result.stderr == ""
    for verb in ("serve", "worker", "bootstrap", "train", "predict", "data", "jobs", "keys", "deploy",
                 "models", "pretrain", "finetune"):
        assert f"\n  {verb} " in result.stdout
    assert "╭" not in result.stdout and "│" not in result.stdout  # no Rich boxes


def test_a_bug_still_shows_its_traceback(tmp, monkeypatch):
    """The boundary turns expected errors into a line; a programming error keeps its traceback,
    which is what a bug report needs."""
    import molserve.operations.screen as screen

    def broken(*args, **kwargs):
        raise TypeError("a bug")

    monkeypatch.setattr(screen, "screen_file", broken)
    result = CliRunner().invoke(app, ["predict", str(tmp / "data.csv"), "-o", str(tmp / "o.csv")])
    assert isinstance(result.exception, TypeError)


@pytest.mark.parametrize(("status", "error"), [(404, "NotFound"), (409, "Conflict"), (422, "InvalidInput"),
                                               (503, "Unavailable"), (401, "MolserveError")])
def test_the_jobs_client_raises_the_projects_errors_with_the_gateways_message(status, error):
    from molserve import errors
    from molserve.client import GatewayClient

    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, json={"error": "some_code", "message": f"no job {request.url.path}"})

    with GatewayClient("http://gateway", transport=httpx.MockTransport(answer)) as client:
        with pytest.raises(errors.MolserveError) as raised:
            client.get("abc")
    assert type(raised.value) is getattr(errors, error)
    assert raised.value.code == "some_code"
    assert f"HTTP {status}: no job /v1/jobs/abc" in raised.value.message


def test_a_csv_field_longer_than_pythons_limit_is_one_rows_error_not_a_traceback(tmp_path, trained_registry):
    """Python's csv module refuses fields over 131,072 characters by default: that row gets an
    error of its own, every other row its answer."""
    source = tmp_path / "in.csv"
    source.write_text("smiles\nCCO\n" + "C" * 140_000 + "\nc1ccccc1O\n")
    out = tmp_path / "out.csv"
    result = subprocess.run([sys.executable, "-m", "molserve", "--registry", str(trained_registry.root),
                             "predict", str(source), "-o", str(out), "--endpoints", "solubility",
                             "--quiet"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    import csv

    csv.field_size_limit(1 << 30)
    with open(out, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [bool(r["error"]) for r in rows] == [False, True, False]
    assert rows[0]["solubility"] and rows[2]["solubility"]
