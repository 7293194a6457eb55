"""Shared fixtures: one registry with every bundled endpoint, trained once per test session."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from molserve.data.bundled import BUNDLED
from molserve.registry import Registry

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
        outcome = bootstrap(registry, todo, profile="quick")
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
