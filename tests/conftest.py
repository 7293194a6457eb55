"""Shared fixtures: one registry with every bundled endpoint, trained once per test session."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from molserve.data.bundled import BUNDLED
from molserve.models.gbm_train import train_endpoint
from molserve.registry import Registry


@pytest.fixture(scope="session")
def trained_registry(tmp_path_factory) -> Registry:
    """All bundled endpoints, trained with the `quick` profile (same pipeline, smaller search)."""
    root = Path(os.environ.get("MOLSERVE_TEST_REGISTRY", tmp_path_factory.mktemp("registry")))
    registry = Registry(root)
    for name, loader in BUNDLED.items():
        if registry.latest(name, kind="gbm") is None:
            train_endpoint(loader(), registry, name, profile="quick")
    return registry


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
