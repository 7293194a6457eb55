"""Turn raw rows into model-ready molecules: parse, keep the parent fragment, canonicalize,
merge duplicates. Every step reports counts, so a user sees what was dropped and why.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field

import numpy as np
from rdkit import Chem

from molserve.chem.molecules import InvalidSmiles, largest_fragment, parse_smiles
from molserve.data.dataset import Dataset


@dataclass
class CuratedData:
    canonical_smiles: list[str]
    mols: list[Chem.Mol]
    labels: np.ndarray
    report: dict = field(default_factory=dict)
    rows: list[list[int]] = field(default_factory=list)  # input rows merged into each molecule


def curate(dataset: Dataset, noisy_spread: float = 1.0, standardize_structures: bool = False,
           canonical_tautomer: bool = False) -> CuratedData:
    """Parse, strip counter-ions, canonicalize and merge duplicates (median label).

    Regression duplicates whose labels span more than `noisy_spread` units are counted as
    noisy; classification duplicates that disagree are dropped (no majority is invented).
    """
    reasons: Counter[str] = Counter()
    grouped: dict[str, list[float]] = defaultdict(list)
    rows_of: dict[str, list[int]] = defaultdict(list)
    mol_of: dict[str, Chem.Mol] = {}
    for row, (smiles, label) in enumerate(zip(dataset.smiles, dataset.labels, strict=True)):
        try:
            parsed = parse_smiles(smiles)
        except InvalidSmiles as error:
            reasons[error.reason.split(" (")[0][:80]] += 1
            continue
        if standardize_structures:
            from molserve.data.standardize import standardize

            try:
                parent = standardize(parsed.mol, canonical_tautomer)
            except (ValueError, RuntimeError) as error:
                reasons[f"standardization failed: {str(error)[:60]}"] += 1
                continue
        else:
            parent = largest_fragment(parsed.mol)
        key = parsed.canonical_smiles if parent is parsed.mol else Chem.MolToSmiles(parent)
        grouped[key].append(float(label))
        rows_of[key].append(row)
        mol_of.setdefault(key, parent)
    keys: list[str] = []
    labels: list[float] = []
    noisy = 0
    conflicting = 0
    for key, values in grouped.items():
        if dataset.task == "classification":
            if len(set(values)) > 1:
                conflicting += 1
                continue
            labels.append(values[0])
        else:
            if max(values) - min(values) > noisy_spread:
                noisy += 1
            labels.append(float(np.median(values)))
        keys.append(key)
    report = {
        "rows_in": len(dataset),
        "unparsable": int(sum(reasons.values())),
        "unparsable_reasons": dict(reasons.most_common(10)),
        "duplicates_merged": len(dataset) - sum(reasons.values()) - len(grouped),
        "noisy_duplicate_groups": noisy,
        "conflicting_class_groups_dropped": conflicting,
        "rows_out": len(keys),
    }
    return CuratedData(keys, [mol_of[k] for k in keys], np.asarray(labels, dtype=np.float64), report,
                       [rows_of[k] for k in keys])
