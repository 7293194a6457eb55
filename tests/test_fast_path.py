"""The fast tier's serving path (stacked forest, shared similarity index, answers built per
batch) against the reference path it replaced: each endpoint's stored trees evaluated level by
level, its own similarity index searched row by row, and each answer assembled row by row."""

from __future__ import annotations

import numpy as np
import pytest
from safetensors.numpy import load_file

from molserve.answers import Answer, Domain, Provenance, Uncertainty
from molserve.chem.features import FeatureSpec, featurize, union_spec
from molserve.chem.molecules import largest_fragment, parse_smiles
from molserve.chem.similarity import SharedIndex, SimilarityIndex
from molserve.data.bundled import load_bundled
from molserve.models.gbm_runtime import FastModel, _round
from molserve.models.trees import Forest, TreeEnsemble
from molserve.prediction.router import Router

ODD = ["[Na+].[Cl-]", "C", "O", "[He]", "c1ccccc1", "CC(=O)Oc1ccccc1C(=O)O.[K+]"]


@pytest.fixture(scope="module")
def molecules() -> list[str]:
    pool = load_bundled("bbb_penetration").smiles
    return [*ODD, *pool[:: max(1, len(pool) // 300)][:300]]


@pytest.fixture(scope="module")
def router(trained_registry) -> Router:
    router = Router(trained_registry)
    router.load()
    return router


def reference_answers(model: FastModel, features: np.ndarray, on_bits: list[np.ndarray]) -> list[Answer]:
    """What the fast tier answered before the stacked path: the row-by-row assembly, verbatim."""
    raw = model.reference_scores(features).astype(np.float64)
    index = SimilarityIndex.from_arrays(load_file(str(model.artifact.file("ad_index.safetensors"))),
                                        model.spec.n_bits)
    train_smiles = model.artifact.file("train_smiles.txt").read_text().split()
    provenance = Provenance.from_json(model.provenance())
    ad = model.manifest["applicability_domain"]
    threshold = float(ad["threshold"])
    calibration = model.manifest["uncertainty"]
    units = model.manifest["units"]
    answers = []
    confidence = calibration.get("confidence")
    space = (f"std of the members in {model.transform.kind} space"
             if model.transform.kind != "identity" else None)
    for row in range(raw.shape[0]):
        similarity, nearest = index.nearest(on_bits[row])
        domain = Domain(round(similarity, 4), bool(similarity >= threshold), round(threshold, 4),
                        train_smiles[nearest] if nearest >= 0 else None)
        members = raw[row]
        if model.task == "classification":
            platt = calibration.get("probability_calibration") or {}
            if platt.get("applied"):  # each member's margin, Platt-scaled
                members = platt["a"] * members + platt["b"]
            probabilities = 1.0 / (1.0 + np.exp(-members))
            p = float(probabilities.mean())
            names = model.manifest.get("label_names") or ["negative", "positive"]
            answers.append(Answer(
                provenance, round(p, 4), units, label=names[1] if p >= 0.5 else names[0],
                uncertainty=Uncertainty(round(float(probabilities.std()), 4),
                                        (round(float(probabilities.min()), 4),
                                         round(float(probabilities.max()), 4)),
                                        calibration["method"]),
                applicability_domain=domain))
            continue
        mean = float(members.mean())
        std = float(members.std())
        if calibration.get("scale") == "none":
            half = calibration["quantile"]
        elif calibration.get("scale") == "distance":
            half = calibration["quantile"] * (1.0 - similarity + calibration["gamma"])
        else:
            half = calibration["quantile"] * (std + calibration["stabilizer"])
        low, value, high = (float(v) for v in model.transform.inverse(
            np.array([mean - half, mean, mean + half])))
        answers.append(Answer(
            provenance, _round(value), units,
            uncertainty=Uncertainty(round(std, 4), (_round(low), _round(high)),
                                    calibration["method"], confidence, space),
            applicability_domain=domain))
    return answers


def assert_same(new: Answer, old: Answer) -> None:
    assert new.label == old.label
    assert new.provenance == old.provenance
    assert new.applicability_domain == old.applicability_domain  # exact: similarity, flag, SMILES
    assert new.value == pytest.approx(old.value, abs=1e-9)
    assert new.uncertainty.std == pytest.approx(old.uncertainty.std, abs=1e-9)
    assert new.uncertainty.interval == pytest.approx(old.uncertainty.interval, abs=1e-9)
    assert (new.uncertainty.method, new.uncertainty.confidence, new.uncertainty.space) == (
        old.uncertainty.method, old.uncertainty.confidence, old.uncertainty.space)


def expected(router: Router, molecules: list[str]) -> tuple[list[str], dict[str, list[Answer]]]:
    """Distinct canonical SMILES in first-seen order and each endpoint's reference answers."""
    canonical, mols = [], []
    for text in molecules:
        parsed = parse_smiles(text)
        if parsed.canonical_smiles not in canonical:
            canonical.append(parsed.canonical_smiles)
            mols.append(largest_fragment(parsed.mol))
    shared = union_spec([m.spec for m in router.fast.models.values()])
    features = featurize(mols, shared)
    answers = {}
    for name, model in router.fast.models.items():
        keep = model.spec.columns_in(shared)
        matrix = features.matrix if keep is None else features.matrix[:, keep]
        answers[name] = reference_answers(model, matrix, features.on_bits)
    return canonical, answers


def test_every_endpoint_at_once_answers_what_each_endpoint_alone_answered(router, molecules):
    assert len(router.fast.models) >= 5
    canonical, reference = expected(router, molecules)
    response = router.predict_local(molecules, None)
    slot = {smiles: i for i, smiles in enumerate(canonical)}
    checked = 0
    for result in response["results"]:
        for name, answer in result["predictions"].items():
            assert_same(answer, reference[name][slot[result["canonical_smiles"]]])
            checked += 1
    assert checked == len(molecules) * len(router.fast.models)


def test_one_molecule_at_a_time_answers_what_the_reference_answers(router, molecules):
    # One row per request: the statistics over members are computed with Python floats there.
    chosen = molecules[:12]
    canonical, reference = expected(router, chosen)
    slot = {smiles: i for i, smiles in enumerate(canonical)}
    for text in chosen:
        for endpoints in (None, sorted(router.fast.models)[:1]):
            (result,) = router.predict_local([text], endpoints)["results"]
            assert result["predictions"]
            for name, answer in result["predictions"].items():
                assert_same(answer, reference[name][slot[result["canonical_smiles"]]])


@pytest.mark.parametrize("count", [1, 2, 3])
def test_asking_one_two_or_three_endpoints_gives_the_same_answers_as_asking_all(router, molecules, count):
    names = sorted(router.fast.models)[-count:]
    canonical, reference = expected(router, molecules[:40])
    response = router.predict_local(molecules[:40], names)
    slot = {smiles: i for i, smiles in enumerate(canonical)}
    for result in response["results"]:
        assert sorted(result["predictions"]) == names
        for name, answer in result["predictions"].items():
            assert_same(answer, reference[name][slot[result["canonical_smiles"]]])


def test_a_molecule_sharing_no_bit_with_the_training_set_has_no_nearest_molecule():
    index = SimilarityIndex.build([np.array([1, 2]), np.array([2, 3])], 8)
    other = SimilarityIndex.build([np.array([5])], 8)
    shared = SharedIndex.build({"a": (index, ["CC", "CO"]), "b": (other, ["CN"])}, 8)
    found = shared.nearest([np.array([5, 6], dtype=np.int32), np.array([], dtype=np.int32)], ["a", "b"])
    assert found["a"][0].tolist() == [0.0, 0.0] and found["a"][1] == [None, None]
    assert found["b"][0].tolist() == [0.5, 0.0] and found["b"][1] == ["CN", None]


def test_the_shared_index_stores_a_molecule_of_several_training_sets_once_and_keeps_each_sets_tie_order():
    first = SimilarityIndex.build([np.array([1, 2]), np.array([1, 3])], 8)
    # "CO" again with the same bits (stored once), and a molecule with the same bits as "CC" but
    # another SMILES (kept apart: each set answers its own nearest SMILES).
    second = SimilarityIndex.build([np.array([1, 3]), np.array([1, 2])], 8)
    shared = SharedIndex.build({"a": (first, ["CC", "CO"]), "b": (second, ["CO", "C=C"])}, 8)
    assert shared.index.size == 3
    found = shared.nearest([np.array([1], dtype=np.int32)], ["a", "b"])
    # Both members of each set are equally similar: the first in the set's own order wins.
    assert found["a"][1] == ["CC"] and found["b"][1] == ["CO"]
    assert found["a"][0].tolist() == [0.5] and found["b"][0].tolist() == [0.5]


def test_a_forest_of_stumps_and_trees_from_several_models_sums_each_members_leaves():
    # Two members: member 0 has a stump (constant 1.5) and a tree on column 0; member 1 one tree
    # on column 1. Pre-order layout, children stored as (right, left), leaves pointing to themselves.
    inf = np.inf
    tree = TreeEnsemble(
        feature=np.array([0, 0, 0, 0, 1, 0, 0], dtype=np.int32),
        threshold=np.array([inf, 0.5, inf, inf, 2.0, inf, inf], dtype=np.float32),
        children=np.array([[0, 0], [3, 2], [2, 2], [3, 3], [6, 5], [5, 5], [6, 6]], dtype=np.int32),
        value=np.array([1.5, 0.0, -1.0, 2.0, 0.0, 3.0, 4.0]),
        roots=np.array([0, 1, 4], dtype=np.int32),
        membership=np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]]),
        depth=1,
    )
    # Model m's columns are swapped in the shared layout; model n's are the shared layout.
    forest = Forest.concat([(Forest.from_ensemble("m", tree), np.array([1, 0])),
                            (Forest.from_ensemble("n", tree), None)])
    x = np.array([[0.0, 3.0], [1.0, 1.0]], dtype=np.float32)
    scores = forest.raw_scores(x)
    assert scores.tolist() == [[1.5 + 2.0, 3.0, 1.5 - 1.0, 4.0], [1.5 + 2.0, 3.0, 1.5 + 2.0, 3.0]]
    assert np.array_equal(scores[:, :2], tree.raw_scores(x[:, [1, 0]]))
    assert np.array_equal(scores[:, 2:], tree.raw_scores(x))
    assert np.array_equal(forest.part(["n"]).raw_scores(x), tree.raw_scores(x))


def test_a_feature_layout_maps_its_columns_into_a_wider_one():
    narrow = FeatureSpec(blocks=("erg",))
    wide = FeatureSpec(blocks=("rdkit2d", "erg"))
    where = narrow.positions_in(wide)
    assert where[:2048].tolist() == list(range(2048))
    assert where[2048] == wide.block_offsets()["erg"]
    assert wide.positions_in(narrow)[2048] == -1


def test_a_stored_stack_serves_the_same_answers_and_a_damaged_one_is_rebuilt(trained_registry, molecules):
    from molserve.prediction import stacked

    store = trained_registry.root / ".serving"
    first = Router(trained_registry)
    first.load()  # builds the stack, or reads the one an earlier load stored
    (stored,) = store.glob("*.safetensors")
    again = Router(trained_registry)
    again.load()
    assert again.fast.groups[0].key == first.fast.groups[0].key
    assert stacked.read(first.fast.groups[0].key, list(first.fast.models.values()), store) is not None
    expected = first.predict_local(molecules[:30], None)["results"]
    assert again.predict_local(molecules[:30], None)["results"] == expected

    data = bytearray(stored.read_bytes())
    data[-1] ^= 0xFF
    stored.write_bytes(bytes(data))
    assert stacked.read(first.fast.groups[0].key, list(first.fast.models.values()), store) is None
    rebuilt = Router(trained_registry)
    rebuilt.load()
    assert rebuilt.predict_local(molecules[:30], None)["results"] == expected
    assert stacked.read(first.fast.groups[0].key, list(first.fast.models.values()), store) is not None


def test_a_reload_that_adds_an_endpoint_restacks_the_loaded_models_with_the_new_one(trained_registry,
                                                                                     molecules):
    names = sorted(trained_registry.endpoints())
    router = Router(trained_registry)
    router.load(only=names[:2])  # a subset: stacked in memory, not stored
    kept = router.fast.models[names[0]]
    router.load(only=names[:3])
    assert router.fast.models[names[0]] is kept  # kept, now a view of the new stack
    assert sorted(router.fast.models) == names[:3]
    canonical, reference = expected(router, molecules[:40])
    slot = {smiles: i for i, smiles in enumerate(canonical)}
    for result in router.predict_local(molecules[:40], None)["results"]:
        assert sorted(result["predictions"]) == names[:3]
        for name, answer in result["predictions"].items():
            assert_same(answer, reference[name][slot[result["canonical_smiles"]]])


def test_a_reload_replaces_what_the_fast_tier_serves_in_one_step(trained_registry):
    """Requests read models, groups and each endpoint's group while a reload happens: the reload
    must swap them together (one assignment), never one after another."""
    from molserve.prediction.tiers import FastTier

    assigned: list[str] = []

    class Watched(FastTier):
        def __setattr__(self, name, value):
            assigned.append(name)
            super().__setattr__(name, value)

    tier = Watched(trained_registry)
    tier.load()
    assigned.clear()
    tier.load(only=["solubility", "logbb"])  # a different set: new models, groups and map
    assert assigned == ["_served"]
    assert sorted(tier.models) == ["logbb", "solubility"]
    assert {name for group in tier.groups for name in group.names} == {"logbb", "solubility"}
