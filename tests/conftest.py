"""Shared fixtures: one registry with every bundled endpoint, trained once per test session."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from molserve.data.bundled import BUNDLED
from molserve.registry import Registry


def pytest_configure(config) -> None:
    """Every test, and every process a test starts, sees an empty home folder of this session's
    own, as on a machine where nothing ever ran: no `~/.ray/auth_token` left by an earlier Ray
    cluster, no caches or credentials in `~/.cache` or `~/.config`. What a test needs there, it
    makes. The variables are set before any test module (or Ray, or a subprocess) reads them."""
    import tempfile

    home = Path(tempfile.mkdtemp(prefix="molserve-test-home-"))
    os.environ["HOME"] = str(home)
    for variable, folder in (("XDG_CACHE_HOME", ".cache"), ("XDG_CONFIG_HOME", ".config"),
                             ("XDG_DATA_HOME", ".local/share")):
        os.environ[variable] = str(home / folder)
    # Ray's token, if the caller's shell has one, belongs to the caller's clusters, not the tests'.
    for variable in ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_AUTH_MODE", "RAY_ADDRESS"):
        os.environ.pop(variable, None)
    config.molserve_home = home


def pytest_unconfigure(config) -> None:
    import shutil

    home = getattr(config, "molserve_home", None)
    if home is not None:
        shutil.rmtree(home, ignore_errors=True)

# Three of the forty TDC endpoints (a benchmark classifier, a log-scale regression, a dataset
# outside the benchmark group): training all of them takes a quarter of an hour.
TDC_IN_TESTS = ["dili", "half_life", "carcinogenicity"]


@pytest.fixture(scope="session")
def trained_registry(tmp_path_factory) -> Registry:
    """The legacy bundled endpoints and a few TDC ones, trained through the bootstrap with the
    `quick` profile (same pipeline, smaller search)."""
    from molserve.operations.bootstrap import bootstrap, missing

    root = Path(os.environ.get("MOLSERVE_TEST_REGISTRY", tmp_path_factory.mktemp("registry")))
    registry = Registry(root)
    todo = missing(registry, [*BUNDLED, *TDC_IN_TESTS])
    if todo:
        outcome = bootstrap(registry, todo, profile="quick", protocol="tdc")
        assert not [n for n, r in outcome.items() if "error" in r], outcome
    return registry


@pytest.fixture(scope="session")
def tdc_registry(trained_registry) -> Registry:
    return trained_registry


@pytest.fixture(scope="session")
def app_client(trained_registry, tmp_path_factory):
    from fastapi.testclient import TestClient

    from molserve.config import Settings
    from molserve.gateway.app import create_app

    settings = Settings(registry=trained_registry.root, api_key="test-key", max_batch=1000,
                        max_body_bytes=2_000_000, jobs_dir=tmp_path_factory.mktemp("jobs"))
    with TestClient(create_app(settings)) as client:
        yield client


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def transformer_registry(trained_registry, tmp_path_factory) -> Registry:
    """A copy of the bundled registry plus tiny fine-tuned transformers for two endpoints."""
    import shutil

    from molserve.models.transformer.pipeline import finetune_endpoint

    root = tmp_path_factory.mktemp("tf") / "registry"
    shutil.copytree(trained_registry.root, root)
    registry = Registry(root)
    for endpoint in ("logbb", "hydration_free_energy"):
        finetune_endpoint(registry, endpoint, base="random:tiny", epochs=2, learning_rate=1e-3,
                          batch_size=64)
    return registry


@pytest.fixture(scope="session")
def postgres():
    """A PostgreSQL server of the session's own (tests/postgres.py); its `new_database()` gives
    each test an empty database."""
    pytest.importorskip("psycopg")
    from tests.postgres import PostgresServer, binaries

    if binaries() is None:
        pytest.skip("PostgreSQL's server binaries are not installed")
    server = PostgresServer().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def s3():
    """A local S3-compatible server of the session's own (tests/objectstore.py)."""
    pytest.importorskip("s3fs")
    from tests.objectstore import S3Server

    server = S3Server().start()
    try:
        yield server
    finally:
        server.stop()
