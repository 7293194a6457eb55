"""2D depictions with atoms highlighted: the atoms an alert matched, or any the caller names.

Atom indices follow the order of the atoms in the SMILES as written: pass the canonical SMILES a
prediction returned (`canonical_smiles`) with the atoms its alerts report
(`details["alerts"][i]["atoms"]`), and the drawing marks those atoms and the bonds between them.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from functools import lru_cache

from rdkit.Chem.Draw import rdMolDraw2D

from molserve.chem.molecules import parse_smiles
from molserve.errors import InvalidInput

# A light orange, visible on the page's light and dark backgrounds alike.
HIGHLIGHT_RGB = (1.0, 0.6, 0.2)


def parse_atom_list(text: str) -> tuple[int, ...]:
    """`"3,1,2"` -> (1, 2, 3); a clear InvalidInput for anything else.

    >>> parse_atom_list("3, 1,2")
    (1, 2, 3)
    """
    atoms = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        if not part.isdigit():
            raise InvalidInput(f"highlight must be atom indices separated by commas (e.g. 0,1,2); "
                               f"{part[:20]!r} is not an index", code="invalid_highlight")
        atoms.append(int(part))
    return tuple(sorted(set(atoms)))


# `highlight=` words and the alert catalogs whose atoms they mark.
NAMED = {"alerts": ("PAINS", "Brenk"), "pains": ("PAINS",), "brenk": ("Brenk",)}


def parse_highlight(text: str) -> tuple[int, ...] | str:
    """A depiction's `highlight`: atom indices, or one of the words in `NAMED`."""
    word = text.strip().lower()
    return word if word in NAMED else parse_atom_list(text)


def svg_highlighting(smiles: str, highlight: tuple[int, ...] | str, width: int = 240,
                     height: int = 180) -> str:
    """The drawing with the given atoms, or the atoms of the named alerts, highlighted."""
    atoms = alert_atoms(smiles, NAMED[highlight]) if isinstance(highlight, str) else highlight
    return highlighted_svg(smiles, atoms, width, height)


def highlighted_svg(smiles: str, atoms: Iterable[int], width: int = 240, height: int = 180) -> str:
    """An SVG drawing of the molecule with `atoms` (indices in the SMILES' atom order) and the
    bonds between them highlighted. Raises InvalidSmiles for an unreadable SMILES, InvalidInput
    for an index the molecule does not have."""
    return _draw(smiles, tuple(sorted(set(atoms))), width, height)


def alert_atoms(smiles: str, catalogs: Sequence[str] = ("PAINS", "Brenk")) -> tuple[int, ...]:
    """Every atom a PAINS or Brenk alert matched (or those of the catalogs named), numbered in
    the order of the given SMILES."""
    from molserve.chem.rules import match_alerts

    mol = parse_smiles(smiles).mol
    return tuple(sorted({i for alert in match_alerts(mol) if alert["catalog"].startswith(tuple(catalogs))
                         for i in alert["atoms"]}))


@lru_cache(maxsize=1024)
def _draw(smiles: str, atoms: tuple[int, ...], width: int, height: int) -> str:
    mol = parse_smiles(smiles).mol
    outside = [i for i in atoms if i >= mol.GetNumAtoms()]
    if outside:
        raise InvalidInput(
            f"atom index {outside[0]} is out of range: {smiles} has {mol.GetNumAtoms()} atoms "
            f"(indices 0-{mol.GetNumAtoms() - 1})", code="invalid_highlight")
    chosen = set(atoms)
    bonds = [b.GetIdx() for b in mol.GetBonds()
             if b.GetBeginAtomIdx() in chosen and b.GetEndAtomIdx() in chosen]
    drawer = rdMolDraw2D.MolDraw2DSVG(width, height)
    options = drawer.drawOptions()
    options.clearBackground = False
    options.addStereoAnnotation = True
    rdMolDraw2D.PrepareAndDrawMolecule(
        drawer, mol, highlightAtoms=list(atoms), highlightBonds=bonds,
        highlightAtomColors={i: HIGHLIGHT_RGB for i in atoms},
        highlightBondColors={i: HIGHLIGHT_RGB for i in bonds})
    drawer.FinishDrawing()
    return drawer.GetDrawingText()
