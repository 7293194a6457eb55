"""Medicinal-chemistry rules and structural alerts as computed endpoints: the violations named,
the alerts' atoms in the canonical SMILES' order, through the router and over HTTP, and the
depiction that highlights them."""

import pytest
from rdkit import Chem

from molserve.chem import descriptors
from molserve.chem.highlight import highlighted_svg, parse_highlight
from molserve.chem.rules import RULES
from molserve.errors import InvalidInput
from molserve.prediction.router import Router
from molserve.registry import Registry

ASPIRIN = "CC(=O)Oc1ccccc1C(=O)O"
# Arg-Tyr-Asn-Leu-Phe-Ser: a hexapeptide of about 800 g/mol with many N-H and O-H.
PEPTIDE = ("CC(C)C[C@H](NC(=O)[C@H](CC(=O)N)NC(=O)[C@H](Cc1ccc(O)cc1)NC(=O)[C@@H](N)CCCNC(N)=N)"
           "C(=O)N[C@@H](Cc1ccccc1)C(=O)N[C@@H](CO)C(=O)O")
RULE_NAMES = ["lipinski", "ghose", "veber", "egan", "muegge", "lead_likeness"]


def evaluate(name, smiles):
    mol = Chem.MolFromSmiles(smiles)
    return descriptors.evaluate(name, mol, Chem.MolToSmiles(mol))


def violated(result):
    return {v["property"]: v for v in result.details["violations"]}


def test_every_rule_and_alert_is_a_computed_endpoint():
    assert set(RULE_NAMES) | {"pains", "brenk", "structural_alerts"} <= set(descriptors.COMPUTED)
    for name in RULE_NAMES:
        assert "SwissADME" in descriptors.COMPUTED[name].method
        assert descriptors.COMPUTED[name].units == "violations (count)"


def test_a_big_peptide_fails_lipinski_with_each_violation_named():
    result = evaluate("lipinski", PEPTIDE)
    assert result.label == "fail" and result.value == 3
    named = violated(result)
    assert set(named) == {"molecular_weight", "n_or_o", "nh_or_oh"}
    assert named["molecular_weight"]["limit"] == "<= 500" and named["molecular_weight"]["value"] > 790
    assert named["n_or_o"]["value"] == 20 and named["n_or_o"]["limit"] == "<= 10"
    assert named["nh_or_oh"]["value"] == 16 and named["nh_or_oh"]["limit"] == "<= 5"
    veber = evaluate("veber", PEPTIDE)
    assert veber.label == "fail" and set(violated(veber)) == {"rotatable_bonds", "tpsa_incl_s_p"}


def test_aspirin_passes_the_drug_likeness_rules_and_fails_only_on_size_where_swissadme_does():
    for name in ("lipinski", "ghose", "veber", "egan"):
        result = evaluate(name, ASPIRIN)
        assert (result.value, result.label, result.details["violations"]) == (0, "pass", []), name
    # SwissADME reports the same for aspirin: Muegge "MW<200", lead-likeness "MW<250".
    for name, limit in (("muegge", ">= 200"), ("lead_likeness", ">= 250")):
        result = evaluate(name, ASPIRIN)
        assert result.label == "fail" and result.value == 1
        assert result.details["violations"] == [
            {"property": "molecular_weight", "value": 180.159, "limit": limit}]


def test_lipinski_tolerates_one_violation_and_no_other_rule_does():
    # Octadecylbenzene-like lipophile: logP far above 5, nothing else wrong for Lipinski.
    lipophile = "CCCCCCCCCCCCCCCCCCc1ccccc1"
    result = evaluate("lipinski", lipophile)
    assert result.value == 1 and result.label == "pass" and result.details["allowed_violations"] == 1
    egan = evaluate("egan", lipophile)
    assert egan.value == 1 and egan.label == "fail" and set(violated(egan)) == {"logp_crippen"}
    assert all(RULES[name].tolerance == 0 for name in RULE_NAMES if name != "lipinski")


def test_a_quinone_hits_pains_and_brenk_on_its_ring_and_oxygens():
    pains = evaluate("pains", "O=C1C=CC(=O)C=C1")
    assert pains.value == 1 and pains.label == "fail"
    assert pains.details["alerts"] == [
        {"catalog": "PAINS_A", "description": "quinone_A(370)", "atoms": [0, 1, 2, 3, 4, 5, 6, 7]}]
    brenk = evaluate("brenk", "O=C1C=CC(=O)C=C1")
    assert [a["catalog"] for a in brenk.details["alerts"]] == ["Brenk"]
    clean = evaluate("pains", "CCO")
    assert (clean.value, clean.label, clean.details) == (0, "pass", {"alerts": []})


def test_structural_alerts_keeps_its_value_and_adds_the_atoms_in_details():
    result = evaluate("structural_alerts", "O=C1C=CC(=O)C=C1")
    assert result.value == [{"catalog": "PAINS_A", "description": "quinone_A(370)"},
                            {"catalog": "Brenk", "description": "chinone_1"}]
    assert [a["atoms"] for a in result.details["alerts"]] == [list(range(8))] * 2
    assert descriptors.compute("structural_alerts", Chem.MolFromSmiles("CCO")) == []


def test_alert_atoms_follow_the_canonical_smiles_not_the_input():
    """A catechol written oxygen-first: the router answers with the canonical SMILES, and the
    catechol's atoms (ring and both oxygens, not the hexyl chain) are numbered in that string."""
    router = Router(Registry("/nonexistent-registry"))
    written = "Oc1ccc(CCCCCC)cc1O"
    response = router.predict_local([written], ["pains", "brenk", "structural_alerts"])
    result = response["results"][0]
    canonical = result["canonical_smiles"]
    assert canonical != written  # the orders differ, so the test can tell them apart
    mol = Chem.MolFromSmiles(canonical)
    catechol = sorted(a.GetIdx() for a in mol.GetAtoms() if a.GetIsAromatic() or a.GetSymbol() == "O")
    pains = result["predictions"]["pains"]
    assert pains.kind == "computed" and pains.label == "fail" and pains.value == 1
    assert pains.details["alerts"][0]["description"] == "catechol_A(92)"
    assert pains.details["alerts"][0]["atoms"] == catechol
    written_order = sorted(a.GetIdx() for a in Chem.MolFromSmiles(written).GetAtoms()
                           if a.GetIsAromatic() or a.GetSymbol() == "O")
    assert written_order != catechol
    brenk = result["predictions"]["brenk"].details["alerts"]
    assert {"catalog": "Brenk", "description": "catechol", "atoms": catechol} in brenk


def test_rules_through_the_router_carry_label_and_details():
    router = Router(Registry("/nonexistent-registry"))
    response = router.predict_local([PEPTIDE, ASPIRIN, "C1CC"], RULE_NAMES)
    peptide, aspirin, invalid = response["results"]
    assert invalid["error"] and invalid["predictions"] == {}
    lipinski = peptide["predictions"]["lipinski"]
    assert (lipinski.value, lipinski.label) == (3, "fail")
    assert lipinski.provenance.tier == "computed" and "Lipinski" in lipinski.provenance.details["method"]
    assert aspirin["predictions"]["veber"].label == "pass"
    assert aspirin["predictions"]["veber"].to_json()["details"] == {"violations": [],
                                                                    "allowed_violations": 0}


def test_rules_and_alerts_over_http(app_client):
    body = app_client.post("/v1/predict", json={
        "molecules": [PEPTIDE, "Oc1ccc(CCCCCC)cc1O"],
        "endpoints": ["lipinski", "muegge", "pains", "structural_alerts"]}).json()
    peptide, catechol = body["results"]
    lipinski = peptide["predictions"]["lipinski"]
    assert lipinski["value"] == 3 and lipinski["label"] == "fail" and lipinski["kind"] == "computed"
    assert {v["property"] for v in lipinski["details"]["violations"]} == {
        "molecular_weight", "n_or_o", "nh_or_oh"}
    alerts = catechol["predictions"]["pains"]["details"]["alerts"]
    assert alerts[0]["catalog"] == "PAINS_B" and len(alerts[0]["atoms"]) == 8
    old = catechol["predictions"]["structural_alerts"]["value"]
    assert {"catalog": "PAINS_B", "description": "catechol_A(92)"} in old
    # The page draws the alert's atoms on the canonical SMILES it got back.
    atoms = ",".join(map(str, alerts[0]["atoms"]))
    drawn = app_client.get("/v1/depict", params={"smiles": catechol["canonical_smiles"],
                                                 "highlight": atoms})
    assert drawn.status_code == 200 and drawn.headers["content-type"].startswith("image/svg+xml")
    plain = app_client.get("/v1/depict", params={"smiles": catechol["canonical_smiles"]})
    assert "#FF9933" in drawn.text.upper() and "#FF9933" not in plain.text.upper()
    by_name = app_client.get("/v1/depict", params={"smiles": catechol["canonical_smiles"],
                                                   "highlight": "pains"})
    assert by_name.status_code == 200 and by_name.text == drawn.text


@pytest.mark.parametrize("highlight, words", [("0,99", "out of range"), ("1,x", "not an index")])
def test_a_bad_highlight_is_a_clear_4xx(app_client, highlight, words):
    response = app_client.get("/v1/depict", params={"smiles": "CCO", "highlight": highlight})
    assert 400 <= response.status_code < 500
    assert response.json()["error"] == "invalid_highlight" and words in response.json()["message"]


def test_highlight_helpers_refuse_what_they_cannot_draw():
    assert parse_highlight(" 3,1, 2,3") == (1, 2, 3) and parse_highlight("Alerts") == "alerts"
    with pytest.raises(InvalidInput, match="3 atoms"):
        highlighted_svg("CCO", [3])


def test_ghose_counts_hydrogens_and_muegge_counts_carbons_and_heteroatoms():
    ghose = violated(evaluate("ghose", "O=C1C=CC(=O)C=C1"))
    assert ghose["atoms"] == {"property": "atoms", "value": 12, "limit": ">= 20"}  # C6H4O2
    muegge = violated(evaluate("muegge", "CCO"))
    assert muegge["carbons"] == {"property": "carbons", "value": 2, "limit": "> 4"}
    assert muegge["heteroatoms"] == {"property": "heteroatoms", "value": 1, "limit": "> 1"}
    # Polar sulfur counts towards the rules' TPSA, as SwissADME counts it (not the tpsa endpoint).
    thiol = Chem.MolFromSmiles("CCS")
    assert descriptors.compute("tpsa", thiol) == 0.0
    assert evaluate("veber", "CCS").value == 0 and RULES["veber"].criteria[1].property == "tpsa_incl_s_p"
    from molserve.chem.rules import PROPERTIES

    assert PROPERTIES["tpsa_incl_s_p"](thiol) > 0
