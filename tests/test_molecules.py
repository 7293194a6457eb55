import pytest
from rdkit import Chem

from molserve.chem.molecules import InvalidSmiles, largest_fragment, parse_smiles, try_parse


def test_canonical_smiles_is_independent_of_input_order():
    assert parse_smiles("OCC").canonical_smiles == parse_smiles("C(O)C").canonical_smiles == "CCO"


@pytest.mark.parametrize(
    ("smiles", "expected"),
    [
        ("C1CC", "unclosed ring"),
        ("CC(C", "extra open parentheses"),
        ("C(C)(C)(C)(C)C", "Explicit valence for atom # 0 C, 5"),
        ("c1cccc1", "kekulize"),
        ("not a smiles", "syntax error while parsing: not"),
        ("", "empty SMILES"),
        ("   ", "empty SMILES"),
        ("[H][H]", "no heavy atoms"),
    ],
)
def test_invalid_smiles_carry_rdkits_reason(smiles, expected):
    result = try_parse(smiles)
    assert isinstance(result, InvalidSmiles)
    assert expected in result.reason


def test_position_is_reported_for_syntax_errors():
    assert "position 3" in try_parse("CC(C").reason


def test_whitespace_inside_a_valid_first_word_is_refused_not_truncated():
    # RDKit alone would read "CCO" and treat the rest as a name.
    error = try_parse("CCO ethanol")
    assert isinstance(error, InvalidSmiles)
    assert "whitespace" in error.reason


def test_surrounding_whitespace_is_ignored():
    assert parse_smiles("  CCO\n").canonical_smiles == "CCO"


def test_oversized_input_is_refused_quickly():
    error = try_parse("C" * 5000)
    assert isinstance(error, InvalidSmiles) and "limit" in error.reason


def test_largest_fragment_drops_counter_ions():
    salt = Chem.MolFromSmiles("CC(=O)[O-].[Na+]")
    assert Chem.MolToSmiles(largest_fragment(salt)) == "CC(=O)[O-]"


@pytest.mark.parametrize("text", ["CCé", "C\x00C", "CC\u2028O", "c1ccccc1\x7f", "C" + "\udcff"])
def test_non_ascii_or_control_characters_are_refused_with_the_position(text):
    error = try_parse(text)
    assert isinstance(error, InvalidSmiles) and "not allowed in SMILES" in error.reason


def test_non_string_input_is_an_error_value():
    assert isinstance(try_parse(None), InvalidSmiles)  # type: ignore[arg-type]
