"""Computed properties: exact values from RDKit, labelled `computed`, never `predicted`.

Each entry is a function of the molecule alone; nothing here was learned from data.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from rdkit import Chem, rdBase
from rdkit.Chem import QED, Crippen, Descriptors
from rdkit.Chem import rdMolDescriptors as rdmd


@dataclass(frozen=True)
class ComputedProperty:
    name: str
    units: str
    description: str
    method: str
    fn: Callable[[Chem.Mol], Any]


_catalog = None
_catalog_lock = threading.Lock()


def _alert_catalog():
    """PAINS (A, B, C) and Brenk filters, built once (about 20 ms) on first use."""
    global _catalog
    if _catalog is None:
        with _catalog_lock:
            if _catalog is None:
                from rdkit.Chem.FilterCatalog import FilterCatalog, FilterCatalogParams

                params = FilterCatalogParams()
                params.AddCatalog(FilterCatalogParams.FilterCatalogs.PAINS)
                params.AddCatalog(FilterCatalogParams.FilterCatalogs.BRENK)
                _catalog = FilterCatalog(params)
    return _catalog


def structural_alerts(mol: Chem.Mol) -> list[dict[str, str]]:
    """PAINS and Brenk substructure alerts matched by the molecule.

    >>> [a["catalog"] for a in structural_alerts(Chem.MolFromSmiles("O=C1C=CC(=O)C=C1"))]
    ['PAINS_A', 'Brenk']
    """
    alerts = []
    for entry in _alert_catalog().GetMatches(mol):
        keys = list(entry.GetPropList())
        family = entry.GetProp("FilterSet") if "FilterSet" in keys else ""
        alerts.append({"catalog": family, "description": entry.GetDescription()})
    return alerts


_RDKIT = f"RDKit {rdBase.rdkitVersion}"

COMPUTED: dict[str, ComputedProperty] = {
    p.name: p
    for p in (
        ComputedProperty("logp_crippen", "log10(P octanol/water)",
                         "Wildman-Crippen atom-contribution logP.", "Crippen.MolLogP", Crippen.MolLogP),
        ComputedProperty("tpsa", "Angstrom^2", "Topological polar surface area (Ertl).",
                         "rdMolDescriptors.CalcTPSA", rdmd.CalcTPSA),
        ComputedProperty("molecular_weight", "g/mol", "Average molecular weight.",
                         "Descriptors.MolWt", Descriptors.MolWt),
        ComputedProperty("qed", "score in [0, 1]",
                         "Quantitative estimate of drug-likeness (Bickerton et al. 2012).",
                         "QED.qed", QED.qed),
        ComputedProperty("hbd", "count", "Hydrogen-bond donors (Lipinski definition).",
                         "rdMolDescriptors.CalcNumLipinskiHBD", rdmd.CalcNumLipinskiHBD),
        ComputedProperty("hba", "count", "Hydrogen-bond acceptors (Lipinski definition).",
                         "rdMolDescriptors.CalcNumLipinskiHBA", rdmd.CalcNumLipinskiHBA),
        ComputedProperty("rotatable_bonds", "count", "Rotatable bonds (strict definition).",
                         "rdMolDescriptors.CalcNumRotatableBonds", rdmd.CalcNumRotatableBonds),
        ComputedProperty("structural_alerts", "list of alerts",
                         "PAINS A/B/C and Brenk structural alerts matched by the molecule.",
                         "FilterCatalog (PAINS, Brenk)", structural_alerts),
    )
}


def compute(name: str, mol: Chem.Mol) -> Any:
    value = COMPUTED[name].fn(mol)
    return round(value, 4) if isinstance(value, float) else value


def provenance(name: str) -> dict[str, Any]:
    return {"model_id": f"rdkit/{name}", "version": rdBase.rdkitVersion, "tier": "computed",
            "method": COMPUTED[name].method, "software": _RDKIT}
