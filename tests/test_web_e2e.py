"""The web page in a real browser (Debian's chromium driven by Playwright) against the real
gateway on loopback. Screenshots are written to test-artifacts/."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
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


# A batch a medicinal chemist might paste: a nitro aromatic, a PAINS quinone, a molecule in the
# BOILED-Egg's yolk, one in the white only, one far outside it and failing the rules, and one
# unreadable SMILES.
PROFILE_BATCH = {
    "aspirin": "CC(=O)Oc1ccccc1C(=O)O",
    "nitro": "O=[N+]([O-])c1ccc(cc1)C(=O)O",
    "quinone": "O=C1C=CC(=O)C=C1",
    "ibuprofen": "CC(C)Cc1ccc(cc1)C(C)C(=O)O",
    "caffeine": "CN1C=NC2=C1C(=O)N(C(=O)N2C)C",
    "unreadable": "C1CC",
    "tristearin": "CCCCCCCCCCCCCCCCCC(=O)OCC(COC(=O)CCCCCCCCCCCCCCCCC)OC(=O)CCCCCCCCCCCCCCCCC",
}


def _row_numbers(page) -> list[int]:
    return [int(n) for n in page.eval_on_selector_all(
        "#results tbody tr", "rows => rows.map(r => r.querySelector('td').textContent)")]


def _column_values(page, key: str) -> list[float | None]:
    return page.evaluate(
        """key => {
          const headers = [...document.querySelectorAll('#results thead th')];
          const column = headers.findIndex(th => th.dataset.sort === key);
          return [...document.querySelectorAll('#results tbody tr')].map(tr => {
            if (tr.classList.contains('invalid')) return null;
            const cell = tr.children[column].querySelector('.value');
            return cell ? parseFloat(cell.textContent) : null;
          });
        }""", key)


def _row(page, number: int):
    return page.locator(f"#results tbody tr[data-index='{number - 1}']")


def _select_row(page, number: int) -> None:
    page.click(f"#results tbody tr[data-index='{number - 1}'] td.smiles")
    page.wait_for_selector(f"#molecule-detail h2:text-is('Molecule {number}')")


def _loaded(page, selector: str) -> None:
    page.wait_for_function(
        "s => { const img = document.querySelector(s); return img && img.complete && img.naturalWidth > 0; }",
        arg=selector, timeout=15_000)


def test_profile_radar_egg_rules_alerts_and_attribution(page, served):
    from rdkit import Chem

    from molserve.chem.descriptors import compute

    names = list(PROFILE_BATCH)
    number = {name: names.index(name) + 1 for name in names}
    page.click("button[data-tab=predict]")
    page.fill("#smiles", "\n".join(PROFILE_BATCH.values()))
    page.click("#run")
    page.wait_for_function("() => document.querySelector('#status').textContent.startsWith('7 molecules')")
    assert page.locator("#status").inner_text() == "7 molecules, 1 could not be read."

    # The BOILED-Egg: both ellipses and one point per readable molecule, numbered as in the table.
    egg = page.locator("#egg-card")
    assert egg.is_visible()
    assert page.locator("#egg svg path.egg-white").count() == 1
    assert page.locator("#egg svg path.egg-yolk").count() == 1
    valid = [number[n] - 1 for n in names if n != "unreadable"]
    points = page.eval_on_selector_all("#egg .egg-point", "gs => gs.map(g => Number(g.dataset.index))")
    assert sorted(points) == valid
    regions = {name: _row(page, number[name]).locator("td.egg-cell").inner_text()
               for name in ("ibuprofen", "caffeine", "tristearin")}
    assert regions == {"ibuprofen": "BBB (yolk)", "caffeine": "HIA (white)", "tristearin": "outside"}

    # A radar per molecule: a small one in each readable row, a full one in the detail panel.
    assert page.locator("#results td.mini-radar svg.radar polygon.radar-molecule").count() == len(valid)
    assert page.locator("#molecule-detail svg.radar polygon.radar-molecule").count() >= 1
    assert "LIPO" in page.locator("#molecule-detail figure.bioavailability").inner_text()

    # Rule violations, named with value and limit, for the molecule that breaks Lipinski.
    _select_row(page, number["tristearin"])
    failing = page.locator("#molecule-detail table.rules tr.fail")
    assert failing.count() >= 1
    lipinski = page.locator("#molecule-detail table.rules tr", has_text="lipinski")
    assert "fail" in lipinski.inner_text() and "molecular_weight" in lipinski.inner_text()
    assert "lipinski" in _row(page, number["tristearin"]).locator("td.rules-cell").inner_text()
    page.locator("#overview").screenshot(path=str(ARTIFACTS / "profile-rules.png"))

    # Alerts: the nitro group (Brenk) and the quinone (PAINS), its atoms highlighted in the depiction.
    _select_row(page, number["nitro"])
    assert "nitro" in page.locator("#molecule-detail ul.alerts").inner_text().lower()
    _select_row(page, number["quinone"])
    alerts = page.locator("#molecule-detail ul.alerts").inner_text()
    assert "PAINS" in alerts and "quinone" in alerts.lower()
    assert "highlight=" in page.locator("#molecule-detail img.detail-depiction").get_attribute("src")
    _loaded(page, "#molecule-detail img.detail-depiction")

    # The attribution depiction: atoms shaded by their contribution, drawn by the server.
    _loaded(page, "#molecule-detail img.attribution-svg")
    assert page.locator("#molecule-detail .attribution table.bars tr").count() >= 1
    page.screenshot(path=str(ARTIFACTS / "profile.png"), full_page=True)
    page.locator("#overview").screenshot(path=str(ARTIFACTS / "profile-alerts.png"))

    # Sorting: TPSA ascending, then descending; the unreadable row stays last.
    page.click("#results th[data-sort='ep:tpsa']")
    ascending = _column_values(page, "ep:tpsa")
    assert ascending[-1] is None and ascending[:-1] == sorted(ascending[:-1])
    page.click("#results th[data-sort='ep:tpsa']")
    descending = _column_values(page, "ep:tpsa")
    assert descending[:-1] == sorted(ascending[:-1], reverse=True) and descending[-1] is None
    tpsa = {name: compute("tpsa", Chem.MolFromSmiles(s))
            for name, s in PROFILE_BATCH.items() if name != "unreadable"}
    assert _row_numbers(page)[0] == number[max(tpsa, key=tpsa.get)]
    page.click("#results th[data-sort='index']")
    assert _row_numbers(page) == list(range(1, 8))

    # Filtering: by text, by alerts and by applicability domain.
    page.fill("#filter-text", "quinone")
    page.wait_for_function("() => document.querySelector('#filter-count').textContent.startsWith('showing')")
    assert _row_numbers(page) == [number["quinone"]]
    assert page.locator("#filter-count").inner_text() == "showing 1 of 7 molecules"
    page.fill("#filter-text", "")
    page.wait_for_function("() => document.querySelector('#filter-count').textContent === '7 molecules'")
    page.check("#filter-hide-alerts")
    without_alerts = [number[n] for n, s in PROFILE_BATCH.items()
                      if n != "unreadable" and not compute("structural_alerts", Chem.MolFromSmiles(s))]
    assert without_alerts and _row_numbers(page) == without_alerts
    page.uncheck("#filter-hide-alerts")
    page.check("#filter-in-domain")
    import httpx

    answered = httpx.post(f"{served}/v1/predict", json={
        "molecules": list(PROFILE_BATCH.values()), "endpoints": ["bbb_penetration", "solubility"]}).json()
    in_domain = [r["index"] + 1 for r in answered["results"] if not r["error"]
                 and all(a["applicability_domain"]["in_domain"] for a in r["predictions"].values())]
    assert _row_numbers(page) == in_domain
    page.uncheck("#filter-in-domain")
    assert len(_row_numbers(page)) == 7


def test_percentile_radar_when_answers_carry_reference_percentiles(page):
    """The radar against the reference set reads `reference_percentile` from each answer; the
    answers here are the server's own, with percentiles added in the browser's network layer."""
    import json

    def with_percentiles(route):
        response = route.fetch()
        body = response.json()
        for result in body["results"]:
            for rank, answer in enumerate((result.get("predictions") or {}).values()):
                if isinstance(answer.get("value"), int | float):
                    answer["reference_percentile"] = float((rank * 17) % 100)
        route.fulfill(response=response, body=json.dumps(body))

    page.route("**/v1/predict", with_percentiles)
    try:
        page.click("button[data-tab=predict]")
        page.fill("#smiles", "CC(C)Cc1ccc(cc1)C(C)C(=O)O")
        page.click("#run")
        # The previous test's table (now with the server's own percentiles) is replaced, not reused.
        page.wait_for_function("() => document.querySelectorAll('#results tbody tr').length === 1")
        page.wait_for_selector("#molecule-detail figure.percentile svg.radar polygon.radar-molecule")
        assert "reference set" in page.locator("#molecule-detail figure.percentile").inner_text()
        assert page.locator("#results td.mini-radar svg").count() == 1
        assert "p" in page.locator("#results tbody tr td .interval[title^='percentile']").first.inner_text()
    finally:
        page.unroute("**/v1/predict")


def test_jobs_tab_shows_screen_progress(page):
    """A screen job's status with shard progress (as screens report it) is shown in the jobs tab."""
    import json

    job = {"id": "j-screen", "kind": "screen", "state": "running", "params": {}, "progress": 0.4,
           "step": "screening", "eta_s": 90, "attempts": 1, "cancel_requested": False, "created": 0,
           "metrics": {"shards_done": 4, "shards_total": 10, "molecules_done": 40000,
                       "molecules_total": 100000, "hits": 120, "molecules_per_second": 850.0}}
    page.route("**/v1/jobs", lambda route: route.fulfill(status=200, content_type="application/json",
                                                        body=json.dumps([job])))
    try:
        page.click("button[data-tab=jobs]")
        page.wait_for_selector("#job-table tr[data-job='j-screen'] .screen-progress")
        text = page.locator("#job-table tr[data-job='j-screen']").inner_text()
        assert "shards 4 / 10" in text and "40,000 / 100,000 molecules" in text
        assert "850 molecules/s" in text and "120 hits" in text and "ETA 90 s" in text
        page.locator("#job-table").screenshot(path=str(ARTIFACTS / "jobs-screen-progress.png"))
    finally:
        page.unroute("**/v1/jobs")


def test_models_tab_plots_held_out_predictions(page):
    page.click("button[data-tab=models]")
    page.wait_for_selector(".model-card[data-endpoint=solubility] svg.plot circle")
    card = page.locator(".model-card[data-endpoint=solubility]")
    assert "rmse" in card.inner_text() and "scaffold" in card.inner_text()
    # The tier table: the fast model's held-out test figure and the validation figure routing
    # compares, as its manifest records them.
    fast_row = card.locator("table.tier-metrics tbody tr").first
    assert fast_row.locator("td").first.inner_text().startswith("fast")
    assert fast_row.locator("td.test").inner_text().startswith("RMSE ")
    assert fast_row.locator("td.valid").inner_text().startswith("RMSE ")
    assert page.locator(".model-card[data-endpoint=bbb_penetration] svg.plot path").count() == 1
    # How far to trust each model: coverage at the three levels, the calibration set, the domain.
    coverage = card.locator(".trust .coverage").inner_text()
    assert all(level in coverage for level in ("80%:", "90%:", "95%:")) and "calibrated on" in coverage
    assert "max similarity to training" in card.locator(".trust .domain").inner_text()
    bbb = page.locator(".model-card[data-endpoint=bbb_penetration]")
    assert float(bbb.locator(".trust .ece").inner_text().split()[0]) >= 0
    assert bbb.locator("svg.reliability circle").count() >= 2
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
    # "Learn on top of" offers the bundled endpoints of the form's task.
    regression = {o.get_attribute("value") for o in page.locator("#train-base option").all()}
    assert {"", "auto", "solubility", "logbb"} <= regression and "bbb_penetration" not in regression
    page.select_option("#train-task", "classification")
    classification = {o.get_attribute("value") for o in page.locator("#train-base option").all()}
    assert "bbb_penetration" in classification and "solubility" not in classification
    page.select_option("#train-task", "regression")
    page.select_option("#train-base", "solubility")
    page.click("#train-form button[type=submit]")
    page.wait_for_selector("#job-table tbody tr")
    page.wait_for_function(
        "() => [...document.querySelectorAll('#job-table .job-state')]"
        ".some(td => td.textContent === 'succeeded')",
        timeout=120_000)
    assert "web_logbb v1" in page.locator("#job-table").inner_text()
    page.screenshot(path=str(ARTIFACTS / "jobs.png"), full_page=True)
    # Once the gateway serves it, its card says what it learned on top of and what each
    # candidate scored out of fold.
    deadline = time.monotonic() + 60
    while "web_logbb" not in {e["name"] for e in json.load(urllib.request.urlopen(f"{served}/v1/endpoints"))}:
        assert time.monotonic() < deadline, "the trained endpoint was never served"
        time.sleep(0.5)
    page.reload()
    # The Models tab draws from the endpoint list: wait until the page has loaded it.
    page.wait_for_function("() => [...document.querySelectorAll('#endpoint-list input')]"
                           ".some(box => box.value === 'web_logbb')", timeout=60_000)
    page.click("button[data-tab=models]")
    on_base = page.locator(".model-card[data-endpoint=web_logbb] .on-base")
    on_base.wait_for(timeout=120_000)  # every card fetches its manifest: slow on a busy machine
    text = on_base.inner_text()
    assert "solubility v1" in text and "(answers)" in text
    assert all(name in text for name in ("local", "base", "stack")), text
