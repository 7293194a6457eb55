"""Explanations of fast-tier answers: contributions that add up to the model's raw output, atoms
in the canonical SMILES' order, a depiction, and nothing of it unless asked."""

from __future__ import annotations

import asyncio
import math
import subprocess
import sys

import numpy as np
import pytest
from rdkit import Chem
from safetensors.numpy import load_file

from molserve.chem.features import featurize
from molserve.chem.molecules import largest_fragment, parse_smiles
from molserve.models.trees import TreeEnsemble
from molserve.prediction.explain import ABSENT_BITS, _lightgbm_counts
from molserve.prediction.router import Router

# A regression endpoint, a log10-target regression, a classifier (all in the test registry).
ENDPOINTS = ["solubility", "half_life", "bbb_penetration"]
MOLECULES = ["CC(=O)Oc1ccccc1C(=O)O", "c1ccc2c(c1)[nH]c1ccccc12", "CN1CCC[C@H]1c1cccnc1",
             "OCC(O)CO", "CCCCCCCCCCCCCCCC(=O)O"]
SALTS = ["[Na+].O=C([O-])c1ccccc1O", "CCN(CC)CC.Cl", "O.O.OC(=O)c1ccccc1"]


@pytest.fixture(scope="module")
def router(trained_registry) -> Router:
    router = Router(trained_registry)
    router.load()
    return router


def served_raw(router: Router, endpoint: str, canonical: str) -> float:
    """The members' mean raw output, from the stored trees evaluated level by level on the
    features of the molecule's largest fragment (the reference the served forest matches)."""
    model = router.fast.models[endpoint]
    mol = largest_fragment(parse_smiles(canonical).mol)
    return float(model.reference_scores(featurize([mol], model.spec).matrix).mean())


def total(explanation: dict) -> float:
    parts = [explanation["base"], *explanation["atoms"], *explanation["descriptors"].values()]
    return math.fsum(parts)


def check_adds_up(router: Router, endpoint: str, result: dict) -> dict:
    answer = result["predictions"][endpoint]
    explanation = answer.explanation
    assert explanation is not None and "error" not in explanation, explanation
    assert abs(total(explanation) - explanation["raw"]) < 1e-6
    raw = served_raw(router, endpoint, result["canonical_smiles"])
    assert abs(explanation["raw"] - raw) < 1e-6
    model = router.fast.models[endpoint]
    # The served value derives from that raw output.
    if model.task == "classification":
        assert explanation["space"] == "log-odds"
        member = model.reference_scores(featurize(
            [largest_fragment(parse_smiles(result["canonical_smiles"]).mol)], model.spec).matrix)[0]
        platt = model.manifest["uncertainty"].get("probability_calibration") or {}
        if platt.get("applied"):  # the served probability is of Platt-scaled margins
            member = platt["a"] * member + platt["b"]
        assert answer.value == pytest.approx(float((1 / (1 + np.exp(-member))).mean()), abs=1e-4)
    else:
        assert answer.value == pytest.approx(float(model.transform.inverse(np.array(raw))), rel=1e-3,
                                             abs=1e-4)
        assert explanation["space"] == ("log10(value)" if model.transform.kind == "log10" else "value")
    assert len(explanation["atoms"]) == Chem.MolFromSmiles(result["canonical_smiles"]).GetNumAtoms()
    assert explanation["svg"].lstrip().startswith("<?xml") and "</svg>" in explanation["svg"]
    return explanation


@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_contributions_and_base_reproduce_the_raw_prediction(router, endpoint):
    response = router.predict_local(MOLECULES, [endpoint], explain=True)
    explanations = [check_adds_up(router, endpoint, result) for result in response["results"]]
    # The attribution is not trivial: atoms, descriptors and absent substructures all carry some.
    assert any(any(a != 0 for a in e["atoms"]) for e in explanations)
    assert any(e["descriptors"] for e in explanations)
    assert any(ABSENT_BITS in e["descriptors"] for e in explanations)


def test_every_endpoint_at_once_explains_as_each_alone(router):
    together = router.predict_local(MOLECULES[:2], ENDPOINTS, explain=True)["results"]
    for endpoint in ENDPOINTS:
        alone = router.predict_local(MOLECULES[:2], [endpoint], explain=True)["results"]
        for a, b in zip(together, alone, strict=True):
            assert a["predictions"][endpoint].explanation == b["predictions"][endpoint].explanation


def test_a_salt_is_explained_on_its_parent_with_the_stripped_atoms_at_zero(router):
    response = router.predict_local(SALTS, ENDPOINTS, explain=True)
    for result in response["results"]:
        mol = Chem.MolFromSmiles(result["canonical_smiles"])
        fragments = Chem.GetMolFrags(mol)
        assert len(fragments) > 1
        parent = max(fragments, key=len)
        credited = 0
        for endpoint in ENDPOINTS:
            atoms = check_adds_up(router, endpoint, result)["atoms"]
            assert all(atoms[i] == 0 for fragment in fragments if fragment != parent for i in fragment)
            # A model may use none of a small parent's bits (its credit then sits in the
            # descriptors); the parent is credited by the endpoints whose trees use them.
            credited += any(atoms[i] != 0 for i in parent)
        assert credited >= 2, result["canonical_smiles"]


def test_atoms_follow_the_canonical_smiles_whatever_order_the_input_wrote_them_in(router):
    # The same molecule written two ways: one canonical SMILES, one explanation.
    first, second = router.predict_local(["OC(=O)c1ccccc1N", "Nc1ccccc1C(O)=O"], ["solubility"],
                                         explain=True)["results"]
    assert first["canonical_smiles"] == second["canonical_smiles"]
    explanation = first["predictions"]["solubility"].explanation
    assert explanation == second["predictions"]["solubility"].explanation
    # The carboxylic acid's atoms, located in the canonical SMILES, carry its bits: each of its
    # three atoms has a contribution of its own (radius-0/1 environments centred on them).
    mol = Chem.MolFromSmiles(first["canonical_smiles"])
    acid = mol.GetSubstructMatch(Chem.MolFromSmarts("C(=O)[OH]"))
    assert acid and all(explanation["atoms"][i] != 0 for i in acid)


class WorkerTier:
    """A worker tier that answers solubility and fails logbb (the router then degrades logbb
    to the fast tier)."""

    name = "transformer"

    class settings:  # noqa: N801 - stands for the tier's settings object
        timeout_s = 1.0

    def endpoints(self) -> list[str]:
        return ["solubility", "logbb"]

    def served_endpoints(self) -> dict[str, dict]:
        return {e: {"task": "regression", "units": "", "metrics": {}} for e in self.endpoints()}

    async def answer(self, batch, name, deadline, request_id):
        from molserve.answers import Answer, Provenance
        from molserve.prediction.remote import RemoteFailure

        if name == "logbb":
            raise RemoteFailure("worker_down")
        return [Answer(Provenance(f"{name}/transformer", 1, "transformer"), 0.5)
                for _ in batch.canonical_smiles]


def test_only_fast_tier_answers_are_explained_including_degraded_fallbacks(trained_registry):
    router = Router(trained_registry)
    router.load()
    router.remotes["transformer"] = WorkerTier()
    response = asyncio.run(router.predict(["CCO", "c1ccccc1O", "oops("], ["solubility", "logbb", "tpsa"],
                                          tier="transformer", explain=True))
    assert response["degraded"] == {"logbb": "worker_down"}
    for result in response["results"][:2]:
        assert result["predictions"]["solubility"].provenance.tier == "transformer"
        assert result["predictions"]["solubility"].explanation is None
        assert result["predictions"]["tpsa"].explanation is None
        fallback = result["predictions"]["logbb"]
        assert fallback.provenance.degraded
        check_adds_up(router, "logbb", result)
    assert response["results"][2]["error"] and response["results"][2]["predictions"] == {}
    plain = asyncio.run(router.predict(["CCO"], ["logbb"], tier="transformer"))
    assert plain["results"][0]["predictions"]["logbb"].explanation is None


def test_nitro_aromatics_owe_their_mutagenicity_to_the_nitro_group(tdc_registry):
    if "ames_mutagenicity" not in tdc_registry.endpoints():
        pytest.skip("the test registry has no ames_mutagenicity model (set MOLSERVE_TEST_REGISTRY "
                    "to a registry with every TDC endpoint)")
    router = Router(tdc_registry)
    router.load(["ames_mutagenicity"])
    nitro = Chem.MolFromSmarts("[N+](=O)[O-]")
    molecules = ["O=[N+]([O-])c1ccccc1", "Cc1ccc([N+](=O)[O-])cc1", "O=[N+]([O-])c1ccc(Cl)cc1",
                 "O=[N+]([O-])c1ccc2ccccc2c1"]
    for result in router.predict_local(molecules, ["ames_mutagenicity"], explain=True)["results"]:
        atoms = np.array(check_adds_up(router, "ames_mutagenicity", result)["atoms"])
        group = list(Chem.MolFromSmiles(result["canonical_smiles"]).GetSubstructMatch(nitro))
        rest = np.delete(atoms, group)
        assert int(np.argmax(atoms)) in group, (result["canonical_smiles"], atoms)
        assert (atoms[group] > 0).all()
        assert atoms[group].mean() > rest.max(), (result["canonical_smiles"], atoms)


def test_alcohols_owe_their_more_negative_hydration_free_energy_to_the_hydroxyl(router):
    """A hydroxyl makes the free energy of hydration more negative: in every alcohol asked, its
    oxygen carries the most negative contribution (runs with the default test registry)."""
    alcohols = ["CCO", "CCCCO", "CCCCCCCCO", "OC1CCCCC1", "OCc1ccccc1", "CC(C)CCO", "CCCCCCO", "CC(O)CC"]
    hydroxyl = Chem.MolFromSmarts("[CX4][OX2H]")
    response = router.predict_local(alcohols, ["hydration_free_energy"], explain=True)
    for result in response["results"]:
        atoms = np.array(check_adds_up(router, "hydration_free_energy", result)["atoms"])
        _, oxygen = Chem.MolFromSmiles(result["canonical_smiles"]).GetSubstructMatch(hydroxyl)
        assert int(np.argmin(atoms)) == oxygen and atoms[oxygen] < 0, (result["canonical_smiles"], atoms)


def test_node_counts_read_from_the_lightgbm_text_line_up_with_the_stored_trees(router):
    """Each internal node's training count is its two children's: the counts are in the stored
    trees' node order (so the node expectations are the right ones)."""
    for endpoint in ENDPOINTS:
        artifact = router.fast.models[endpoint].artifact
        ensemble = TreeEnsemble.from_arrays(load_file(str(artifact.file("trees.safetensors"))))
        counts = np.concatenate(_lightgbm_counts(artifact.file("lightgbm_members.txt").read_text()))
        assert len(counts) == len(ensemble.feature)
        right, left = ensemble.children[:, 0], ensemble.children[:, 1]
        internal = np.flatnonzero(left != np.arange(len(left)))
        assert len(internal) > 0
        assert np.array_equal(counts[internal], counts[left[internal]] + counts[right[internal]])


def test_without_explain_no_explanation_is_computed_or_even_imported(trained_registry):
    code = (
        "import sys\n"
        "from molserve.prediction.router import Router\n"
        "from molserve.registry import Registry\n"
        f"router = Router(Registry({str(trained_registry.root)!r})); router.load()\n"
        "response = router.predict_local(['CCO', 'c1ccccc1O'], None)\n"
        "assert all(a.explanation is None for r in response['results'] for a in r['predictions'].values())\n"
        "assert router._explainer is None\n"
        "assert 'molserve.prediction.explain' not in sys.modules\n"
        "print('ok')\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0 and run.stdout.strip() == "ok", run.stderr[-2000:]


def test_the_api_explains_on_request_only_and_keeps_per_molecule_errors(app_client):
    body = {"molecules": ["CC(=O)Oc1ccccc1C(=O)O", "not a smiles", "[Na+].[O-]C(=O)c1ccccc1"],
            "endpoints": ["solubility", "bbb_penetration", "tpsa"], "explain": True}
    response = app_client.post("/v1/predict", json=body)
    assert response.status_code == 200, response.text
    aspirin, invalid, salt = response.json()["results"]
    assert invalid["error"] and invalid["predictions"] == {}
    for result in (aspirin, salt):
        for endpoint in ("solubility", "bbb_penetration"):
            explanation = result["predictions"][endpoint]["explanation"]
            assert set(explanation) >= {"space", "base", "atoms", "descriptors", "raw", "svg"}
            assert abs(total(explanation) - explanation["raw"]) < 1e-6
            assert len(explanation["atoms"]) == Chem.MolFromSmiles(result["canonical_smiles"]).GetNumAtoms()
        assert "explanation" not in result["predictions"]["tpsa"]  # computed exactly: nothing to explain
    plain = app_client.post("/v1/predict", json={**body, "explain": False}).json()
    absent = app_client.post("/v1/predict", json={k: v for k, v in body.items() if k != "explain"}).json()
    for answered in (plain, absent):
        assert all("explanation" not in a for r in answered["results"] for a in r["predictions"].values())
        assert answered["results"][1]["error"] == invalid["error"]


def test_the_api_refuses_a_malformed_explain_or_reference_with_a_message(app_client):
    for extra in ({"explain": [1]}, {"explain": "perhaps"}, {"reference": "x" * 101}):
        response = app_client.post("/v1/predict", json={"molecules": ["CCO"], **extra})
        assert response.status_code == 422, (extra, response.text)
        assert response.json()["message"]


def test_a_molecule_that_cannot_be_mapped_gets_its_own_explanation_error(router, monkeypatch):
    from molserve.prediction import explain

    real = explain.atom_map

    def refuse_phenol(smiles: str, radius: int, n_bits: int):
        if smiles == "Oc1ccccc1":
            raise ValueError("cannot map this one")
        return real(smiles, radius, n_bits)

    monkeypatch.setattr(explain, "atom_map", refuse_phenol)
    phenol, ethanol = router.predict_local(["c1ccccc1O", "CCO"], ["solubility"], explain=True)["results"]
    answer = phenol["predictions"]["solubility"]
    assert answer.value is not None and "cannot map this one" in answer.explanation["error"]
    check_adds_up(router, "solubility", ethanol)


def test_the_depiction_shades_atoms_red_up_blue_down_and_leaves_zero_unshaded():
    import re

    from molserve.chem.depict import contribution_svg

    svg = contribution_svg("Cc1ccc([N+](=O)[O-])cc1", [0.0, 0.1, 0, 0, 0, 0.4, 0.2, 0.2, 0, -0.4])

    def fill(atom: int) -> tuple[int, int, int] | None:
        found = re.search(rf"<ellipse [^>]*class='atom-{atom}'[^>]*fill:#([0-9A-F]{{6}})", svg)
        return None if found is None else tuple(int(found.group(1)[i : i + 2], 16) for i in (0, 2, 4))

    assert fill(0) is None and fill(2) is None  # contributes nothing: not shaded
    red, blue, pale = fill(5), fill(9), fill(1)
    assert red[0] > 200 and red[2] < 60  # the strongest positive atom: full red
    assert blue[2] > 150 and blue[0] < 60  # the strongest negative atom: full blue
    assert pale[0] > pale[2] and min(pale) > red[1]  # a weaker positive one: a paler red
    assert svg.count("<ellipse") == 5  # atoms 1, 5, 6, 7 and 9


def test_too_many_molecules_to_explain_is_a_413_with_the_limit(app_client):
    molecules = ["CCO"] * 101
    response = app_client.post("/v1/predict", json={"molecules": molecules, "explain": True})
    assert response.status_code == 413
    body = response.json()
    assert body["error"] == "explain_batch_too_large" and body["details"]["limit"] == 100
    assert "explain" in body["message"]
    assert app_client.post("/v1/predict", json={"molecules": molecules}).status_code == 200


def test_reference_sets_annotate_each_response_once_on_both_paths(trained_registry):
    class References:
        def __init__(self) -> None:
            self.calls: list[tuple[int, str | None]] = []

        def annotate_response(self, response: dict, reference: str | None) -> None:
            self.calls.append((len(response["results"]), reference))

    router = Router(trained_registry)
    router.load(["solubility"])
    router.references = references = References()
    router.predict_local(["CCO"], ["solubility"], reference="approved")
    asyncio.run(router.predict(["CCO", "CCN"], ["solubility"]))
    router.remotes["transformer"] = WorkerTier()
    asyncio.run(router.predict(["CCO", "CCN", "CCC"], ["solubility"], tier="transformer", reference="x"))
    assert references.calls == [(1, "approved"), (2, None), (3, "x")]


def scalar_saabas(ensemble: TreeEnsemble, counts: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, float]:
    """Path attribution one tree and one node at a time, with plain Python: the reference the
    vectorized walk is checked against."""
    right, left = ensemble.children[:, 0].tolist(), ensemble.children[:, 1].tolist()
    expectation: dict[int, float] = {}

    def expect(node: int) -> float:
        if node not in expectation:
            if left[node] == node:
                expectation[node] = float(ensemble.value[node])
            else:
                lo, hi = left[node], right[node]
                total = counts[lo] * expect(lo) + counts[hi] * expect(hi)
                expectation[node] = total / (counts[lo] + counts[hi])
        return expectation[node]

    credit = np.zeros(len(x))
    base = 0.0
    for root in ensemble.roots.tolist():
        node = root
        base += expect(root)
        while left[node] != node:
            feature = int(ensemble.feature[node])
            following = left[node] if np.float32(x[feature]) <= ensemble.threshold[node] else right[node]
            credit[feature] += expect(following) - expect(node)
            node = following
    return credit / ensemble.n_members, base / ensemble.n_members


def test_the_vectorized_walk_credits_the_features_a_scalar_walk_credits(router):
    from molserve.prediction.explain import TreePaths

    model = router.fast.models["bbb_penetration"]
    ensemble = TreeEnsemble.from_arrays(load_file(str(model.artifact.file("trees.safetensors"))))
    counts = np.concatenate(_lightgbm_counts(model.artifact.file("lightgbm_members.txt").read_text()))
    x = featurize([parse_smiles(s).mol for s in MOLECULES[:3]], model.spec).matrix
    paths = TreePaths.from_model(model)
    credit, raw = paths.attribute(x)
    for row in range(len(x)):
        expected, base = scalar_saabas(ensemble, counts, x[row])
        assert np.abs(credit[row] - expected).max() < 1e-9
        assert paths.base == pytest.approx(base, abs=1e-9)
        assert np.count_nonzero(expected) > 10


def test_the_attributions_agree_with_lightgbms_exact_treeshap(router):
    lightgbm = pytest.importorskip("lightgbm")
    from molserve.prediction.explain import TreePaths

    model = router.fast.models["solubility"]
    text = model.artifact.file("lightgbm_members.txt").read_text()
    boosters = [lightgbm.Booster(model_str=part.split("\n", 1)[1]) for part in text.split("# member ")[1:]]
    x = featurize([largest_fragment(parse_smiles(s).mol) for s in MOLECULES + SALTS], model.spec).matrix
    credit, raw = TreePaths.from_model(model).attribute(x)
    shap = np.mean([b.predict(x.astype(np.float64), pred_contrib=True) for b in boosters], axis=0)
    assert np.abs(raw - shap.sum(axis=1)).max() < 1e-9  # the same output explained
    for row in range(len(x)):
        assert np.corrcoef(credit[row], shap[row, :-1])[0, 1] > 0.9
