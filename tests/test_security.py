"""API keys (hashed, scoped, rate-limited), and bad input that must never become a 500."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from molserve.chem.molecules import InvalidSmiles, try_parse
from molserve.gateway.keys import KeyStore


def test_keys_are_stored_hashed_and_verified_by_scope(tmp_path):
    store = KeyStore(tmp_path / "keys.json")
    key, record = store.create("screening-team", ["read", "predict"], rate_per_minute=5)
    text = (tmp_path / "keys.json").read_text()
    assert key not in text and record.hash in text
    assert (tmp_path / "keys.json").stat().st_mode & 0o777 == 0o600
    reloaded = KeyStore(tmp_path / "keys.json")
    assert reloaded.verify(key).id == record.id
    assert reloaded.verify(key[:-1] + ("a" if key[-1] != "a" else "b")) is None
    assert reloaded.verify("ms_nothere_secret") is None
    assert reloaded.verify(key).allows("predict") and not reloaded.verify(key).allows("train")
    assert [reloaded.throttle(record) == 0 for _ in range(6)] == [True] * 5 + [False]
    reloaded.revoke(record.id)
    assert KeyStore(tmp_path / "keys.json").verify(key) is None
    with pytest.raises(ValueError):
        reloaded.create("x", ["superuser"])


@pytest.fixture()
def keyed_client(trained_registry, tmp_path):
    from fastapi.testclient import TestClient

    from molserve.config import Settings
    from molserve.gateway.app import create_app

    keys_file = tmp_path / "keys.json"
    store = KeyStore(keys_file)
    keys = {
        "reader": store.create("reader", ["read"])[0],
        "predictor": store.create("predictor", ["read", "predict"], rate_per_minute=3)[0],
        "admin": store.create("admin", ["admin"])[0],
    }
    settings = Settings(registry=trained_registry.root, api_keys_file=keys_file,
                        require_key_for_reads=True, jobs_dir=tmp_path / "jobs")
    with TestClient(create_app(settings)) as client:
        yield client, keys


def test_scopes_and_rate_limits_over_http(keyed_client):
    client, keys = keyed_client
    body = {"molecules": ["CCO"], "endpoints": ["tpsa"]}
    assert client.post("/v1/predict", json=body).status_code == 401
    assert client.get("/v1/endpoints", headers={"x-api-key": keys["reader"]}).status_code == 200
    refused = client.post("/v1/predict", json=body, headers={"x-api-key": keys["reader"]})
    assert refused.status_code == 403 and refused.json()["error"] == "insufficient_scope"
    auth = {"authorization": f"Bearer {keys['predictor']}"}
    assert [client.post("/v1/predict", json=body, headers=auth).status_code for _ in range(4)] == [
        200, 200, 200, 429]
    limited = client.post("/v1/predict", json=body, headers=auth)
    assert limited.status_code == 429 and int(limited.headers["retry-after"]) >= 1
    assert client.post("/v1/models/reload", headers=auth).status_code == 403
    assert client.post("/v1/models/reload", headers={"x-api-key": keys["admin"]}).status_code == 200


def test_cli_creates_lists_and_revokes_keys(tmp_path):
    keys_file = tmp_path / "k.json"
    run = [sys.executable, "-m", "molserve", "keys", "--file", str(keys_file)]
    created = subprocess.run([*run, "create", "--name", "ci", "--scopes", "read,predict"],
                             capture_output=True, text=True, check=True)
    key = created.stdout.strip()
    assert key.startswith("ms_") and key not in keys_file.read_text()
    listing = subprocess.run([*run, "list"], capture_output=True, text=True, check=True).stdout
    assert "ci" in listing and key not in listing
    key_id = key.split("_")[1]
    assert len(key_id) == 32  # 128 random bits
    subprocess.run([*run, "revoke", key_id], check=True, capture_output=True)
    stored = json.loads(keys_file.read_text())
    assert stored["keys"] == [] and stored["revoked"] == [key_id]


def test_a_revoked_key_id_is_never_given_out_again(tmp_path, monkeypatch):
    """A new key must not inherit a revoked key's jobs and uploads (they are owned by id)."""
    import secrets

    from molserve.gateway.keys import KeyStore

    store = KeyStore(tmp_path / "k.json")
    _, first = store.create("first", ["predict"])
    store.revoke(first.id)
    _, live = store.create("live", ["predict"])
    draws = iter([first.id, live.id, "f" * 32])  # a revoked id, a live one, then a fresh one
    monkeypatch.setattr(secrets, "token_hex", lambda n: next(draws))
    _, third = store.create("third", ["predict"])
    assert third.id == "f" * 32
    # The revoked id is remembered across processes (it is in the keys file).
    assert first.id in KeyStore(tmp_path / "k.json").revoked


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200))
def test_any_text_parses_or_fails_with_a_reason(text):
    result = try_parse(text)
    if isinstance(result, InvalidSmiles):
        assert result.reason and "\n" not in result.reason
    else:
        assert result.canonical_smiles and result.mol.GetNumHeavyAtoms() > 0


SMILES_ALPHABET = "CNOSPFIBrcnosl()[]=#@+-123456789%/\\.H"


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=SMILES_ALPHABET, max_size=120))
def test_smiles_like_noise_never_raises(text):
    try_parse(text)


@pytest.mark.parametrize("smiles", [
    "C1" + "C" * 400 + "1",                       # a 401-membered ring
    "C" * 499 + "(" * 0,                           # a long chain at the atom limit
    "C(" * 300 + "C" + ")" * 300,                  # deeply nested branches
    "c1ccc2cc3cc4cc5cc6ccccc6cc5cc4cc3cc2c1" * 10,  # ten fused polyacenes joined
    ".".join(["[Na+]"] * 300),                     # many fragments
])
def test_pathological_molecules_are_answered_or_refused_quickly(app_client, smiles):
    started = time.perf_counter()
    response = app_client.post("/v1/predict", json={"molecules": [smiles]})
    assert response.status_code == 200
    assert time.perf_counter() - started < 5
    result = response.json()["results"][0]
    assert result["error"] or result["predictions"]


json_values = st.recursive(
    st.none() | st.booleans() | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=20,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.dictionaries(st.sampled_from(["molecules", "endpoints", "tier", "deadline_ms", "extra"]),
                       json_values, max_size=4))
def test_arbitrary_request_bodies_get_answers_or_4xx_with_a_message(app_client, body):
    response = app_client.post("/v1/predict", json=body)
    assert response.status_code < 500, (body, response.text)
    if response.status_code >= 400:
        assert response.json()["message"]


FUZZ_CALLERS = {"anonymous": None, "read": ["read"], "predict": ["predict"], "train": ["train"],
                "admin": ["admin"]}


def fuzz_summary(output: str) -> str:
    """The totals line schemathesis prints at the end of a run."""
    import re

    lines = [line.strip() for line in output.splitlines() if re.search(r"\d+ (passed|failed)", line)]
    return lines[-1] if lines else output.strip().splitlines()[-1]


def test_schemathesis_with_a_key_of_each_scope_finds_no_failure_and_no_success_it_must_refuse(
        trained_registry, tmp_path, postgres, s3):
    """Every documented operation, from the gateway's own OpenAPI document: every check, every
    phase (examples, coverage, fuzzing, stateful), once without a key and once with a key of each
    scope, against a gateway that needs keys for reads and runs as a fleet member: jobs, keys,
    rate limits and model versions in PostgreSQL, uploads, results and models in an S3 store (the
    single-machine stores are what the rest of the suite runs on). Besides schemathesis's own checks, one of
    ours (tests/schemathesis_hooks.py) fails any 2xx to a caller tests/authorization_rules.py
    refuses. Deprecated operations (kept for older clients) are left out; tests/schemathesis.toml
    says what else is configured, and why."""
    import os
    import shutil
    from pathlib import Path

    from tests.conftest import free_port
    from tests.processes import stop, wait_for

    binary = shutil.which("schemathesis", path=os.path.dirname(sys.executable))
    if binary is None:
        pytest.skip("schemathesis is not installed")
    here = Path(__file__).resolve().parent
    registry = tmp_path / "registry"  # the run deletes model versions: a copy of its own
    shutil.copytree(trained_registry.root, registry)
    database = postgres.new_database()
    keys = KeyStore(None, database_url=database)
    # A high rate: the run is about scopes, not about the rate limit (tested above).
    made = {name: keys.create(f"fuzz-{name}", scopes, rate_per_minute=100_000)
            for name, scopes in FUZZ_CALLERS.items() if scopes}
    port = free_port()
    env = {**os.environ, **s3.env, "MOLSERVE_REGISTRY": str(registry), "HF_HUB_OFFLINE": "1",
           "MOLSERVE_JOBS_DIR": str(tmp_path / "jobs"), "MOLSERVE_DATABASE_URL": database,
           "MOLSERVE_STORAGE_URL": s3.bucket("fuzz") + "/molserve", "MOLSERVE_REQUIRE_KEY_FOR_READS": "true",
           "SCHEMATHESIS_HOOKS": str(here / "schemathesis_hooks.py"),
           "MOLSERVE_FUZZ_ENDPOINTS": ",".join(trained_registry.endpoints())}
    server = subprocess.Popen([sys.executable, "-m", "molserve", "serve", "--port", str(port),
                               "--log-level", "warning"], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    summaries = {}
    try:
        wait_for(f"http://127.0.0.1:{port}/readyz", headers={"x-api-key": made["read"][0]})
        for name, scopes in FUZZ_CALLERS.items():
            key, record = made[name] if scopes else (None, None)
            caller_env = {**env, "MOLSERVE_FUZZ_SCOPES": ",".join(scopes) if scopes else "anonymous",
                          "MOLSERVE_FUZZ_OWNER": f"key:{record.id}" if record else "anonymous"}
            run = subprocess.run(
                [binary, "--config-file", str(here / "schemathesis.toml"), "run",
                 f"http://127.0.0.1:{port}/openapi.json", "--phases", "examples,coverage,fuzzing,stateful",
                 "--max-examples", "20", "--seed", os.environ.get("MOLSERVE_FUZZ_SEED", "1"),
                 "--generation-database", "none",
                 "--request-timeout", "20", "--exclude-deprecated", "--no-color",
                 *(["-H", f"x-api-key: {key}"] if key else [])],
                capture_output=True, text=True, timeout=300, env=caller_env, cwd=tmp_path)
            summaries[name] = fuzz_summary(run.stdout)
            # The failures section first: pytest shortens long messages from the middle.
            failures = run.stdout[run.stdout.find("=== FAILURES"):run.stdout.find("=== SUMMARY")]
            assert run.returncode == 0, f"{name}: {failures[:4000] or run.stdout[-4000:]}"
            assert " passed" in run.stdout and "failure" not in run.stdout, (name, run.stdout[-3000:])
    finally:
        stop(server)
        # Jobs the fuzzer submitted run in processes of their own, which outlive the gateway by
        # design (a restarted gateway resumes them): end this run's, so they do not load the suite.
        if shutil.which("pkill"):
            pattern = f"molserve.jobs.execute --job [0-9a-f]+ --jobs-dir {tmp_path}/jobs"
            subprocess.run(["pkill", "-f", pattern], check=False)
        print("schemathesis per caller:", summaries)


def test_the_offline_audit_flags_a_pin_with_a_known_advisory(tmp_path):
    """scripts/audit.py's offline source (safety-db) on a lock with an old, vulnerable pin and
    on the project's own lock file."""
    import importlib.util
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    spec = importlib.util.spec_from_file_location("audit", root / "scripts" / "audit.py")
    audit = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(audit)
    lock = tmp_path / "old.lock"
    lock.write_text("# a comment\nrequests==2.2.0\nnumpy==2.1.0  # trailing comment\n")
    pins = audit.read_lock(lock)
    assert pins == {"requests": "2.2.0", "numpy": "2.1.0"}
    report = audit.offline_check(pins)
    assert report["available"] and report["data_date"] == "2021-07-01"
    assert any(f["package"] == "requests" and f["cve"] == "CVE-2014-1830" for f in report["findings"])
    assert not any(f["package"] == "numpy" for f in report["findings"])
    own = audit.offline_check(audit.read_lock(root / "requirements.lock"))
    assert own["pins_checked"] > 100 and own["findings"] == []


@pytest.fixture()
def strict_client(trained_registry, tmp_path):
    """A gateway that needs a key for reads, with a small body limit."""
    from fastapi.testclient import TestClient

    from molserve.config import Settings
    from molserve.gateway.app import create_app

    keys_file = tmp_path / "keys.json"
    reader = KeyStore(keys_file).create("reader", ["read", "predict"])[0]
    settings = Settings(registry=trained_registry.root, api_keys_file=keys_file,
                        require_key_for_reads=True, max_body_bytes=20_000, jobs_dir=tmp_path / "jobs",
                        datasets=tmp_path / "datasets")
    with TestClient(create_app(settings)) as client:
        client.headers["x-api-key"] = reader
        yield client


def test_json_routes_refuse_other_media_types_with_415(strict_client):
    body = b'{"molecules": ["CCO"], "endpoints": ["tpsa"]}'
    for media in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"):
        for path in ("/v1/predict", "/v1/jobs"):
            refused = strict_client.post(path, content=body, headers={"content-type": media})
            assert refused.status_code == 415, (path, media)
            assert refused.json()["error"] == "unsupported_media_type"
            assert "application/json" in refused.json()["message"]
    assert strict_client.post("/v1/predict", content=body).status_code == 415  # no type at all
    for media in ("application/json", "application/json; charset=utf-8", "application/vnd.x+json"):
        answer = strict_client.post("/v1/predict", content=body, headers={"content-type": media})
        assert answer.status_code == 200, media


def test_unreadable_bodies_answer_422_and_oversized_chunked_bodies_413_in_the_error_shape(strict_client):
    json_type = {"content-type": "application/json"}
    not_utf8 = strict_client.post("/v1/predict", content=b'{"molecules": ["C\xff\xfeO"]}', headers=json_type)
    assert not_utf8.status_code == 422 and not_utf8.json()["error"] == "invalid_encoding"
    deep = b'{"molecules": ' + b"[" * 5000 + b"]" * 5000 + b"}"
    nested = strict_client.post("/v1/predict", content=deep, headers=json_type)
    assert nested.status_code == 422 and nested.json()["error"] == "too_deeply_nested"

    def chunks():  # no content-length: the limit is found while reading
        for _ in range(30):
            yield b" " * 1000

    chunked = strict_client.post("/v1/predict", content=chunks(), headers=json_type)
    assert chunked.status_code == 413 and chunked.json()["error"] == "body_too_large"
    for response in (not_utf8, nested, chunked):
        assert set(response.json()) >= {"error", "message"} and "detail" not in response.json()


def test_dataset_names_are_checked_and_a_missing_one_does_not_reveal_server_paths(strict_client, tmp_path):
    for name in ("../../etc/passwd", "/etc", "a/b", "..", "Name With Spaces"):
        answer = strict_client.post("/v1/jobs", json={"kind": "screen", "dataset": name,
                                                      "endpoints": ["tpsa"]})
        assert answer.status_code == 422, name
    missing = strict_client.post("/v1/jobs", json={"kind": "screen", "dataset": "no_such_set",
                                                   "endpoints": ["tpsa"]})
    assert missing.status_code == 404 and missing.json()["error"] == "dataset_not_found"
    assert str(tmp_path) not in missing.text and "/" not in missing.json()["message"].split("(")[0]


def test_model_routes_refuse_dot_dot_path_segments(strict_client):
    admin_free = [("GET", "/v1/models/%2e%2e/1"), ("GET", "/v1/models/%2E%2E/%2e%2e"),
                  ("GET", "/v1/models/logbb/%2e%2e"), ("DELETE", "/v1/models/%2e%2e/1"),
                  ("GET", "/v1/models/..%2f..%2fetc/1")]
    for method, url in admin_free:
        answer = strict_client.request(method, url)
        assert answer.status_code in (403, 404, 422), (url, answer.status_code)
        assert answer.json()["error"] != "internal_error"
    assert strict_client.get("/v1/models/%2e%2e/1").status_code == 422


def test_depictions_obey_the_read_policy_and_are_bounded(strict_client):
    key = strict_client.headers.pop("x-api-key")
    assert strict_client.get("/v1/depict?smiles=CCO").status_code == 401
    assert strict_client.get("/v1/depict?smiles=CCO", headers={"x-api-key": "ms_x_y"}).status_code == 403
    strict_client.headers["x-api-key"] = key
    drawn = strict_client.get("/v1/depict?smiles=CCO")
    assert drawn.status_code == 200 and drawn.text.lstrip().startswith("<?xml")
    assert strict_client.get("/v1/depict?smiles=C1CC").status_code == 422
    assert strict_client.get("/v1/depict", params={"smiles": "C" * 2001}).status_code == 422
    assert strict_client.get("/v1/depict?smiles=CCO&width=5000").status_code == 422


def test_a_slow_depiction_answers_503_without_blocking_other_requests(strict_client, monkeypatch):
    import threading

    from molserve.chem import depict as drawing
    from molserve.gateway.routes import web

    release = threading.Event()

    def slow(smiles, width=240, height=180):
        release.wait(10)
        return "<svg/>"

    monkeypatch.setattr(drawing, "svg", slow)
    monkeypatch.setattr(web, "DEPICT_TIMEOUT_S", 0.3)
    try:
        started = time.perf_counter()
        answer = strict_client.get("/v1/depict?smiles=CCCC")
        assert answer.status_code == 503 and answer.json()["error"] == "depict_timeout"
        assert time.perf_counter() - started < 2
        assert strict_client.get("/healthz").status_code == 200
    finally:
        release.set()


def test_csv_results_escape_cells_a_spreadsheet_would_run(tmp_path, trained_registry):
    import csv

    from molserve.operations.screen import screen_file, spreadsheet_safe

    source = tmp_path / "in.smi"
    source.write_text('=HYPERLINK("http://evil")\n+1+2\n-C\n@SUM(A1)\nCCO\n')
    out = tmp_path / "out.csv"
    screen_file(source, out, registry=trained_registry.root, endpoints=["tpsa", "solubility"])
    rows = list(csv.DictReader(out.open()))
    assert [r["input"] for r in rows] == ["'=HYPERLINK(\"http://evil\")", "'+1+2", "'-C", "'@SUM(A1)", "CCO"]
    assert float(rows[4]["tpsa"]) > 0 and not rows[4]["error"]
    assert spreadsheet_safe(-1.5) == -1.5 and spreadsheet_safe("CCO") == "CCO"


def test_a_wrong_method_on_the_static_files_names_the_methods_they_allow(strict_client):
    wrong = strict_client.post("/static/app.js")
    assert wrong.status_code == 405 and wrong.headers["allow"] == "GET, HEAD"
    assert wrong.json()["message"].endswith("use GET")
    missing = strict_client.get("/static/nothing.js")
    assert missing.status_code == 404 and missing.json()["error"] == "not_found"


def test_a_body_of_many_wrong_items_gets_a_small_answer_and_little_work(app_client):
    """A request's lists are bounded in the schema (validation stops at the first item past the
    bound) and an error answer names a few problems and counts the rest: its size never grows
    with the request's."""
    import tracemalloc

    too_many = {"molecules": list(range(150_000)), "endpoints": ["solubility"]}
    tracemalloc.start()
    response = app_client.post("/v1/predict", json=too_many)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert response.status_code == 422 and len(response.content) < 2_000, len(response.content)
    assert "100000" in response.json()["message"]
    assert peak < 200e6, peak  # was several hundred MB for 0.8 MB of integers
    # Under the bound, every item wrong: a few named, the rest counted.
    response = app_client.post("/v1/predict", json={"molecules": list(range(5000))})
    body = response.json()
    assert response.status_code == 422 and len(response.content) < 5_000, len(response.content)
    assert "and 4995 more" in body["message"]
    assert len(body["details"]) == 11 and body["details"][-1] == {"more": 4990}


def test_unknown_endpoint_names_cost_a_few_suggestions_whatever_their_number(app_client, monkeypatch):
    import difflib

    calls = []
    original = difflib.get_close_matches
    monkeypatch.setattr(difflib, "get_close_matches", lambda *a, **k: calls.append(a[0]) or original(*a, **k))
    names = [f"solubilty{i}" for i in range(1000)]
    response = app_client.post("/v1/predict", json={"molecules": ["CCO"], "endpoints": names})
    body = response.json()
    assert response.status_code == 404 and body["error"] == "unknown_endpoint"
    assert len(calls) == 3 and len(response.content) < 10_000
    assert body["details"]["unknown_count"] == 1000 and len(body["details"]["unknown"]) == 20
    assert "and 997 more" in body["message"] and "did you mean" in body["message"]


def test_smiles_are_parsed_off_the_event_loop_on_every_path(trained_registry):
    """One slow molecule must not stall other requests: RDKit runs in the compute threads, for
    the fast tier's path and for the worker tiers' alike."""
    import asyncio
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from molserve.prediction.router import Router

    router = Router(trained_registry, compute=ThreadPoolExecutor(2))
    router.load()
    threads = []
    parse = router._parse
    router._parse = lambda molecules: threads.append(threading.current_thread().name) or parse(molecules)

    async def ask(tier: str) -> None:
        loop_thread = threading.current_thread().name
        await router.predict(["CCO", "c1ccccc1O"], ["solubility"], tier=tier)
        assert threads and threads[-1] != loop_thread

    asyncio.run(ask("auto"))
    router.remotes["graph"] = _NoWorker()  # a worker tier planned: the remote path
    asyncio.run(ask("graph"))
    assert len(threads) == 2


class _NoWorker:
    name = "graph"
    settings = type("S", (), {"timeout_s": 0.1})()

    def served_endpoints(self) -> dict:
        return {}

    def endpoints(self) -> list[str]:
        return []

    async def answer(self, batch, endpoint, deadline, request_id=None):
        from molserve.prediction.remote import RemoteFailure

        raise RemoteFailure("worker_unreachable")
