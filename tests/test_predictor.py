"""The Python API: the server's answers, from Python, with identifiers and RDKit molecules."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from rdkit import Chem

from molserve.errors import InvalidInput, NotFound

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def predictor(trained_registry):
    from molserve import Predictor

    return Predictor(registry=trained_registry.root)


def test_rows_match_the_server(predictor, app_client):
    smiles = ["CCO", "not a smiles", "c1ccccc1O", "CCO"]
    rows = predictor.predict(smiles, endpoints=["solubility", "bbb_penetration", "tpsa"])
    assert [r["smiles"] for r in rows] == smiles
    assert rows[1]["error"] and rows[1].get("solubility") is None
    served = app_client.post("/v1/predict", json={
        "molecules": smiles, "endpoints": ["solubility", "bbb_penetration", "tpsa"]}).json()
    for row, result in zip(rows, served["results"], strict=True):
        assert row["canonical_smiles"] == result["canonical_smiles"]
        for name, answer in result["predictions"].items():
            assert row[name] == pytest.approx(answer["value"])
            interval = answer.get("uncertainty", {}).get("interval")
            if name == "solubility":
                assert [row["solubility_lower"], row["solubility_upper"]] == pytest.approx(interval)
                assert row["solubility_in_domain"] == answer["applicability_domain"]["in_domain"]
            if name == "bbb_penetration":
                assert row["bbb_penetration_label"] == answer["label"]
    # Typed answers ride along: provenance names the model that answered.
    assert rows.answers[0]["solubility"].provenance.tier == "fast"


def test_identifiers_and_rdkit_molecules(predictor):
    mols = {"ethanol": "CCO", "phenol": Chem.MolFromSmiles("Oc1ccccc1")}
    rows = predictor.predict(mols, endpoints=["tpsa"])
    assert [r["id"] for r in rows] == ["ethanol", "phenol"]
    assert rows[1]["canonical_smiles"] == "Oc1ccccc1"
    assert rows[1]["tpsa"] == pytest.approx(20.23, abs=0.01)
    by_ids = predictor.predict(["CCO", "CCN"], endpoints=["tpsa"], ids=[7, 8])
    assert [r["id"] for r in by_ids] == [7, 8]
    single = predictor.predict(Chem.MolFromSmiles("CCN"), endpoints=["tpsa"])
    assert len(single) == 1 and single[0]["tpsa"] == by_ids[1]["tpsa"]


def test_bad_requests_raise_the_projects_errors(predictor):
    with pytest.raises(NotFound, match="unknown endpoint"):
        predictor.predict(["CCO"], endpoints=["nosuch"])
    with pytest.raises(InvalidInput, match="2 ids for 1 molecules"):
        predictor.predict(["CCO"], endpoints=["tpsa"], ids=[1, 2])
    with pytest.raises(InvalidInput, match="not a SMILES string"):
        predictor.predict([3.5], endpoints=["tpsa"])
    with pytest.raises(InvalidInput, match="no registry"):
        from molserve import Predictor

        Predictor(registry="/nonexistent/registry")


def test_explanations_from_python(predictor):
    rows = predictor.predict(["O=[N+]([O-])c1ccc(N)cc1"], endpoints=["solubility"], explain=True)
    explanation = rows[0]["solubility_explanation"]
    assert len(explanation["atoms"]) == 10
    total = explanation["base"] + sum(explanation["atoms"]) + sum(explanation["descriptors"].values())
    assert total == pytest.approx(explanation["raw"], abs=1e-6)
    assert "solubility_explanation" not in predictor.predict(["CCO"], endpoints=["solubility"])[0]


def test_frame_or_a_clear_message(predictor):
    rows = predictor.predict({"a": "CCO", "b": "CCC"}, endpoints=["tpsa"])
    try:
        import pandas  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="pip install pandas"):
            rows.to_frame()
        return
    frame = rows.to_frame()
    assert list(frame.index) == ["a", "b"] and frame.loc["b", "tpsa"] == 0.0


def test_importing_molserve_stays_light():
    code = "import sys, molserve; print('rdkit' in sys.modules, 'molserve.prediction' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_the_readme_example_runs(trained_registry, tmp_path):
    """The README's Python example, as written, against a registry named as it names it."""
    text = (ROOT / "README.md").read_text()
    section = text.split("## Python API", 1)[1]
    example = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    (tmp_path / "registry").symlink_to(trained_registry.root)
    out = subprocess.run([sys.executable, "-c", example], cwd=tmp_path, capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip(), "the example prints its rows"
