"""A labelled molecular dataset, and readers for CSV/TSV and SDF files."""

from __future__ import annotations

import csv
import hashlib
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from rdkit import Chem

TASKS = ("regression", "classification")


@dataclass
class Dataset:
    """Molecules (as given) and one label each, with what a manifest must say about them."""

    name: str
    smiles: list[str]
    labels: list[float]
    task: str
    units: str
    description: str
    source: str
    licence: str
    checksum: str  # sha256 of the source file(s) the rows were read from
    label_names: tuple[str, str] | None = None  # classification: (negative, positive)
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, not {self.task!r}")
        if len(self.smiles) != len(self.labels):
            raise ValueError("smiles and labels differ in length")

    def __len__(self) -> int:
        return len(self.smiles)

    def joined(self, other: Dataset) -> Dataset:
        """These rows then `other`'s, as one dataset (a benchmark's train_val and test files,
        for a production model that learns from every labelled row)."""
        import hashlib

        if other.task != self.task:
            raise ValueError(f"cannot join a {self.task} dataset with a {other.task} one")
        checksum = hashlib.sha256(f"{self.checksum}+{other.checksum}".encode()).hexdigest()
        return Dataset(self.name, [*self.smiles, *other.smiles], [*self.labels, *other.labels],
                       self.task, self.units, self.description,
                       f"{self.source} + {other.source}", self.licence, checksum,
                       self.label_names, {**self.extra, "joined_rows": [len(self), len(other)]})

    def describe(self) -> dict:
        return {
            "name": self.name,
            "rows": len(self),
            "task": self.task,
            "units": self.units,
            "description": self.description,
            "source": self.source,
            "licence": self.licence,
            "sha256": self.checksum,
            "label_names": list(self.label_names) if self.label_names else None,
            **self.extra,
        }


def sha256_of(*paths: Path) -> str:
    digest = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


_TRUE = {"true", "yes", "active", "+", "pos", "positive"}
_FALSE = {"false", "no", "inactive", "-", "neg", "negative"}


def _as_number(text: str) -> float | None:
    try:
        number = float(text)
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def parse_label(value: str, task: str, positive: str | None = None) -> float | None:
    """A float label, or None when the cell is empty (or, for regression, not a number).

    Classification labels may be 0/1 in any numeric spelling (`1`, `1.0`, `1e0`), true/false,
    yes/no, active/inactive, or `positive` against anything else (`positive="1"` also matches
    `1.0`). A classification label that is none of these raises ValueError, because guessing its
    class would be wrong.

    >>> parse_label("1.0", "classification", positive="1")
    1.0
    >>> parse_label("0.0", "classification")
    0.0
    """
    text = (value or "").strip()
    if not text:
        return None
    if task == "classification":
        number = _as_number(text)
        if positive is not None:
            wanted = _as_number(positive.strip())
            if number is not None and wanted is not None:
                return 1.0 if number == wanted else 0.0
            return 1.0 if text.lower() == positive.strip().lower() else 0.0
        if number is not None and number in (0.0, 1.0):
            return number
        lowered = text.lower()
        if lowered in _TRUE:
            return 1.0
        if lowered in _FALSE:
            return 0.0
        raise ValueError(
            f"classification label {text!r} is ambiguous: expected 0/1, true/false, yes/no or "
            "active/inactive; name the positive class with --positive-label (every other value "
            "is then negative)")
    return _as_number(text)


# Python's csv module refuses a field over 131,072 characters by raising in the middle of a file.
# A table row is read as one line in any case, so a longer field (a pasted polymer, garbage in one
# cell) is read like any other and refused later as that row's own problem (an unreadable or too
# long SMILES), while the other rows are answered.
CSV_FIELD_LIMIT = 1 << 30


def allow_long_csv_fields() -> None:
    if csv.field_size_limit() < CSV_FIELD_LIMIT:
        csv.field_size_limit(CSV_FIELD_LIMIT)


def iter_table(path: Path) -> Iterator[dict[str, str]]:
    """Rows of a CSV or TSV file as dicts (the delimiter is sniffed from the header)."""
    allow_long_csv_fields()
    with open(path, newline="", encoding="utf-8-sig") as handle:
        header = handle.readline()
        delimiter = "\t" if header.count("\t") > header.count(",") else ","
        handle.seek(0)
        yield from csv.DictReader(handle, delimiter=delimiter)


def iter_sdf(path: Path) -> Iterator[dict[str, str]]:
    """Records of an SDF file as dicts of their properties plus `smiles` (or `_error`)."""
    supplier = Chem.SDMolSupplier(str(path), sanitize=True, removeHs=True)
    for index, mol in enumerate(supplier):
        if mol is None:
            yield {"_error": f"record {index + 1} could not be read", "smiles": ""}
            continue
        record = {key: str(value) for key, value in mol.GetPropsAsDict().items()}
        record["smiles"] = Chem.MolToSmiles(mol)
        yield record


def read_rows(path: Path) -> Iterator[dict[str, str]]:
    suffix = path.suffix.lower()
    if suffix in {".sdf", ".sd"}:
        return iter_sdf(path)
    if suffix in {".csv", ".tsv", ".txt"}:
        return iter_table(path)
    raise ValueError(f"unsupported file type {suffix!r}: use .csv, .tsv or .sdf")


def load_table(
    path: str | Path,
    *,
    smiles_col: str,
    label_col: str,
    task: str,
    name: str | None = None,
    units: str = "",
    description: str = "",
    positive_label: str | None = None,
    licence: str = "user-supplied",
) -> Dataset:
    """A Dataset from a user's CSV/TSV/SDF file; rows with no usable label are skipped."""
    path = Path(path)
    smiles: list[str] = []
    labels: list[float] = []
    skipped = 0
    first = True
    for number, row in enumerate(read_rows(path), start=1):
        if first:
            for column in (smiles_col, label_col):
                if column not in row and not (column == smiles_col and "smiles" in row):
                    raise ValueError(
                        f"column {column!r} not found in {path.name}; columns: {sorted(row)}"
                    )
            first = False
        text = row.get(smiles_col) or row.get("smiles") or ""
        try:
            label = parse_label(row.get(label_col, ""), task, positive_label)
        except ValueError as error:
            raise ValueError(f"{path.name}, data row {number}, column {label_col!r}: {error}") from None
        if not text or label is None:
            skipped += 1
            continue
        smiles.append(text)
        labels.append(label)
    if not smiles:
        raise ValueError(f"no rows with both a SMILES and a usable label in {path.name}")
    return Dataset(
        name=name or path.stem,
        smiles=smiles,
        labels=labels,
        task=task,
        units=units,
        description=description or f"user dataset {path.name}",
        source=str(path.resolve()),
        licence=licence,
        checksum=sha256_of(path),
        extra={"rows_without_label": skipped},
    )
