import numpy as np
import pytest
from rdkit import Chem, DataStructs
from rdkit.Chem import rdFingerprintGenerator

from molserve.chem.descriptors import COMPUTED, compute, structural_alerts
from molserve.chem.features import CHEAP_DESCRIPTORS, FeatureSpec, featurize
from molserve.chem.similarity import SimilarityIndex, tanimoto

SMILES = ["CCO", "c1ccccc1O", "CC(=O)Oc1ccccc1C(=O)O", "CN1C=NC2=C1C(=O)N(C(=O)N2C)C",
          "O=C(O)c1ccccc1", "CCN(CC)CC", "c1ccc2ccccc2c1", "OC1CCCCC1"]


def test_features_match_rdkit_count_fingerprints_and_descriptors():
    mols = [Chem.MolFromSmiles(s) for s in SMILES]
    spec = FeatureSpec(descriptors=tuple(CHEAP_DESCRIPTORS))
    batch = featurize(mols, spec)
    generator = rdFingerprintGenerator.GetMorganGenerator(radius=2, fpSize=2048)
    for row, mol in enumerate(mols):
        expected = generator.GetCountFingerprintAsNumPy(mol)
        assert np.array_equal(batch.matrix[row, :2048], expected)
        assert np.array_equal(batch.on_bits[row], np.flatnonzero(expected))
        tpsa = batch.matrix[row, 2048 + list(CHEAP_DESCRIPTORS).index("tpsa")]
        assert abs(tpsa - CHEAP_DESCRIPTORS["tpsa"](mol)) < 1e-3


def test_feature_spec_round_trips_and_rejects_unknown_descriptors():
    spec = FeatureSpec(radius=3, n_bits=1024, descriptors=("tpsa",))
    assert FeatureSpec.from_dict(spec.to_dict()) == spec
    data = spec.to_dict()
    data["descriptors"] = ["made_up"]
    try:
        FeatureSpec.from_dict(data)
    except ValueError as error:
        assert "made_up" in str(error)
    else:
        raise AssertionError("unknown descriptor accepted")


def test_similarity_index_equals_rdkit_bulk_tanimoto():
    mols = [Chem.MolFromSmiles(s) for s in SMILES]
    batch = featurize(mols, FeatureSpec())
    reference = batch.on_bits[:5]
    index = SimilarityIndex.build(reference, 2048)
    generator = rdFingerprintGenerator.GetMorganGenerator(radius=2, fpSize=2048)
    ref_fps = [generator.GetFingerprint(m) for m in mols[:5]]
    for row, mol in enumerate(mols):
        expected = DataStructs.BulkTanimotoSimilarity(generator.GetFingerprint(mol), ref_fps)
        similarity, nearest = index.nearest(batch.on_bits[row])
        assert abs(similarity - max(expected)) < 1e-12
        assert expected[nearest] == max(expected)
        assert abs(tanimoto(batch.on_bits[row], reference[nearest]) - similarity) < 1e-12
    # A training molecule is its own nearest neighbour.
    assert index.nearest(batch.on_bits[2]) == (1.0, 2)


def test_empty_similarity_index_answers_zero():
    index = SimilarityIndex.build([], 2048)
    assert index.nearest(np.array([1, 2, 3])) == (0.0, -1)


def test_computed_properties_are_exact_rdkit_values():
    aspirin = Chem.MolFromSmiles("CC(=O)Oc1ccccc1C(=O)O")
    assert compute("molecular_weight", aspirin) == 180.159
    assert compute("tpsa", aspirin) == 63.6
    assert compute("hbd", aspirin) == 1
    assert abs(compute("logp_crippen", aspirin) - 1.3101) < 1e-4
    assert set(COMPUTED) >= {"logp_crippen", "tpsa", "molecular_weight", "qed", "hbd", "hba",
                             "rotatable_bonds", "structural_alerts"}


def test_structural_alerts_flag_a_quinone_and_pass_ethanol():
    quinone = structural_alerts(Chem.MolFromSmiles("O=C1C=CC(=O)C=C1"))
    assert {a["catalog"] for a in quinone} == {"PAINS_A", "Brenk"}
    assert structural_alerts(Chem.MolFromSmiles("CCO")) == []


def test_rdkit2d_block_reproduces_rdkits_own_descriptors():
    from rdkit.Chem import Crippen
    from rdkit.Chem import rdMolDescriptors as rd

    from molserve.chem.features import RDKIT2D_NAMES, _rdkit2d

    for smiles in SMILES + ["c1ccncc1.Cl", "[H]OC([H])C", "[Se]1C=CC=C1"]:
        mol = Chem.MolFromSmiles(smiles)
        values = dict(zip(RDKIT2D_NAMES, _rdkit2d(mol), strict=True))
        assert abs(values["crippen_logp"] - Crippen.MolLogP(mol)) < 1e-9
        assert abs(values["crippen_mr"] - Crippen.MolMR(mol)) < 1e-9
        assert abs(values["tpsa"] - rd.CalcTPSA(mol)) < 1e-6
        assert np.allclose([values[f"slogp_vsa{i + 1}"] for i in range(12)], rd.SlogP_VSA_(mol))
        assert np.allclose([values[f"smr_vsa{i + 1}"] for i in range(10)], rd.SMR_VSA_(mol))
        assert np.allclose([values[f"mqn{i + 1}"] for i in range(42)], rd.MQNs_(mol))


def test_feature_blocks_lay_out_after_the_fingerprint_and_select_from_a_wider_spec():
    from molserve.chem.features import BLOCKS, union_spec

    mols = [Chem.MolFromSmiles(s) for s in SMILES]
    narrow = FeatureSpec(blocks=("erg",))
    wide = union_spec([FeatureSpec(blocks=("rdkit2d",)), narrow, FeatureSpec(descriptors=("tpsa",))])
    assert wide.blocks == ("rdkit2d", "erg") and wide.descriptors == ("tpsa",)
    assert wide.width == 2048 + 1 + BLOCKS["rdkit2d"].width + 315
    full = featurize(mols, wide).matrix
    alone = featurize(mols, narrow).matrix
    assert np.array_equal(full[:, narrow.columns_in(wide)], alone)
    assert narrow.columns_in(narrow) is None
    assert FeatureSpec.from_dict(wide.to_dict()) == wide
    with pytest.raises(ValueError, match="made_up"):
        FeatureSpec.from_dict({**narrow.to_dict(), "blocks": ["made_up"]})
