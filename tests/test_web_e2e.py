"""The web page in a real browser (Debian's chromium driven by Playwright) against the real
gateway on loopback. Screenshots are written to test-artifacts/."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import free_port
from tests.processes import wait_for

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (make test installs it)")


@pytest.fixture(scope="module")
def served(trained_registry, tmp_path_factory):
    import shutil

    # The jobs tab registers a model: on a copy, so the session's registry stays as trained.
    registry = tmp_path_factory.mktemp("web") / "registry"
    shutil.copytree(trained_registry.root, registry)
    port = free_port()
    env = {**os.environ, "MOLSERVE_REGISTRY": str(registry),
           "MOLSERVE_JOBS_DIR": str(tmp_path_factory.mktemp("webjobs")), "MOLSERVE_API_KEY": "k3y"}
    process = subprocess.Popen([sys.executable, "-m", "molserve", "serve", "--port", str(port),
                                "--log-level", "warning"], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for(f"http://127.0.0.1:{port}/readyz")
    yield f"http://127.0.0.1:{port}"
    process.terminate()
    process.wait(timeout=10)


@pytest.fixture(scope="module")
def page(served):
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"])
        context = browser.new_context(viewport={"width": 1400, "height": 1000}, accept_downloads=True)
        tab = context.new_page()
        requests: list[str] = []
        tab.on("request", lambda r: requests.append(r.url))
        tab.goto(served)
        tab.wait_for_selector("#endpoint-list input")
        tab.requests = requests
        yield tab
        browser.close()


def test_predict_shows_depictions_values_and_flags_invalid_smiles(page, served, tmp_path):
    page.fill("#smiles", "CC(=O)Oc1ccccc1C(=O)O\nCN1C=NC2=C1C(=O)N(C(=O)N2C)C\nC1CC\nc1ccccc1O")
    page.click("#run")
    page.wait_for_selector("#results tbody tr:nth-child(4)")
    rows = page.locator("#results tbody tr")
    assert rows.count() == 4
    invalid = page.locator("#results tbody tr.invalid")
    assert invalid.count() == 1 and "unclosed ring" in invalid.inner_text()
    first = rows.nth(0)
    assert "CC(=O)Oc1ccccc1C(=O)O" in first.inner_text()
    assert "log10(mol/L)" in first.inner_text() and "fast" in first.inner_text()
    image = first.locator("td.depiction img")
    page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=image.element_handle())
    assert page.locator("#status").inner_text().startswith("4 molecules, 1 could not be read")
    page.screenshot(path=str(ARTIFACTS / "predict.png"), full_page=True)

    with page.expect_download() as download_info:
        page.click("#download")
    saved = tmp_path / "out.csv"
    download_info.value.save_as(saved)
    lines = saved.read_text().splitlines()
    header = lines[0].split(",")
    assert header[:4] == ["row", "input", "canonical_smiles", "error"] and "solubility" in header
    assert len(lines) == 5 and "unclosed ring" in lines[3]


def test_models_tab_plots_held_out_predictions(page):
    page.click("button[data-tab=models]")
    page.wait_for_selector(".model-card[data-endpoint=solubility] svg.plot circle")
    card = page.locator(".model-card[data-endpoint=solubility]")
    assert "rmse" in card.inner_text() and "scaffold" in card.inner_text()
    assert page.locator(".model-card[data-endpoint=bbb_penetration] svg.plot path").count() == 1
    page.screenshot(path=str(ARTIFACTS / "models.png"), full_page=True)


def test_page_uses_no_outside_resources(page, served):
    outside = [url for url in page.requests if not url.startswith(served) and not url.startswith("blob:")]
    assert outside == []


def test_jobs_tab_trains_a_model_with_live_progress(page, served, tmp_path):
    from molserve.data.bundled import load_bundled

    data = load_bundled("logbb")
    path = tmp_path / "mine.csv"
    rows = [f"{s},{y}" for s, y in zip(data.smiles, data.labels, strict=True)]
    path.write_text("smiles,y\n" + "\n".join(rows))
    page.click("button[data-tab=jobs]")
    page.set_input_files("#train-file", str(path))
    page.fill("#train-endpoint", "web_logbb")
    page.fill("#train-label", "y")
    page.fill("#train-key", "k3y")
    page.select_option("#train-profile", "quick")
    page.click("#train-form button[type=submit]")
    page.wait_for_selector("#job-table tbody tr")
    page.wait_for_function(
        "() => [...document.querySelectorAll('#job-table .job-state')]"
        ".some(td => td.textContent === 'succeeded')",
        timeout=120_000)
    assert "web_logbb v1" in page.locator("#job-table").inner_text()
    page.screenshot(path=str(ARTIFACTS / "jobs.png"), full_page=True)
