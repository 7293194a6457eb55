import numpy as np
import pytest
from rdkit import Chem

from molserve.data.bundled import BUNDLED, load_bundled
from molserve.data.curation import curate
from molserve.data.dataset import Dataset, load_table, parse_label
from molserve.data.splits import murcko_scaffold, random_split, scaffold_split

EXPECTED_ROWS = {
    "solubility": 1282,
    "hydration_free_energy": 642,
    "bbb_penetration": 7807,
    "logbb": 1058,
    "pic50_chembl2321810": 1017,
}


def test_bundled_datasets_have_their_documented_sizes_and_provenance():
    for name in BUNDLED:
        dataset = load_bundled(name)
        assert len(dataset) == EXPECTED_ROWS[name]
        assert len(dataset.checksum) == 64
        assert dataset.licence and dataset.source and dataset.units


def test_bbb_labels_are_binary_and_mostly_positive():
    labels = np.array(load_bundled("bbb_penetration").labels)
    assert set(np.unique(labels)) == {0.0, 1.0}
    assert 0.55 < labels.mean() < 0.7


def test_scaffold_split_never_shares_a_scaffold_between_sides():
    dataset = load_bundled("logbb")
    curated = curate(dataset)
    split = scaffold_split(curated.mols, seed=0)
    scaffolds = {side: {murcko_scaffold(curated.mols[i]) for i in idx} for side, idx in split.items()}
    assert not scaffolds["train"] & scaffolds["test"]
    assert not scaffolds["train"] & scaffolds["valid"]
    assert sorted(split["train"] + split["valid"] + split["test"]) == list(range(len(curated.mols)))
    assert split == scaffold_split(curated.mols, seed=0)  # reproducible
    assert 0.7 < len(split["train"]) / len(curated.mols) <= 0.8


def test_random_split_partitions_everything():
    split = random_split(103, seed=1)
    assert sorted(split["train"] + split["valid"] + split["test"]) == list(range(103))


def test_curation_merges_duplicates_by_median_and_reports_drops():
    dataset = Dataset(
        name="t", smiles=["CCO", "OCC", "C(O)C", "C1CC", "CC(=O)[O-].[Na+]"],
        labels=[1.0, 2.0, 10.0, 3.0, 4.0], task="regression", units="u", description="",
        source="test", licence="none", checksum="0" * 64,
    )
    curated = curate(dataset)
    assert curated.report["rows_in"] == 5
    assert curated.report["unparsable"] == 1
    assert curated.report["duplicates_merged"] == 2
    assert curated.report["noisy_duplicate_groups"] == 1
    assert dict(zip(curated.canonical_smiles, curated.labels, strict=True)) == {
        "CCO": 2.0, "CC(=O)[O-]": 4.0}


def test_conflicting_classification_duplicates_are_dropped():
    dataset = Dataset(name="t", smiles=["CCO", "OCC", "CCN"], labels=[1.0, 0.0, 1.0],
                      task="classification", units="p", description="", source="t",
                      licence="t", checksum="0" * 64)
    curated = curate(dataset)
    assert curated.canonical_smiles == ["CCN"]
    assert curated.report["conflicting_class_groups_dropped"] == 1


def test_user_csv_and_sdf_are_read(tmp_path):
    csv_path = tmp_path / "d.csv"
    csv_path.write_text("SMILES,y\nCCO,1.5\nc1ccccc1,\nCCN,2.5\n")
    dataset = load_table(csv_path, smiles_col="SMILES", label_col="y", task="regression")
    assert dataset.smiles == ["CCO", "CCN"] and dataset.extra["rows_without_label"] == 1
    sdf_path = tmp_path / "d.sdf"
    writer = Chem.SDWriter(str(sdf_path))
    for smiles, value in [("CCO", 1), ("CCC", 0)]:
        mol = Chem.MolFromSmiles(smiles)
        mol.SetProp("active", str(value))
        writer.write(mol)
    writer.close()
    sdf = load_table(sdf_path, smiles_col="smiles", label_col="active", task="classification")
    assert sdf.labels == [1.0, 0.0]


def test_missing_column_is_a_clear_error(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("smiles,y\nCCO,1\n")
    try:
        load_table(path, smiles_col="smiles", label_col="pIC50", task="regression")
    except ValueError as error:
        assert "pIC50" in str(error) and "columns" in str(error)
    else:
        raise AssertionError("missing column accepted")


def test_parse_label_handles_classification_words():
    assert parse_label("BBB+", "classification", positive="BBB+") == 1.0
    assert parse_label("active", "classification") == 1.0
    assert parse_label("nan", "regression") is None
    assert parse_label("", "classification") is None


def test_numeric_binary_labels_in_any_spelling_are_classes():
    for one in ("1", "1.0", "1.00", "1e0", " 1 "):
        assert parse_label(one, "classification") == 1.0
        assert parse_label(one, "classification", positive="1") == 1.0
    for zero in ("0", "0.0", "-0", "0e0"):
        assert parse_label(zero, "classification") == 0.0
        assert parse_label(zero, "classification", positive="1") == 0.0
    assert parse_label("1", "classification", positive="1.0") == 1.0


def test_an_ambiguous_classification_label_is_an_error_naming_it():
    with pytest.raises(ValueError, match="'2'.*ambiguous.*--positive-label"):
        parse_label("2", "classification")
    with pytest.raises(ValueError, match="'x'"):
        parse_label("x", "classification")
    # With the positive class named, every other value is negative.
    assert parse_label("2", "classification", positive="1") == 0.0
