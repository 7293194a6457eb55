"""The bundled TDC datasets, TDC's loader and split, and the benchmark protocol."""

from __future__ import annotations

import hashlib
import io
import zipfile
from collections import defaultdict

import httpx
import numpy as np
import pytest

from molserve.data import tdc
from molserve.data.splits import murcko_scaffold, tdc_scaffold_split

# Validation rows of TDC's `get_train_valid_split(seed, name)` for two datasets, as computed by
# PyTDC 1.1.14's own `create_scaffold_split` (sha256 of the sorted row positions, first 16 hex).
# molserve's reimplementation matched PyTDC on all 22 datasets x 5 seeds (BENCHMARKS.md).
PYTDC_VALID = {
    "caco2_wang": ["63d7fe295e75db1f", "f2e7caae7e0c9112", "8c7946835a77d338", "d40412f9e6b24b75",
                   "da2cfb7c89a73d06"],
    "dili": ["c62521431c0011c6", "d13b366a4d1bd0d0", "86e191914cd0fdb9", "cdd214101be1d2e4",
             "ae02ea3ae0de5697"],
}


def test_the_catalog_has_forty_tdc_endpoints_twenty_two_in_the_benchmark_group():
    assert len(tdc.CATALOG) == 40
    assert sum(e.benchmark for e in tdc.CATALOG.values()) == 22
    for entry in tdc.CATALOG.values():
        assert entry.units and entry.description and entry.citation and entry.tdc_name
        assert entry.bundled_path in tdc.BUNDLED_SHA256
        if entry.benchmark:
            assert entry.metric in ("mae", "spearman", "roc-auc", "pr-auc")
        if entry.task == "classification":
            assert entry.label_names and len(entry.label_names) == 2
    assert {e.endpoint for e in tdc.CATALOG.values() if e.log_target} == {
        "vdss", "half_life", "clearance_hepatocyte", "clearance_microsome"}


def test_bundled_files_match_their_checksums_and_load_with_every_row():
    for relative, digest in tdc.BUNDLED_SHA256.items():
        assert hashlib.sha256((tdc.BUNDLED_DIR / relative).read_bytes()).hexdigest() == digest
    for entry in tdc.CATALOG.values():
        train, test = tdc.load(entry.endpoint)
        rows = len(train) + (len(test) if test is not None else 0)
        assert rows == entry.rows, entry.endpoint
        assert train.describe()["tdc_name"] == entry.tdc_name
        assert train.describe()["citation"] == entry.citation
        assert (test is not None) == entry.benchmark


def _mock_dataverse(files: dict[int, bytes], calls: list[str]) -> httpx.Client:
    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(str(request.url))
        file_id = int(request.url.path.rsplit("/", 1)[1])
        if file_id not in files:
            return httpx.Response(404, text="not found")
        return httpx.Response(200, content=files[file_id])
    return httpx.Client(transport=httpx.MockTransport(handler))


def test_fetch_downloads_verifies_and_caches_the_benchmark_archive(tmp_path):
    archive = (tdc.BUNDLED_DIR / "admet_group.zip").read_bytes()
    calls: list[str] = []
    client = _mock_dataverse({4426004: archive}, calls)
    path = tdc.fetch(tdc.ADMET_GROUP, tmp_path, client=client)
    assert path.read_bytes() == archive
    assert calls == ["https://dataverse.harvard.edu/api/access/datafile/4426004"]
    tdc.fetch(tdc.ADMET_GROUP, tmp_path, client=client)  # cached: no second request
    assert len(calls) == 1
    entry = tdc.CATALOG["caco2_permeability"]
    assert tdc.read_benchmark(entry, source="dataverse", cache_dir=tmp_path) == tdc.read_benchmark(entry)


def test_fetch_refuses_a_download_that_does_not_match_and_caches_nothing(tmp_path):
    archive = bytearray((tdc.BUNDLED_DIR / "admet_group.zip").read_bytes())
    archive[100] ^= 0xFF
    client = _mock_dataverse({4426004: bytes(archive)}, [])
    with pytest.raises(tdc.ChecksumMismatch, match="sha256"):
        tdc.fetch(tdc.ADMET_GROUP, tmp_path, client=client)
    assert list(tmp_path.iterdir()) == []


def test_tdc_tab_files_are_read_as_tdc_reads_them(tmp_path, monkeypatch):
    # TDC's tox21 file: one column per assay, missing labels empty, exact duplicate rows dropped.
    text = ("ID\tX\tNR-AR\tSR-p53\n"
            "TOX1\tCCO\t0.0\t1.0\n"
            "TOX1\tCCO\t0.0\t1.0\n"
            "TOX2\tc1ccccc1O\t\t0.0\n"
            "TOX3\tCCN\t1.0\t\n")
    data = text.encode()
    source = tdc.SourceFile(4259612, "tox21.tab", sha256=hashlib.sha256(data).hexdigest())
    monkeypatch.setitem(tdc.SINGLE_FILES, "tox21", source)
    tdc.fetch(source, tmp_path, client=_mock_dataverse({4259612: data}, []))
    p53 = tdc.read_single(tdc.CATALOG["tox21_sr_p53"], source="dataverse", cache_dir=tmp_path)
    assert [(r.drug_id, r.smiles, r.y) for r in p53] == [("TOX1", "CCO", 1.0), ("TOX2", "c1ccccc1O", 0.0)]
    ar = tdc.read_single(tdc.CATALOG["tox21_nr_ar"], source="dataverse", cache_dir=tmp_path)
    assert [r.drug_id for r in ar] == ["TOX1", "TOX3"]


def _valid_fingerprint(rows: list[int]) -> str:
    return hashlib.sha256(",".join(map(str, rows)).encode()).hexdigest()[:16]


@pytest.mark.parametrize("key", sorted(PYTDC_VALID))
def test_tdc_scaffold_split_reproduces_pytdc_exactly(key):
    entry = next(e for e in tdc.CATALOG.values() if e.key == key)
    train_val, _ = tdc.read_benchmark(entry)
    smiles = [r.smiles for r in train_val]
    for seed, expected in zip(range(1, 6), PYTDC_VALID[key], strict=True):
        split = tdc_scaffold_split(smiles, seed)
        assert _valid_fingerprint(split["valid"]) == expected
        assert sorted(split["train"] + split["valid"]) == list(range(len(smiles)))


def test_tdc_scaffold_split_never_splits_a_scaffold_and_depends_on_the_seed():
    from rdkit import Chem

    train_val, _ = tdc.read_benchmark(tdc.CATALOG["human_intestinal_absorption"])
    smiles = [r.smiles for r in train_val]
    scaffold = [murcko_scaffold(Chem.MolFromSmiles(s)) for s in smiles]
    valid_sets = []
    for seed in (1, 2, 3):
        split = tdc_scaffold_split(smiles, seed)
        sides = defaultdict(set)
        for side in ("train", "valid"):
            for i in split[side]:
                sides[scaffold[i]].add(side)
        assert all(len(s) == 1 for s in sides.values())
        assert len(split["train"]) <= int(0.875 * len(smiles))
        assert split == tdc_scaffold_split(smiles, seed)
        valid_sets.append(tuple(split["valid"]))
    assert len(set(valid_sets)) == 3


def test_quick_benchmark_follows_the_protocol_and_its_seed_one_model_is_the_served_one(tdc_registry):
    """One seed, the quick profile: no test molecule is trained on, every test row is scored with
    TDC's metric, and the seed-1 model is exactly the model the bootstrap serves."""
    from benchmarks.bench_tdc import run_benchmark_dataset

    entry = tdc.CATALOG["dili"]
    row = run_benchmark_dataset(entry, [1], profile="quick")
    run = row["runs"][0]
    assert row["metric"] == "roc-auc" and 0.6 < row["mean"] <= 1.0
    assert row["test_rows"] == 96 and row["train_val_rows"] == 379
    assert run["test_rows_whose_parent_is_in_training"] == 0
    assert row["features_us"] > 0 and row["trees_us"] > 0
    served = tdc_registry.latest("dili", kind="gbm").manifest["metrics"]["tdc"]
    assert round(served["test"], 3) == row["scores"][0]


def test_served_tdc_model_scores_match_a_rescoring_of_tdc_test_file(tdc_registry):
    """The manifest's TDC figure is the served model's own score on TDC's test file."""
    from molserve.models import metrics as M
    from molserve.prediction.router import Router

    artifact = tdc_registry.latest("dili", kind="gbm")
    claimed = artifact.manifest["metrics"]["tdc"]
    assert claimed["metric"] == "roc-auc"
    predictor = Router(tdc_registry)
    predictor.load(only=["dili"])
    _, test = tdc.load("dili")
    answer = predictor.predict_local(test.smiles, ["dili"])
    probability = np.array([r["predictions"]["dili"].value for r in answer["results"]])
    # Answers are rounded to 4 decimals; the score may move in its last digits.
    assert abs(M.roc_auc(np.array(test.labels), probability) - claimed["test"]) < 0.01
    first = answer["results"][0]["predictions"]["dili"]
    assert first.provenance.details["dataset"] == "TDC DILI"
    assert first.label in ("no DILI", "DILI")


def test_cli_trains_classification_on_tdc_labels_written_as_floats(tmp_path):
    """TDC's hERG file writes its labels 0.0/1.0; `--positive-label 1` reads them as classes."""
    from molserve.cli import main
    from molserve.registry import Registry

    with zipfile.ZipFile(tdc.BUNDLED_DIR / "admet_group.zip") as archive:
        text = archive.read("admet_group/herg/train_val.csv").decode()
    assert ",1.0\n" in text and ",0.0\n" in text
    path = tmp_path / "herg.csv"
    path.write_text(text)
    registry = tmp_path / "registry"
    code = main(["--registry", str(registry), "train", str(path), "--endpoint", "herg", "--smiles-col",
                 "Drug", "--label-col", "Y", "--task", "classification", "--positive-label", "1",
                 "--profile", "quick"])
    assert code == 0
    manifest = Registry(registry).latest("herg").manifest
    assert 0.2 < manifest["metrics"]["test"]["positive_fraction"] < 0.9
    assert io.StringIO(text).readline().strip() == "Drug_ID,Drug,Y"
