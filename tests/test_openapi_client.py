"""The OpenAPI document is good enough to generate a client from: openapi-python-client builds
one, mypy --strict accepts it and a script using it, and it predicts against a live gateway."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time

import pytest

USE_CLIENT = '''
from molserve_client import Client
from molserve_client.api.predict import predict_v1_predict_post
from molserve_client.models import ErrorBody, PredictRequest, PredictResponse
from molserve_client.types import Unset


def predict_one(base_url: str, smiles: str, endpoint: str) -> tuple[float, str]:
    """The value and the answering tier of one endpoint for one molecule."""
    with Client(base_url=base_url, raise_on_unexpected_status=True) as client:
        answer = predict_v1_predict_post.sync(
            client=client, body=PredictRequest(molecules=[smiles], endpoints=[endpoint]))
    if not isinstance(answer, PredictResponse):
        raise AssertionError(answer.message if isinstance(answer, ErrorBody) else answer)
    prediction = answer.results[0].predictions[endpoint]
    if isinstance(prediction.value, Unset):
        raise AssertionError(prediction.error)
    return float(prediction.value), prediction.provenance.tier.value


def refused(base_url: str) -> str:
    """The error code of a request naming an endpoint that does not exist."""
    with Client(base_url=base_url) as client:
        answer = predict_v1_predict_post.sync(
            client=client, body=PredictRequest(molecules=["CCO"], endpoints=["no_such_endpoint"]))
    assert isinstance(answer, ErrorBody)
    return answer.error
'''


def _tool(name: str) -> str:
    path = shutil.which(name, path=os.path.dirname(sys.executable))
    if path is None:
        pytest.skip(f"{name} is not installed")
    return path


def test_a_client_generated_from_the_document_type_checks_and_predicts(trained_registry, tmp_path):
    import uvicorn

    from molserve.config import Settings
    from molserve.gateway.app import create_app
    from tests.conftest import free_port

    generator, mypy = _tool("openapi-python-client"), _tool("mypy")
    app = create_app(Settings(registry=trained_registry.root, jobs_dir=tmp_path / "jobs"))
    (tmp_path / "openapi.json").write_text(json.dumps(app.openapi()))
    # The generator reads SVG as text when told so; every other response has a JSON schema.
    overrides = {"content_type_overrides": {"image/svg+xml": "text/plain"}}
    (tmp_path / "config.json").write_text(json.dumps(overrides))
    env = {**os.environ, "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"]}
    generated = subprocess.run(
        [generator, "generate", "--path", "openapi.json", "--config", "config.json", "--meta", "none",
         "--output-path", "molserve_client"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert generated.returncode == 0, generated.stdout + generated.stderr
    assert "Warning" not in generated.stdout, generated.stdout  # no operation or response left out
    (tmp_path / "use_client.py").write_text(USE_CLIENT)
    # Everything generated from the document is checked strictly; the generator's fixed
    # client.py template forwards `*args: object` to httpx's typed __exit__, which no document
    # can change.
    (tmp_path / "mypy.ini").write_text("[mypy]\nstrict = True\nincremental = False\n\n"
                                       "[mypy-molserve_client.client]\ndisable_error_code = arg-type\n")
    checked = subprocess.run([mypy, "--config-file", "mypy.ini", "molserve_client", "use_client.py"],
                             cwd=tmp_path, env=env, capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    sys.path.insert(0, str(tmp_path))
    try:
        deadline = time.monotonic() + 30
        while not server.started:
            assert time.monotonic() < deadline and thread.is_alive()
            time.sleep(0.05)
        import use_client

        value, tier = use_client.predict_one(f"http://127.0.0.1:{port}", "CCO", "solubility")
        assert tier == "fast" and -3 < value < 3  # ethanol is fully miscible: logS near 0
        assert use_client.refused(f"http://127.0.0.1:{port}") == "unknown_endpoint"
    finally:
        sys.path.remove(str(tmp_path))
        for name in [m for m in sys.modules if m == "use_client" or m.startswith("molserve_client")]:
            del sys.modules[name]
        server.should_exit = True
        thread.join(timeout=10)
