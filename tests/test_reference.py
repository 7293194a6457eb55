"""Reference percentiles: sets added from files through the CLI (invalid records counted and
skipped), percentiles checked by hand, values recomputed when the served model's version
changes, stored with checksums, and clear errors for unknown names."""

import json
import shutil
import time
from dataclasses import replace

import numpy as np
import pytest
from typer.testing import CliRunner

from molserve.answers import Provenance
from molserve.cli import app
from molserve.errors import InvalidInput, NotFound
from molserve.prediction.reference import ReferenceSets, percentile, prepare
from molserve.prediction.router import Router
from molserve.registry import Registry
from molserve.registry.reference_store import ReferenceStore

# Molecular weights (RDKit, average): methane 16.043, ethanol 46.069, benzene 78.114,
# aspirin 180.159.
TINY = ["C", "CCO", "c1ccccc1", "CC(=O)Oc1ccccc1C(=O)O"]


@pytest.fixture
def small_registry(trained_registry, tmp_path):
    """A registry holding one fast model (logbb v1) copied from the session's."""
    root = tmp_path / "registry"
    shutil.copytree(trained_registry.root / "logbb" / "v1", root / "logbb" / "v1")
    return Registry(root)


def loaded_router(registry):
    router = Router(registry)
    router.load()
    return router


def invoke(*args):
    return CliRunner().invoke(app, list(args))


def mid_rank(reference, value):
    """The definition, written out independently of the implementation."""
    below = sum(1 for r in reference if r < value)
    equal = sum(1 for r in reference if r == value)
    return 100.0 * (below + equal / 2) / len(reference)


def test_percentiles_are_mid_ranks_checked_by_hand():
    values = np.array([16.043, 46.069, 78.114, 180.159])
    assert percentile(values, 46.069) == 37.5  # one below, one equal: (1 + 0.5) / 4
    assert percentile(values, 44.097) == 25.0
    assert percentile(values, 10.0) == 0.0 and percentile(values, 256.4) == 100.0
    assert percentile(np.array([1.0, 1.0, 1.0]), 1.0) == 50.0


def test_a_tiny_set_gives_the_hand_checked_percentiles_of_a_computed_endpoint(small_registry):
    router = loaded_router(small_registry)
    references = ReferenceSets(small_registry, router)
    info = references.add("tiny", TINY, description="four small molecules", compute=False)
    assert info["molecules"] == 4
    response = router.predict_local(["CCO", "CCC", "CCCCCCCCCCCCCCCC(=O)O", "C", "C1CC"],
                                    ["molecular_weight", "logbb", "structural_alerts"])
    references.annotate_response(response, "tiny")
    shown = [r["predictions"].get("molecular_weight") for r in response["results"]]
    assert [a.reference_percentile for a in shown[:4]] == [37.5, 25.0, 100.0, 12.5]
    assert shown[4] is None  # the invalid input has no answers to annotate
    assert response["reference"]["name"] == "tiny" and response["reference"]["molecules"] == 4
    assert response["reference"]["omitted"] == {"structural_alerts": "its values are not numbers"}
    assert all(r["predictions"]["structural_alerts"].reference_percentile is None
               for r in response["results"][:4])
    # The fast model's percentile against the same model's values for the set, by hand.
    ref = [a["predictions"]["logbb"].value for a in router.predict_local(TINY, ["logbb"])["results"]]
    for result in response["results"][:4]:
        answer = result["predictions"]["logbb"]
        assert answer.reference_percentile == pytest.approx(mid_rank(ref, answer.value), abs=0.01)
    assert response["results"][0]["predictions"]["logbb"].to_json()["reference_percentile"] \
        == response["results"][0]["predictions"]["logbb"].reference_percentile


def test_a_set_is_added_listed_and_removed_through_the_cli(small_registry, tmp_path):
    source = tmp_path / "approved.smi"
    source.write_text("smiles name\nCC(=O)Oc1ccccc1C(=O)O aspirin\nC1CC broken\nCCO ethanol\n"
                      "OCC ethanol_again\n*CC wildcard\nnot_a_smiles( junk\nc1ccccc1O phenol\n")
    root = str(small_registry.root)
    added = invoke("--registry", root, "reference", "add", str(source), "--name", "approved",
                   "--description", "a test set")
    assert added.exit_code == 0, added.output
    assert ("added reference set approved: 3 molecules from 7 records, 3 invalid skipped, "
            "1 duplicates merged") in added.stdout
    assert "record 2 ('C1CC')" in added.stdout and "wildcard" in added.stdout
    listed = json.loads(invoke("--registry", root, "reference", "list", "--json").stdout)
    by_name = {entry["name"]: entry for entry in listed}
    assert set(by_name) == {"approved", "clintox_drugs"} and by_name["clintox_drugs"]["default"]
    approved = by_name["approved"]
    assert (approved["molecules"], approved["invalid"], approved["duplicates"]) == (3, 3, 1)
    values = {v["endpoint"]: v for v in approved["values"]}
    assert values["logbb"]["tier"] == "fast" and values["logbb"]["version"] == "1"
    assert values["logbb"]["current"] and values["molecular_weight"]["tier"] == "computed"
    assert "structural_alerts" not in values  # not a number: nothing to rank
    # Stored beside the models, in safe formats, each file with its checksum.
    folder = small_registry.root / ".references" / "approved"
    assert (folder / "molecules.csv").read_text().splitlines() == [
        "canonical_smiles", "CC(=O)Oc1ccccc1C(=O)O", "CCO", "Oc1ccccc1"]
    assert sorted(p.suffix for p in (folder / "values").iterdir()) == sorted(
        [".json", ".npy"] * len(values))
    table = invoke("--registry", root, "reference", "list")
    assert "approved" in table.stdout and "clintox_drugs" in table.stdout
    removed = invoke("--registry", root, "reference", "remove", "approved")
    assert removed.exit_code == 0 and not folder.exists()
    again = invoke("--registry", root, "reference", "remove", "approved")
    assert again.exit_code == 2
    assert again.stderr.strip() == "molserve: error: no reference set 'approved'"


def test_cli_refuses_a_file_without_molecules_and_a_bad_name(small_registry, tmp_path):
    empty = tmp_path / "empty.smi"
    empty.write_text("C1CC\nnot_smiles(\n")
    root = str(small_registry.root)
    result = invoke("--registry", root, "reference", "add", str(empty), "--name", "empty", "--no-compute")
    assert result.exit_code == 2 and "no valid molecules" in result.stderr
    assert "Traceback" not in result.output
    result = invoke("--registry", root, "reference", "add", str(empty), "--name", "Bad Name")
    assert result.exit_code == 2 and "lowercase" in result.stderr
    result = invoke("--registry", root, "reference", "add", str(tmp_path / "nope.smi"), "--name", "x")
    assert result.exit_code == 2 and "no file" in result.stderr
    result = invoke("--registry", root, "reference", "remove", "clintox_drugs")
    assert result.exit_code == 2 and "bundled" in result.stderr


def test_an_unknown_reference_name_is_a_clear_error_naming_the_known_ones(small_registry):
    router = Router(small_registry)
    references = ReferenceSets(small_registry, router)
    references.add("tiny", TINY, compute=False)
    response = router.predict_local(["CCO"], ["molecular_weight"])
    with pytest.raises(NotFound) as raised:
        references.annotate_response(response, "approvd")
    assert "'approvd'" in raised.value.message and "tiny" in raised.value.message
    assert raised.value.details["known"] == ["clintox_drugs", "tiny"]
    assert response["results"][0]["predictions"]["molecular_weight"].reference_percentile is None
    with pytest.raises(InvalidInput, match="lowercase"):
        references.annotate_response(response, "../etc")


def test_values_are_recomputed_when_the_served_model_version_changes(small_registry, trained_registry):
    router = loaded_router(small_registry)
    references = ReferenceSets(small_registry, router)
    references.add("tiny", TINY, compute=True)
    store = ReferenceStore(small_registry.root)
    assert store.read_values("tiny", "logbb", "fast").meta["version"] == "1"
    # A new logbb version that predicts differently: the solubility model's files (same
    # fingerprints, other trees) registered as logbb v2.
    donor = trained_registry.latest("solubility", kind="gbm")
    manifest = {k: v for k, v in donor.manifest.items() if k not in ("endpoint", "version", "files")}
    small_registry.write("logbb", {name: donor.path / name for name in donor.manifest["files"]}, manifest)
    router.load()
    assert router.fast.models["logbb"].artifact.version == 2
    queries = ["CCO", "CC(=O)Oc1ccccc1C(=O)O", "CCCCCCCCN"]
    response = router.predict_local(queries, ["logbb"])
    references.annotate_response(response, "tiny")
    stored = store.read_values("tiny", "logbb", "fast")
    assert stored.meta["version"] == "2"
    new_reference = [r["predictions"]["logbb"].value
                     for r in router.predict_local(TINY, ["logbb"])["results"]]
    assert np.allclose(stored.values, new_reference)
    for result in response["results"]:
        answer = result["predictions"]["logbb"]
        assert answer.provenance.version == 2
        assert answer.reference_percentile == pytest.approx(mid_rank(new_reference, answer.value), abs=0.01)


def test_answers_from_another_model_or_tier_are_left_without_a_percentile_and_why(small_registry):
    router = loaded_router(small_registry)
    references = ReferenceSets(small_registry, router)
    references.add("tiny", TINY, compute=True)
    for provenance, reason in (
            (Provenance("logbb/transformer", 3, "transformer"),
             "the transformer tier answered, and reference values are computed by this process's "
             "fast and computed tiers only"),
            (None, "v7 answered but v1 is served now")):
        response = router.predict_local(["CCO", "CCN"], ["logbb", "tpsa"])
        for result in response["results"]:
            answer = result["predictions"]["logbb"]
            changed = provenance or replace(answer.provenance, version=7)
            result["predictions"]["logbb"] = replace(answer, provenance=changed)
        references.annotate_response(response, "tiny")
        assert all(r["predictions"]["logbb"].reference_percentile is None for r in response["results"])
        assert all(r["predictions"]["tpsa"].reference_percentile is not None for r in response["results"])
        assert reason in response["reference"]["omitted"]["logbb"]
    errors = router.predict_local(["CCO"], ["logbb"])
    failed = replace(errors["results"][0]["predictions"]["logbb"], value=None, error="worker failed")
    errors["results"][0]["predictions"]["logbb"] = failed
    references.annotate_response(errors, "tiny")
    assert errors["results"][0]["predictions"]["logbb"] is failed  # error answers untouched


def test_a_tampered_values_file_is_not_trusted(small_registry):
    router = loaded_router(small_registry)
    references = ReferenceSets(small_registry, router)
    references.add("tiny", TINY, compute=True)
    path = small_registry.root / ".references" / "tiny" / "values" / "molecular_weight.computed.npy"
    forged = np.zeros(4)
    with open(path, "wb") as handle:
        np.save(handle, forged, allow_pickle=False)
    fresh = ReferenceSets(small_registry, router)  # nothing cached in memory
    response = router.predict_local(["CCO"], ["molecular_weight"])
    fresh.annotate_response(response, "tiny")
    assert response["results"][0]["predictions"]["molecular_weight"].reference_percentile == 37.5
    assert ReferenceStore(small_registry.root).read_values("tiny", "molecular_weight", "computed") \
        .values.tolist() == [16.043, 46.069, 78.114, 180.159]


def test_prepare_counts_invalid_and_duplicate_records():
    prepared = prepare(["CCO", "OCC", "C1CC", "", "[Na+].[Cl-]", "*C"])
    assert prepared.smiles == ["CCO", "[Cl-].[Na+]"]
    assert (prepared.records, prepared.invalid, prepared.duplicates) == (6, 3, 1)
    assert len(prepared.examples) == 3 and "record 3" in prepared.examples[0]


def test_the_default_set_is_the_bundled_clintox_drugs_and_percentiles_use_it(small_registry):
    router = loaded_router(small_registry)
    references = ReferenceSets(small_registry, router)
    response = router.predict_local(["CC(=O)Oc1ccccc1C(=O)O"], ["molecular_weight", "lipinski"])
    references.annotate_response(response, None)
    reference = response["reference"]
    assert reference["name"] == "clintox_drugs" and "ClinTox" in reference["description"]
    info = references.info("clintox_drugs")
    assert info["records"] == 1478 and info["molecules"] == reference["molecules"] > 1400
    assert "CC BY 4.0" in info["licence"] and "Gayvert" in info["citation"]
    weight = response["results"][0]["predictions"]["molecular_weight"].reference_percentile
    assert 0 < weight < 30  # aspirin is small among drugs
    smiles = references.molecules("clintox_drugs")
    assert len(smiles) == len(set(smiles)) == info["molecules"]


def test_the_gateway_lists_reference_sets(app_client):
    listed = app_client.get("/v1/references")
    assert listed.status_code == 200
    names = {entry["name"]: entry for entry in listed.json()}
    assert names["clintox_drugs"]["default"] is True and names["clintox_drugs"]["molecules"] > 1400


def test_a_server_answers_at_once_and_percentiles_follow_once_computed_in_the_background(small_registry):
    router = loaded_router(small_registry)
    references = ReferenceSets(small_registry, router, background=True)
    references.add("tiny", TINY, compute=False)
    first = router.predict_local(["CCO"], ["molecular_weight", "logbb"])
    references.annotate_response(first, "tiny")
    assert first["results"][0]["predictions"]["logbb"].reference_percentile is None
    assert "being computed" in first["reference"]["omitted"]["logbb"]
    deadline = time.monotonic() + 60
    while True:
        later = router.predict_local(["CCO"], ["molecular_weight", "logbb"])
        references.annotate_response(later, "tiny")
        if "omitted" not in later["reference"] or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert "omitted" not in later["reference"], later["reference"]
    assert later["results"][0]["predictions"]["molecular_weight"].reference_percentile == 37.5
    assert later["results"][0]["predictions"]["logbb"].reference_percentile is not None
