"""2D depictions as SVG (RDKit's drawing code)."""

from __future__ import annotations

from functools import lru_cache

from rdkit import Chem
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


# Diverging colours for contributions: red raises the model's output, blue lowers it; white is 0.
_RAISES = (0.84, 0.19, 0.15)
_LOWERS = (0.13, 0.40, 0.67)


def _blend(colour: tuple[float, float, float], strength: float) -> tuple[float, float, float]:
    return tuple(1.0 - strength * (1.0 - c) for c in colour)  # type: ignore[return-value]


@lru_cache(maxsize=256)
def _prepared(smiles: str):
    """The molecule of a SMILES with its 2D layout (atoms in the SMILES' order; hydrogens drawn
    at stereocentres come after them), laid out once for every endpoint's drawing."""
    mol = Chem.MolFromSmiles(smiles)
    if mol is None:
        raise ValueError(f"cannot draw {smiles!r}")
    return rdMolDraw2D.PrepareMolForDrawing(mol), mol.GetNumAtoms()


def contribution_svg(smiles: str, contributions: list[float], width: int = 320,
                     height: int = 240) -> str:
    """An SVG drawing of a molecule with each atom shaded by its contribution (one number per
    atom of `smiles`, in its atom order): red for positive, blue for negative, the strongest
    atom at full colour, white for none.

    >>> contribution_svg("CCO", [0.1, 0.0, -0.2]).startswith("<?xml")
    True
    """
    mol, n_atoms = _prepared(smiles)
    if len(contributions) != n_atoms:
        raise ValueError(f"{len(contributions)} contributions for {n_atoms} atoms")
    largest = max((abs(c) for c in contributions), default=0.0)
    colours: dict[int, tuple[float, float, float]] = {}
    if largest > 0:
        for atom, value in enumerate(contributions):
            if value != 0:
                colours[atom] = _blend(_RAISES if value > 0 else _LOWERS, abs(value) / largest)
    drawer = rdMolDraw2D.MolDraw2DSVG(width, height)
    options = drawer.drawOptions()
    options.clearBackground = False
    options.addStereoAnnotation = True
    options.prepareMolsBeforeDrawing = False  # laid out once in `_prepared`
    # A copy: RDKit caches on a molecule while drawing it, and drawings run in several threads.
    drawer.DrawMolecule(Chem.Mol(mol), highlightAtoms=list(colours), highlightAtomColors=colours,
                        highlightBonds=[])
    drawer.FinishDrawing()
    return drawer.GetDrawingText()
