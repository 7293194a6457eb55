"""2D depictions as SVG (RDKit's drawing code)."""

from __future__ import annotations

from functools import lru_cache

from rdkit.Chem.Draw import rdMolDraw2D

from molserve.chem.molecules import parse_smiles


@lru_cache(maxsize=2048)
def svg(smiles: str, width: int = 240, height: int = 180) -> str:
    """An SVG drawing of a molecule; raises InvalidSmiles for an unreadable SMILES."""
    mol = parse_smiles(smiles).mol
    drawer = rdMolDraw2D.MolDraw2DSVG(width, height)
    options = drawer.drawOptions()
    options.clearBackground = False
    options.addStereoAnnotation = True
    rdMolDraw2D.PrepareAndDrawMolecule(drawer, mol)
    drawer.FinishDrawing()
    return drawer.GetDrawingText()
