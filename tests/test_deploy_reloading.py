"""ReloadingApp: a host's worker app rebuilt when the registry's generation changes, without
dropping a request, and kept when a reload fails."""

from __future__ import annotations

import time
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.testclient import TestClient

from molserve.deploy.reloading import ReloadingApp, registry_generation


def _host(generation: list, *, fail_refresh: bool = False):
    built, stopped, failures = [], [], []

    def build() -> FastAPI:
        number = len(built) + 1

        @asynccontextmanager
        async def lifespan(app):
            yield
            stopped.append(number)

        app = FastAPI(lifespan=lifespan)
        app.get("/which")(lambda: {"app": number})
        built.append(number)
        return app

    def refresh() -> None:
        if fail_refresh:
            raise RuntimeError("there are open files preventing the operation")

    reloading = ReloadingApp(build, lambda: generation[0], refresh=refresh,
                             on_failure=failures.append, check_s=0.0)
    return reloading, built, stopped, failures


def test_a_new_generation_is_served_and_the_old_app_stopped():
    generation = ["g1"]
    reloading, built, stopped, _ = _host(generation)
    with TestClient(reloading) as client:
        assert client.get("/which").json() == {"app": 1}
        assert client.get("/which").json() == {"app": 1} and built == [1]  # unchanged: no rebuild
        generation[0] = "g2"
        answers, deadline = [], time.monotonic() + 30
        while not answers or answers[-1] != 2:
            assert time.monotonic() < deadline, f"never switched: {answers[-5:]}"
            answers.append(client.get("/which").json()["app"])
        assert set(answers) <= {1, 2}
        assert reloading.reloads == 1 and reloading.generation == "g2"
        while stopped != [1]:  # the old app stops once its requests are answered
            assert time.monotonic() < deadline, stopped
            client.get("/which")
    assert stopped == [1, 2]


def test_a_failed_refresh_keeps_the_running_models_and_tells_the_host():
    generation = ["g1"]
    reloading, built, stopped, failures = _host(generation, fail_refresh=True)
    with TestClient(reloading) as client:
        generation[0] = "g2"
        for _ in range(20):
            assert client.get("/which").json() == {"app": 1}
        assert built == [1] and stopped == [] and reloading.generation == "g1"
        assert failures and "open files" in str(failures[0])


def test_the_registry_generation_changes_when_a_version_lands(tmp_path):
    assert registry_generation(tmp_path / "absent") == ()
    (tmp_path / "logbb" / "v1").mkdir(parents=True)
    (tmp_path / "logbb" / "v1" / "manifest.json").write_text("{}")
    first = registry_generation(tmp_path)
    (tmp_path / ".staging" / "logbb-v2").mkdir(parents=True)  # not yet registered
    (tmp_path / "logbb" / "v2").mkdir()  # no manifest yet
    assert registry_generation(tmp_path) == first
    (tmp_path / "logbb" / "v2" / "manifest.json").write_text("{}")
    assert registry_generation(tmp_path) != first
