"""Settings: one validated object in sections, read from the documented variable names."""

import pytest

from molserve.config import GatewaySettings, Settings


def test_sections_read_the_documented_variable_names(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MOLSERVE_WORKER_URLS", '["http://127.0.0.1:8100"]')
    monkeypatch.setenv("MOLSERVE_MAX_BATCH", "250")
    monkeypatch.setenv("MOLSERVE_JOBS_DIR", str(tmp_path / "jobs"))
    monkeypatch.setenv("MOLSERVE_TRAINING_BACKEND", "ray")
    monkeypatch.setenv("MOLSERVE_WORKER_BACKEND", "onnx-int8")
    (tmp_path / ".env").write_text("MOLSERVE_API_KEY=from-dotenv\nMOLSERVE_REGISTRY=/srv/registry\n")
    settings = Settings()
    assert settings.remote.worker_urls == ["http://127.0.0.1:8100"]
    assert settings.gateway.max_batch == 250 and settings.gateway.api_key == "from-dotenv"
    assert str(settings.registry) == "/srv/registry"
    assert settings.jobs.jobs_dir == tmp_path / "jobs"
    assert settings.engines.training_backend == "ray"
    assert settings.worker.backend == "onnx-int8"


def test_a_field_given_by_name_lands_in_its_section_and_keeps_the_environment(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MOLSERVE_API_KEY", "from-env")
    settings = Settings(registry=tmp_path, max_batch=7, jobs_dir=None)
    assert settings.gateway.max_batch == 7 and settings.gateway.api_key == "from-env"
    assert settings.jobs.jobs_dir is None and settings.registry == tmp_path
    changed = settings.with_overrides(worker_urls=["http://w"], bootstrap=True)
    assert changed.remote.worker_urls == ["http://w"] and changed.gateway.bootstrap
    assert changed.gateway.max_batch == 7 and settings.remote.worker_urls == []
    explicit = Settings(gateway=GatewaySettings(port=9000), host="0.0.0.0")
    assert (explicit.gateway.port, explicit.gateway.host) == (9000, "0.0.0.0")


def test_a_misspelt_or_invalid_setting_is_an_error_not_a_silent_default(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(TypeError, match="no setting named max_bacth"):
        Settings(max_bacth=10)
    monkeypatch.setenv("MOLSERVE_MAX_BATCH", "0")
    with pytest.raises(ValueError, match="max_batch"):
        Settings()
