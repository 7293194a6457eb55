"""The command line, run as a user runs it (subprocesses of the installed entry point)."""

import csv
import subprocess
import sys

from molserve.data.bundled import load_bundled


def run(*args, check=True):
    return subprocess.run([sys.executable, "-m", "molserve", *args], capture_output=True,
                          text=True, check=check, timeout=300)


def test_train_on_a_user_csv_registers_a_model(tmp_path):
    dataset = load_bundled("logbb")
    data = tmp_path / "my_assay.csv"
    with open(data, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["compound_smiles", "logbb_measured"])
        for smiles, label in zip(dataset.smiles, dataset.labels, strict=True):
            writer.writerow([smiles, label])
        writer.writerow(["C1CC", "0.5"])  # an unparsable row is reported, not fatal
    registry = tmp_path / "registry"
    out = run("--registry", str(registry), "train", str(data), "--endpoint", "my_logbb",
              "--smiles-col", "compound_smiles", "--label-col", "logbb_measured",
              "--task", "regression", "--units", "log units", "--profile", "quick")
    assert "registered my_logbb v1" in out.stdout
    assert '"unparsable": 1' in out.stdout
    assert "RMSE" in out.stdout and "baseline RMSE" in out.stdout
    listing = run("--registry", str(registry), "models", "list")
    assert "my_logbb" in listing.stdout and "RMSE" in listing.stdout


def test_train_reports_a_missing_column_without_a_traceback(tmp_path):
    data = tmp_path / "d.csv"
    data.write_text("smiles,y\nCCO,1\n")
    out = run("--registry", str(tmp_path / "r"), "train", str(data), "--endpoint", "x",
              "--label-col", "nope", check=False)
    assert out.returncode == 2
    assert "nope" in out.stderr and "Traceback" not in out.stderr


def test_predict_a_file_offline(tmp_path, trained_registry):
    source = tmp_path / "in.csv"
    source.write_text("id,SMILES\n1,CCO\n2,not_a_smiles(\n3,c1ccccc1O\n4,OCC\n")
    target = tmp_path / "out.csv"
    for jobs in ("1", "2"):
        run("--registry", str(trained_registry.root), "predict", str(source), "-o", str(target),
            "--endpoints", "solubility,bbb_penetration,tpsa", "--jobs", jobs, "--chunk-size", "2")
        rows = list(csv.DictReader(open(target)))
        assert [r["row"] for r in rows] == ["0", "1", "2", "3"]
        assert rows[0]["canonical_smiles"] == "CCO" and rows[1]["error"]
        assert rows[0]["solubility"] == rows[3]["solubility"] != ""
        assert rows[2]["bbb_penetration_label"] in {"BBB+", "BBB-"}
        assert rows[2]["tpsa"] == "20.23"
        assert float(rows[0]["solubility_lower"]) < float(rows[0]["solubility"])
        assert rows[0]["solubility_model"].startswith("solubility/gbm@v")
