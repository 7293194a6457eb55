"""Structure standardization for curated datasets (RDKit MolStandardize)."""

from __future__ import annotations

from functools import lru_cache

from rdkit import Chem
from rdkit.Chem.MolStandardize import rdMolStandardize


@lru_cache(maxsize=1)
def _tools():
    return (rdMolStandardize.LargestFragmentChooser(preferOrganic=True), rdMolStandardize.Uncharger(),
            rdMolStandardize.TautomerEnumerator())


def standardize(mol: Chem.Mol, canonical_tautomer: bool = False) -> Chem.Mol:
    """Parent structure: cleanup, largest organic fragment, neutralized, optionally the
    canonical tautomer.

    >>> Chem.MolToSmiles(standardize(Chem.MolFromSmiles("CC(=O)[O-].[Na+]")))
    'CC(=O)O'
    """
    chooser, uncharger, tautomers = _tools()
    clean = rdMolStandardize.Cleanup(mol)
    parent = uncharger.uncharge(chooser.choose(clean))
    if canonical_tautomer:
        parent = tautomers.Canonicalize(parent)
    Chem.SanitizeMol(parent)
    return parent
