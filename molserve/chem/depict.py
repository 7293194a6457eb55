"""2D depictions as SVG (RDKit's drawing code)."""

from __future__ import annotations

import re
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
# Atom i is first drawn in a colour no depiction uses (#FE, then i coded in two bytes); each
# drawing then recolours the atoms' highlights, or leaves them out.
_ELLIPSE = re.compile(r"<ellipse [^>]*class='atom-(\d+)'[^>]*/>\n?")


def _blend(colour: tuple[float, float, float], strength: float) -> tuple[float, float, float]:
    return tuple(1.0 - strength * (1.0 - c) for c in colour)  # type: ignore[return-value]


def _hex(colour: tuple[float, float, float]) -> str:
    return "#" + "".join(f"{round(255 * c):02X}" for c in colour)


def _placeholder(atom: int) -> tuple[float, float, float]:
    return (0xFE / 255, (1 + atom // 250) / 255, (1 + atom % 250) / 255)


@lru_cache(maxsize=256)
def _template(smiles: str, width: int,
              height: int) -> tuple[int, tuple[str | tuple[int, str, str], ...]]:
    """A molecule drawn once with every atom highlighted in its placeholder colour, cut into
    fixed text and each atom's highlight (atom, its element, its placeholder): (atoms, parts).
    Laying the molecule out and drawing it is most of a depiction's cost; recolouring the
    highlights costs microseconds, so every endpoint's depiction of one molecule shares one
    drawing (and one geometry)."""
    mol = Chem.MolFromSmiles(smiles)
    if mol is None:
        raise ValueError(f"cannot draw {smiles!r}")
    n_atoms = mol.GetNumAtoms()
    drawer = rdMolDraw2D.MolDraw2DSVG(width, height)
    options = drawer.drawOptions()
    options.clearBackground = False
    options.addStereoAnnotation = True
    placeholders = {atom: _placeholder(atom) for atom in range(n_atoms)}
    rdMolDraw2D.PrepareAndDrawMolecule(drawer, mol, highlightAtoms=list(placeholders),
                                       highlightAtomColors=placeholders, highlightBonds=[])
    drawer.FinishDrawing()
    text = drawer.GetDrawingText()
    parts: list[str | tuple[int, str, str]] = []
    at = 0
    for match in _ELLIPSE.finditer(text):
        atom = int(match.group(1))
        placeholder = _hex(_placeholder(atom)) if atom < n_atoms else ""
        if not placeholder or placeholder not in match.group(0):
            raise ValueError(f"unexpected highlight in the drawing of {smiles!r}")
        parts += [text[at : match.start()], (atom, match.group(0), placeholder)]
        at = match.end()
    parts.append(text[at:])
    if len({p[0] for p in parts if isinstance(p, tuple)}) != n_atoms:
        raise ValueError(f"the drawing of {smiles!r} does not highlight every atom")
    return n_atoms, tuple(parts)


def contribution_svg(smiles: str, contributions: list[float], width: int = 320,
                     height: int = 240) -> str:
    """An SVG drawing of a molecule with each atom shaded by its contribution (one number per
    atom of `smiles`, in its atom order): red for positive, blue for negative, the strongest
    atom at full colour, atoms contributing nothing unshaded.

    >>> contribution_svg("CCO", [0.1, 0.0, -0.2]).startswith("<?xml")
    True
    """
    n_atoms, parts = _template(smiles, width, height)
    if len(contributions) != n_atoms:
        raise ValueError(f"{len(contributions)} contributions for {n_atoms} atoms")
    largest = max((abs(c) for c in contributions), default=0.0)
    out = []
    for part in parts:
        if isinstance(part, str):
            out.append(part)
            continue
        atom, highlight, placeholder = part
        value = contributions[atom]
        if value != 0 and largest > 0:
            colour = _blend(_RAISES if value > 0 else _LOWERS, abs(value) / largest)
            out.append(highlight.replace(placeholder, _hex(colour)))
    return "".join(out)
