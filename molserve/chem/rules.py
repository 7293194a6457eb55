"""Medicinal-chemistry rules (drug-likeness and lead-likeness filters) and structural alerts
with the atoms they matched.

Each rule is a list of criteria on computed properties; a molecule's evaluation is the number
of criteria it violates, "pass" or "fail" by the rule's own tolerance (only Lipinski's allows
one violation), and each violation named: the property, its value and the limit it broke.

The rules are the ones SwissADME reports (Daina A, Michielin O, Zoete V. SwissADME: a free web
tool to evaluate pharmacokinetics, drug-likeness and medicinal chemistry friendliness of small
molecules. Sci Rep 2017;7:42717. doi:10.1038/srep42717), with its limits. SwissADME computes
some properties with programs RDKit does not have; the substitutes are stated, rule by rule:

- logP: SwissADME uses MLOGP (Lipinski), WLOGP (Ghose, Egan) and XLOGP3 (Muegge,
  lead-likeness). WLOGP is the Wildman-Crippen method, RDKit's `Crippen.MolLogP`, used here
  everywhere. Lipinski's limit is his own (Crippen-type logP <= 5) rather than SwissADME's
  MLOGP <= 4.15, which belongs to the Moriguchi scale.
- TPSA: Ertl's fragment method counting polar sulfur and phosphorus, as SwissADME does
  (`tpsa_incl_s_p`; the `tpsa` endpoint counts N and O only, as Ertl's paper does).
- Rotatable bonds: RDKit's strict definition (the `rotatable_bonds` endpoint).
"""

from __future__ import annotations

import operator
import threading
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from rdkit import Chem
from rdkit.Chem import Crippen, Descriptors
from rdkit.Chem import rdMolDescriptors as rdmd


@dataclass(frozen=True, slots=True)
class Evaluation:
    """What a computed endpoint found for one molecule: the value, and for rules and alerts a
    label ("pass"/"fail") and details (the violations or the alerts with their atoms)."""

    value: Any
    label: str | None = None
    details: dict[str, Any] | None = None


# Properties the rules read, by the name a violation reports.
def _carbons(mol: Chem.Mol) -> int:
    """Heavy atoms that are not heteroatoms (RDKit's C++ counts; a Python loop over the atoms
    costs several times more)."""
    return rdmd.CalcNumHeavyAtoms(mol) - rdmd.CalcNumHeteroatoms(mol)


PROPERTIES: dict[str, Callable[[Chem.Mol], float | int]] = {
    "molecular_weight": Descriptors.MolWt,
    "logp_crippen": Crippen.MolLogP,
    "molar_refractivity": Crippen.MolMR,
    "n_or_o": rdmd.CalcNumLipinskiHBA,  # Lipinski's acceptors: N and O atoms
    "nh_or_oh": rdmd.CalcNumLipinskiHBD,  # Lipinski's donors: N-H and O-H
    "hba": rdmd.CalcNumHBA,
    "hbd": rdmd.CalcNumHBD,
    "tpsa_incl_s_p": lambda mol: rdmd.CalcTPSA(mol, includeSandP=True),
    "rotatable_bonds": rdmd.CalcNumRotatableBonds,
    "atoms": rdmd.CalcNumAtoms,  # every atom, hydrogens included (Ghose counts them all)
    "rings": rdmd.CalcNumRings,
    "carbons": _carbons,
    "heteroatoms": rdmd.CalcNumHeteroatoms,
}

_OPERATORS = {"<=": operator.le, ">=": operator.ge, ">": operator.gt, "<": operator.lt}


@dataclass(frozen=True, slots=True)
class Criterion:
    property: str
    op: str
    limit: float

    def holds(self, value: float) -> bool:
        return _OPERATORS[self.op](value, self.limit)

    @property
    def shown(self) -> str:
        limit = int(self.limit) if float(self.limit).is_integer() else self.limit
        return f"{self.op} {limit}"


@dataclass(frozen=True, slots=True)
class Rule:
    name: str
    title: str
    citation: str
    criteria: tuple[Criterion, ...]
    tolerance: int = 0  # violations a passing molecule may have

    def evaluate(self, mol: Chem.Mol) -> Evaluation:
        """Violations named with value and limit; `value` is their number.

        >>> LIPINSKI.evaluate(Chem.MolFromSmiles("CC(=O)Oc1ccccc1C(=O)O")).label
        'pass'
        """
        values: dict[str, float | int] = {}
        violations = []
        for criterion in self.criteria:
            if criterion.property not in values:
                values[criterion.property] = PROPERTIES[criterion.property](mol)
            value = values[criterion.property]
            if not criterion.holds(value):
                shown = round(value, 4) if isinstance(value, float) else value
                violations.append({"property": criterion.property, "value": shown,
                                   "limit": criterion.shown})
        label = "pass" if len(violations) <= self.tolerance else "fail"
        return Evaluation(len(violations), label,
                          {"violations": violations, "allowed_violations": self.tolerance})

    @property
    def limits(self) -> str:
        """The criteria in one line, e.g. `molecular_weight <= 500, logp_crippen <= 5`."""
        return ", ".join(f"{c.property} {c.shown}" for c in self.criteria)


def _between(name: str, low: float, high: float) -> tuple[Criterion, Criterion]:
    return Criterion(name, ">=", low), Criterion(name, "<=", high)


LIPINSKI = Rule(
    "lipinski", "Lipinski rule of five (Pfizer)",
    "Lipinski CA, Lombardo F, Dominy BW, Feeney PJ. Experimental and computational approaches to "
    "estimate solubility and permeability in drug discovery and development settings. Adv Drug "
    "Deliv Rev 1997;23:3-25 (repr. 2001;46:3-26). doi:10.1016/S0169-409X(00)00129-0",
    (Criterion("molecular_weight", "<=", 500), Criterion("logp_crippen", "<=", 5),
     Criterion("n_or_o", "<=", 10), Criterion("nh_or_oh", "<=", 5)),
    tolerance=1)
GHOSE = Rule(
    "ghose", "Ghose filter (Amgen)",
    "Ghose AK, Viswanadhan VN, Wendoloski JJ. A knowledge-based approach in designing "
    "combinatorial or medicinal chemistry libraries for drug discovery. J Comb Chem 1999;1:55-68. "
    "doi:10.1021/cc9800071",
    (*_between("molecular_weight", 160, 480), *_between("logp_crippen", -0.4, 5.6),
     *_between("molar_refractivity", 40, 130), *_between("atoms", 20, 70)))
VEBER = Rule(
    "veber", "Veber rules (GSK)",
    "Veber DF, Johnson SR, Cheng HY, Smith BR, Ward KW, Kopple KD. Molecular properties that "
    "influence the oral bioavailability of drug candidates. J Med Chem 2002;45:2615-2623. "
    "doi:10.1021/jm020017n",
    (Criterion("rotatable_bonds", "<=", 10), Criterion("tpsa_incl_s_p", "<=", 140)))
EGAN = Rule(
    "egan", "Egan filter (Pharmacia)",
    "Egan WJ, Merz KM, Baldwin JJ. Prediction of drug absorption using multivariate statistics. "
    "J Med Chem 2000;43:3867-3877. doi:10.1021/jm000292e",
    (Criterion("logp_crippen", "<=", 5.88), Criterion("tpsa_incl_s_p", "<=", 131.6)))
MUEGGE = Rule(
    "muegge", "Muegge filter (Bayer)",
    "Muegge I, Heald SL, Brittelli D. Simple selection criteria for drug-like chemical matter. "
    "J Med Chem 2001;44:1841-1846. doi:10.1021/jm015507e",
    (*_between("molecular_weight", 200, 600), *_between("logp_crippen", -2, 5),
     Criterion("tpsa_incl_s_p", "<=", 150), Criterion("rings", "<=", 7),
     Criterion("carbons", ">", 4), Criterion("heteroatoms", ">", 1),
     Criterion("rotatable_bonds", "<=", 15), Criterion("hba", "<=", 10),
     Criterion("hbd", "<=", 5)))
LEAD_LIKENESS = Rule(
    "lead_likeness", "Lead-likeness (Teague)",
    "Teague SJ, Davis AM, Leeson PD, Oprea T. The design of leadlike combinatorial libraries. "
    "Angew Chem Int Ed 1999;38:3743-3748. doi:10.1002/(SICI)1521-3773(19991216)38:24<3743::AID-"
    "ANIE3743>3.0.CO;2-U",
    (*_between("molecular_weight", 250, 350), Criterion("logp_crippen", "<=", 3.5),
     Criterion("rotatable_bonds", "<=", 7)))

RULES: dict[str, Rule] = {r.name: r for r in (LIPINSKI, GHOSE, VEBER, EGAN, MUEGGE, LEAD_LIKENESS)}


# Structural alerts ----------------------------------------------------------------------------
PAINS_CITATION = ("Baell JB, Holloway GA. New substructure filters for removal of pan assay "
                  "interference compounds (PAINS) from screening libraries and for their exclusion "
                  "in bioassays. J Med Chem 2010;53:2719-2740. doi:10.1021/jm901137j")
BRENK_CITATION = ("Brenk R, Schipani A, James D, et al. Lessons learnt from assembling screening "
                  "libraries for drug discovery for neglected diseases. ChemMedChem 2008;3:435-444. "
                  "doi:10.1002/cmdc.200700139")

_catalog = None
_catalog_lock = threading.Lock()


def alert_catalog():
    """PAINS (A, B, C) and Brenk filters, built once (about 20 ms, 11 MB) on first use."""
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


def match_alerts(mol: Chem.Mol) -> list[dict[str, Any]]:
    """Every PAINS and Brenk filter the molecule matches: catalog (`PAINS_A`, `PAINS_B`,
    `PAINS_C` or `Brenk`), description and the matched atoms (indices into `mol`, sorted; the
    filter's first match, as RDKit's catalog reports one per filter).

    >>> [(a["catalog"], a["atoms"]) for a in match_alerts(Chem.MolFromSmiles("CCc1ccccc1O"))]
    []
    """
    alerts = []
    for entry in alert_catalog().GetMatches(mol):
        family = entry.GetProp("FilterSet") if "FilterSet" in entry.GetPropList() else ""
        atoms = sorted({pair[1] for match in entry.GetFilterMatches(mol) for pair in match.atomPairs})
        alerts.append({"catalog": family, "description": entry.GetDescription(), "atoms": atoms})
    return alerts


@lru_cache(maxsize=4096)
def _alerts_of_smiles(smiles: str) -> tuple[tuple[str, str, tuple[int, ...]], ...]:
    mol = Chem.MolFromSmiles(smiles)
    if mol is None:
        raise ValueError(f"RDKit could not read {smiles!r}")
    return tuple((a["catalog"], a["description"], tuple(a["atoms"])) for a in match_alerts(mol))


def alerts_of_smiles(smiles: str) -> list[dict[str, Any]]:
    """`match_alerts` of the molecule a SMILES writes, atoms numbered in that SMILES' order
    (the order of the atoms as they appear in the string). Cached by SMILES: the PAINS, Brenk
    and structural-alert endpoints of one molecule share one match."""
    return [{"catalog": catalog, "description": description, "atoms": list(atoms)}
            for catalog, description, atoms in _alerts_of_smiles(smiles)]


def alert_evaluation(alerts: list[dict[str, Any]], families: tuple[str, ...]) -> Evaluation:
    """The alerts of the given catalogs: their number, "pass" when none, and the alerts."""
    kept = [a for a in alerts if a["catalog"].startswith(families)]
    return Evaluation(len(kept), "fail" if kept else "pass", {"alerts": kept})
