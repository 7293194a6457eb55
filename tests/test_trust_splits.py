"""The time split holds out only dated rows: a row of unknown year is trained on, and counted."""

import csv
import doctest

from molserve.data import splits
from molserve.data.store import DatasetStore


def _rows(n=60):
    smiles = ["C" * (1 + i % 12) + "O" * (i // 12) for i in range(n)]
    rows = []
    for i, text in enumerate(smiles):
        # Every seventh row has no year; the rest span 2000-2019.
        year = None if i % 7 == 3 else 2000 + (i * 13) % 20
        rows.append({"canonical_smiles": text, "label": float(i), "year": year})
    return rows


def test_rows_without_a_year_are_never_held_out_and_are_counted(tmp_path):
    rows = _rows()
    artifact = DatasetStore(tmp_path).save("timed", rows, task="regression", units="u",
                                           description="d", source="s", licence="l", curation={})
    with open(artifact.file("data.csv"), newline="") as handle:
        stored = list(csv.DictReader(handle))
    undated = [r for r in stored if not r["year"]]
    assert len(undated) == 9
    assert {r["split_time"] for r in undated} == {"train"}
    held_out = [r for r in stored if r["split_time"] in ("valid", "test")]
    trained = [r for r in stored if r["split_time"] == "train" and r["year"]]
    # Held-out rows are the newest: every test year >= every valid year >= every dated train year.
    test_years = [int(r["year"]) for r in held_out if r["split_time"] == "test"]
    valid_years = [int(r["year"]) for r in held_out if r["split_time"] == "valid"]
    assert len(test_years) == 6 and len(valid_years) == 6
    assert min(test_years) >= max(valid_years) >= max(int(r["year"]) for r in trained)
    assert artifact.manifest["time_split"]["rows_without_year"] == 9


def test_the_time_split_docstring_example_holds():
    assert doctest.testmod(splits).failed == 0
