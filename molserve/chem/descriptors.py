"""Computed properties: exact values from RDKit, labelled `computed`, never `predicted`.

Each entry is a function of the molecule alone; nothing here was learned from data. Besides
single descriptors: medicinal-chemistry rules (Lipinski, Ghose, Veber, Egan, Muegge,
lead-likeness; value = violations, label pass/fail, details name each violation) and PAINS and
Brenk alerts with their matched atoms (`molserve.chem.rules`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from rdkit import Chem, rdBase
from rdkit.Chem import QED, Crippen, Descriptors
from rdkit.Chem import rdMolDescriptors as rdmd

from molserve.chem import rules
from molserve.chem.rules import Evaluation


@dataclass(frozen=True)
class ComputedProperty:
    name: str
    units: str
    description: str
    method: str
    # The molecule's value, or an `Evaluation` (value, label, details) for rules and alerts.
    fn: Callable[[Chem.Mol], Any]
    # Endpoints that report atoms are computed from the canonical SMILES the router returns, so
    # their atom indices follow that string (the parsed input's atom order can differ).
    from_smiles: Callable[[str], Evaluation] | None = None
    # False when the value is not a number (a list of alerts): no percentile, no reference values.
    numeric: bool = True


def structural_alerts(mol: Chem.Mol) -> list[dict[str, str]]:
    """PAINS and Brenk substructure alerts matched by the molecule (catalog and description).

    >>> [a["catalog"] for a in structural_alerts(Chem.MolFromSmiles("O=C1C=CC(=O)C=C1"))]
    ['PAINS_A', 'Brenk']
    """
    return [{"catalog": a["catalog"], "description": a["description"]} for a in rules.match_alerts(mol)]


def _alerts_answer(alerts: list[dict]) -> Evaluation:
    """`structural_alerts` keeps its value (catalog and description of each alert, as before
    the atoms were reported) and gives the alerts with their atoms in `details`."""
    return Evaluation([{"catalog": a["catalog"], "description": a["description"]} for a in alerts],
                      details={"alerts": alerts})


_PAINS = ("PAINS",)
_BRENK = ("Brenk",)


def _rule(rule: rules.Rule) -> ComputedProperty:
    tolerance = f"; passes with at most {rule.tolerance} violation" if rule.tolerance else ""
    return ComputedProperty(
        rule.name, "violations (count)",
        f"{rule.title}: number of violated criteria ({rule.limits}){tolerance}. The label says "
        "pass or fail; details name each violation with its value and limit.",
        f"{rule.title} as SwissADME states it (Daina et al. 2017); {rule.citation}", rule.evaluate)


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
                         "PAINS A/B/C and Brenk structural alerts matched by the molecule; details "
                         "give each alert's matched atoms (indices in the canonical SMILES).",
                         "FilterCatalog (PAINS, Brenk)",
                         lambda mol: _alerts_answer(rules.match_alerts(mol)),
                         lambda smiles: _alerts_answer(rules.alerts_of_smiles(smiles)), numeric=False),
        ComputedProperty("pains", "alerts (count)",
                         "PAINS A/B/C alerts (pan-assay interference) matched: their number, pass "
                         "when none; details give each alert with its matched atoms (indices in "
                         "the canonical SMILES).",
                         f"FilterCatalog (PAINS A, B, C); {rules.PAINS_CITATION}",
                         lambda mol: rules.alert_evaluation(rules.match_alerts(mol), _PAINS),
                         lambda smiles: rules.alert_evaluation(rules.alerts_of_smiles(smiles), _PAINS)),
        ComputedProperty("brenk", "alerts (count)",
                         "Brenk alerts (unwanted, reactive or toxic groups) matched: their number, "
                         "pass when none; details give each alert with its matched atoms (indices "
                         "in the canonical SMILES).",
                         f"FilterCatalog (Brenk); {rules.BRENK_CITATION}",
                         lambda mol: rules.alert_evaluation(rules.match_alerts(mol), _BRENK),
                         lambda smiles: rules.alert_evaluation(rules.alerts_of_smiles(smiles), _BRENK)),
        *(_rule(rule) for rule in rules.RULES.values()),
    )
}


def evaluate(name: str, mol: Chem.Mol, canonical_smiles: str | None = None) -> Evaluation:
    """The endpoint's value for a molecule, with its label and details (rules and alerts).
    Give `canonical_smiles` (the SMILES `mol` was read from, or its canonical form) to number
    reported atoms in that string's order."""
    prop = COMPUTED[name]
    if prop.from_smiles is not None and canonical_smiles is not None:
        result = prop.from_smiles(canonical_smiles)
    else:
        result = prop.fn(mol)
    if not isinstance(result, Evaluation):
        result = Evaluation(result)
    if isinstance(result.value, float):
        result = Evaluation(round(result.value, 4), result.label, result.details)
    return result


def compute(name: str, mol: Chem.Mol) -> Any:
    """The endpoint's value alone (see `evaluate` for labels and details)."""
    return evaluate(name, mol).value


def provenance(name: str) -> dict[str, Any]:
    return {"model_id": f"rdkit/{name}", "version": rdBase.rdkitVersion, "tier": "computed",
            "method": COMPUTED[name].method, "software": _RDKIT}
