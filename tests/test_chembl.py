"""ChEMBL datasets against recorded-shape responses: paging, retries, curation, storage, training."""

import json
import math
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from molserve.chem.molecules import canonical_smiles
from molserve.data.chembl import KNOWN_TARGETS, ChemblClient, ChemblError, curate_activities, resolve_target
from molserve.data.store import DatasetStore, fetch_chembl_dataset

FIXTURES = Path(__file__).parent / "fixtures" / "chembl"


def recorded(fail_first: int = 0, status: int = 503):
    """A transport answering from the fixture files; the first `fail_first` calls fail."""
    calls = {"n": 0, "paths": []}

    def handler(request: httpx.Request) -> httpx.Response:
        calls["n"] += 1
        calls["paths"].append(str(request.url))
        if calls["n"] <= fail_first:
            return httpx.Response(status, headers={"retry-after": "0"})
        path = request.url.path
        if path.endswith("/target/CHEMBL203.json"):
            return httpx.Response(200, content=(FIXTURES / "target_CHEMBL203.json").read_bytes())
        if path.endswith("/activity.json"):
            params = request.url.params
            assert params["target_chembl_id"] == "CHEMBL203" and params["assay_type"] == "B"
            page = 1 if params.get("offset", "0") == "0" else 2
            name = f"activity_CHEMBL203_IC50_page{page}.json"
            return httpx.Response(200, content=(FIXTURES / name).read_bytes())
        return httpx.Response(404)

    return httpx.MockTransport(handler), calls


def client(transport) -> ChemblClient:
    return ChemblClient(transport=transport, rate_per_s=0, sleep=lambda s: None)


def test_target_names_resolve_and_unknown_ones_list_the_known():
    assert resolve_target("EGFR") == ("CHEMBL203", "egfr")
    assert resolve_target("chembl279") == ("CHEMBL279", "vegfr2")
    assert resolve_target("CHEMBL1234")[0] == "CHEMBL1234"
    with pytest.raises(ValueError) as error:
        resolve_target("KRAS")
    assert all(name in str(error.value) for name in KNOWN_TARGETS)


def test_activities_are_paged_through_page_meta_next():
    transport, calls = recorded()
    records = list(client(transport).activities("CHEMBL203"))
    assert len(records) == 68 and calls["n"] == 2
    assert "offset=40" in calls["paths"][1]


def test_transient_failures_are_retried_then_succeed():
    transport, calls = recorded(fail_first=2)
    assert client(transport).target("CHEMBL203")["pref_name"].startswith("Epidermal")
    assert calls["n"] == 3


def test_a_fetch_that_keeps_failing_says_so_and_writes_nothing(tmp_path):
    transport, _ = recorded(fail_first=100)
    store = DatasetStore(tmp_path)
    with pytest.raises(ChemblError, match="could not be reached.*nothing was written"):
        fetch_chembl_dataset(store, "EGFR", client=ChemblClient(transport=transport, rate_per_s=0,
                                                                 retries=2, sleep=lambda s: None))
    assert store.list() == []
    assert not any(p.name.startswith("chembl") for p in tmp_path.iterdir())


def test_curation_filters_converts_and_merges():
    records = []
    for page in (1, 2):
        text = (FIXTURES / f"activity_CHEMBL203_IC50_page{page}.json").read_text()
        records += json.loads(text)["activities"]
    curated = curate_activities(records)
    report = curated.report
    assert report["records_in"] == 68
    dropped = report["dropped"]
    assert dropped["relation is not '=' (censored value)"] == 1
    assert dropped["units 'ug.mL-1', not nM"] == 1
    assert dropped["data validity comment: Outside typical range"] == 1
    assert dropped["flagged as a potential duplicate of another publication"] == 1
    assert sum(v for k, v in dropped.items() if k.startswith("unparsable")) == 1
    by_smiles = {r["canonical_smiles"]: r for r in curated.rows}
    replicate = by_smiles[canonical_smiles(records[5]["canonical_smiles"])]
    values = [float(records[5]["pchembl_value"]), 7.0, 9.5]
    assert replicate["n_measurements"] == 3
    assert replicate["label"] == sorted(values)[1]  # median
    assert replicate["noisy"] and replicate["spread"] == pytest.approx(max(values) - min(values))
    # A salt form is standardized onto its parent; a missing pChEMBL is computed from nM.
    salt_parent = by_smiles[canonical_smiles(records[7]["canonical_smiles"])]
    assert salt_parent["n_measurements"] == 2
    assert sorted([float(records[7]["pchembl_value"]), 9 - math.log10(50)])[0] <= salt_parent["label"]
    assert report["measurements_kept"] == 68 - 5
    # The series repeats some parents across cores and salt forms: 45 distinct structures.
    assert report["rows_out"] == len(curated.rows) == 45
    assert report["duplicates_merged"] == 63 - 45


def test_fetch_stores_a_versioned_dataset_with_splits(tmp_path):
    transport, _ = recorded()
    store = DatasetStore(tmp_path)
    artifact = fetch_chembl_dataset(store, "EGFR", client=client(transport))
    manifest = artifact.manifest
    assert artifact.endpoint == "chembl_egfr_pic50" and manifest["rows"] == 45
    assert manifest["licence"].startswith("CC BY-SA")
    assert manifest["target"]["chembl_id"] == "CHEMBL203"
    assert manifest["splits"] == ["scaffold", "random", "time"]
    assert manifest["endpoint_suggestion"] == "pic50_egfr"
    dataset, sides = store.load("chembl_egfr_pic50", split="time")
    years = {}
    for line in (artifact.path / "data.csv").read_text().splitlines()[1:]:
        fields = line.split(",")
        years[fields[0]] = int(fields[5])
    train_years = [years[s] for s, side in zip(dataset.smiles, sides, strict=True) if side == "train"]
    test_years = [years[s] for s, side in zip(dataset.smiles, sides, strict=True) if side == "test"]
    assert max(train_years) <= min(test_years)  # the test split is the newest


def test_cli_fetch_list_show_and_train_on_the_dataset(tmp_path, monkeypatch):
    """`data list/show` and `train --dataset` on a stored dataset (fetched above in-process)."""
    transport, _ = recorded()
    fetch_chembl_dataset(DatasetStore(tmp_path / "datasets"), "EGFR", client=client(transport))

    def run(*args):
        return subprocess.run([sys.executable, "-m", "molserve", "--datasets", str(tmp_path / "datasets"),
                               "--registry", str(tmp_path / "registry"), *args],
                              capture_output=True, text=True, timeout=300)

    listing = run("data", "list")
    assert "chembl_egfr_pic50" in listing.stdout and "CC BY-SA" in listing.stdout
    shown = json.loads(run("data", "show", "chembl_egfr_pic50").stdout)
    assert shown["rows"] == 45
    trained = run("train", "--dataset", "chembl_egfr_pic50", "--profile", "quick")
    assert trained.returncode == 0, trained.stderr[-2000:]
    assert "registered pic50_egfr v1" in trained.stdout
    unknown = run("data", "chembl", "KRAS")
    assert unknown.returncode == 2 and "CHEMBL203" in unknown.stderr


def test_import_a_user_file_with_ic50_in_nm(tmp_path):
    data = tmp_path / "assay.csv"
    data.write_text("smiles,ic50_nM\nCCO,1000\nOCC,100\nc1ccccc1O,10\nCC(=O)[O-].[Na+],1\n")
    out = subprocess.run([sys.executable, "-m", "molserve", "--datasets", str(tmp_path / "d"), "data",
                          "import", str(data), "--name", "my_assay", "--label-col", "ic50_nM",
                          "--ic50-nm"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout)
    assert summary["rows"] == 3 and summary["curation"]["duplicates_merged"] == 1
    dataset, _ = DatasetStore(tmp_path / "d").load("my_assay")
    labels = dict(zip(dataset.smiles, dataset.labels, strict=True))
    assert labels["CCO"] == pytest.approx(6.5)  # median of pIC50 6 and 7
    assert labels["CC(=O)O"] == pytest.approx(9.0)  # the salt is neutralized to its parent
