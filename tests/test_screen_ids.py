"""Identifiers pass through: `--id-col` keeps the input's ID in the output (CSV, shards, jobs),
and SDF in gives SDF out with the predictions as properties."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from rdkit import Chem

from molserve.operations.sharded import MANIFEST


def run(registry: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "molserve", "--registry", str(registry), "predict", *args],
                          capture_output=True, text=True, timeout=300)


def test_a_csv_id_column_is_kept_in_order_whatever_the_processes(trained_registry, tmp_path):
    source = tmp_path / "in.csv"
    source.write_text("compound,SMILES\nZ-001,CCO\nZ-002,not_a_smiles(\nZ-003,c1ccccc1O\nZ-004,OCC\n")
    for jobs in ("1", "2"):
        out = tmp_path / f"out{jobs}.csv"
        done = run(trained_registry.root, str(source), "-o", str(out), "--endpoints", "tpsa",
                   "--id-col", "compound", "--jobs", jobs, "--chunk-size", "1")
        assert done.returncode == 0, done.stderr
        rows = list(csv.DictReader(open(out)))
        assert list(rows[0])[:3] == ["row", "compound", "input"]
        assert [(r["row"], r["compound"]) for r in rows] == [("0", "Z-001"), ("1", "Z-002"), ("2", "Z-003"),
                                                             ("3", "Z-004")]
        assert rows[1]["error"] and rows[2]["tpsa"] == "20.23"


def test_a_smiles_files_second_field_is_its_identifier_in_the_shards(trained_registry, tmp_path):
    import pyarrow.parquet as pq

    source = tmp_path / "in.smi"
    source.write_text("CCO ethanol\nc1ccccc1O phenol\nCC(=O)O\n")
    done = run(trained_registry.root, str(source), "-o", f"{tmp_path}/results/", "--endpoints", "tpsa",
               "--id-col", "name", "--shard-size", "2")
    assert done.returncode == 0, done.stderr
    manifest = json.loads((tmp_path / "results" / MANIFEST).read_text())
    names = [n for s in manifest["shards"] for n in pq.read_table(tmp_path / "results" / s["file"])
             .column("name").to_pylist()]
    assert names == ["ethanol", "phenol", None]  # a record without a name keeps an empty one


def test_a_missing_id_column_is_one_error_line(trained_registry, tmp_path):
    source = tmp_path / "in.csv"
    source.write_text("smiles,id\nCCO,1\n")
    for output in ("out.csv", "results/"):
        done = run(trained_registry.root, str(source), "-o", f"{tmp_path}/{output}", "--id-col", "cid")
        assert done.returncode == 2 and "Traceback" not in done.stderr
        assert done.stderr.strip().splitlines()[-1] == (
            "molserve: error: no column 'cid' in in.csv (columns: smiles, id); name the column that "
            "holds identifiers (--id-col, id_col)")


def sdf_file(path: Path) -> Path:
    writer = Chem.SDWriter(str(path))
    for number, smiles in enumerate(["CCO", "c1ccccc1O", "CC(=O)O"]):
        mol = Chem.MolFromSmiles(smiles)
        mol.SetProp("_Name", f"title{number}")
        mol.SetProp("CAT_ID", f"Z{number:04d}")
        writer.write(mol)
    writer.close()
    broken = "broken\n  junk\n\n  1  0  0  0  0  0  0  0  0  0999 V2000\nM  END\n> <CAT_ID>\nZ9999\n\n$$$$\n"
    with open(path, "a") as handle:
        handle.write(broken)
    return path


@pytest.mark.parametrize("engine_args", [[], ["--where", "tpsa > 30"]])
def test_sdf_in_gives_sdf_out_with_the_predictions_as_properties(trained_registry, tmp_path, engine_args):
    source = sdf_file(tmp_path / "in.sdf")
    out = tmp_path / "out.sdf"
    done = run(trained_registry.root, str(source), "-o", str(out), "--endpoints", "solubility,tpsa",
               "--id-col", "CAT_ID", *engine_args)
    assert done.returncode == 0, done.stderr
    records = out.read_text().split("$$$$\n")[:-1]
    if engine_args:  # only the hit (acetic acid, TPSA 37.3) is written back
        assert len(records) == 1
        supplier = Chem.SDMolSupplier()
        supplier.SetData(records[0] + "$$$$\n")
        hit = next(supplier)
        assert (hit.GetProp("_Name"), hit.GetProp("CAT_ID"), hit.GetProp("tpsa")) == ("title2", "Z0002",
                                                                                     "37.3")
        return
    assert len(records) == 4  # the unreadable record comes back as it was, with its error
    read = list(Chem.SDMolSupplier(str(out)))
    assert [m.GetProp("CAT_ID") for m in read[:3]] == ["Z0000", "Z0001", "Z0002"]
    assert [m.GetProp("_Name") for m in read[:3]] == ["title0", "title1", "title2"]
    assert [m.GetProp("row") for m in read[:3]] == ["0", "1", "2"]
    assert read[0].GetProp("tpsa") == "20.23" and float(read[0].GetProp("solubility")) != 0
    assert read[0].GetProp("solubility_model").startswith("solubility/gbm@v")
    assert read[3] is None and "> <CAT_ID>\nZ9999" in records[3]
    assert ">  <error>\nRDKit could not parse this SMILES\n" in records[3]
    assert records[0].count("<CAT_ID>") == 1  # the ID is not written twice


def test_the_sdf_title_is_an_identifier_too(trained_registry, tmp_path):
    source = sdf_file(tmp_path / "in.sdf")
    out = tmp_path / "out.csv"
    done = run(trained_registry.root, str(source), "-o", str(out), "--endpoints", "tpsa", "--id-col", "_Name")
    assert done.returncode == 0, done.stderr
    assert [r["_Name"] for r in csv.DictReader(open(out))] == ["title0", "title1", "title2", "broken"]


def test_a_screen_job_over_http_keeps_ids_and_filters_on_the_worker(app_client):
    key = {"authorization": "Bearer test-key"}
    body = b"compound,smiles\nA1,CCO\nA2,CC(=O)O\nA3,not_a_smiles(\nA4,c1ccccc1C(=O)O\n"
    upload = app_client.post("/v1/uploads", files={"file": ("lib.csv", body)}, headers=key)
    assert upload.status_code == 201, upload.text
    request = {"kind": "screen", "upload_id": upload.json()["upload_id"], "endpoints": ["tpsa"],
               "id_col": "compound", "where": "tpsa > 30", "engine": "local", "output_format": "parquet",
               "shard_size": 100}
    bad = app_client.post("/v1/jobs", json={**request, "where": "tpsa > "}, headers=key)
    assert bad.status_code == 422 and bad.json()["error"] == "invalid_where"
    assert "--where: cannot read" in bad.json()["message"]
    unknown = app_client.post("/v1/jobs", json={**request, "where": "logp > 3"}, headers=key)
    assert unknown.status_code == 422 and "no column 'logp'" in unknown.json()["message"]
    submitted = app_client.post("/v1/jobs", json=request, headers=key)
    assert submitted.status_code == 202, submitted.text
    job_id = submitted.json()["id"]
    deadline = time.monotonic() + 180
    while (job := app_client.get(f"/v1/jobs/{job_id}", headers=key).json())["state"] not in (
            "succeeded", "failed", "cancelled"):
        assert time.monotonic() < deadline, job
        time.sleep(0.3)
    assert job["state"] == "succeeded", job
    assert job["metrics"]["shards_done"] == job["metrics"]["shards_total"] == 1
    assert job["metrics"]["molecules_done"] == 4 and job["metrics"]["hits"] == 2
    assert job["result"]["engine"] == "local" and job["result"]["rows"] == 2
    result = app_client.get(job["result_url"], headers=key)
    rows = list(csv.DictReader(io.StringIO(result.text)))
    assert [(r["compound"], r["tpsa"]) for r in rows] == [("A2", "37.3"), ("A4", "37.3")]
