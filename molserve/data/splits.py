"""Train/validation/test splits: random, Bemis-Murcko scaffold, and by time.

A split is a list of three index lists, stored with every model so its metrics can be
reproduced.
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

from rdkit import Chem
from rdkit.Chem.Scaffolds import MurckoScaffold

Split = dict[str, list[int]]


def murcko_scaffold(mol: Chem.Mol) -> str:
    """Canonical SMILES of the Bemis-Murcko scaffold ('' for acyclic molecules).

    >>> murcko_scaffold(Chem.MolFromSmiles("CCc1ccccc1"))
    'c1ccccc1'
    """
    try:
        return MurckoScaffold.MurckoScaffoldSmiles(mol=mol, includeChirality=False)
    except Exception:  # RDKit raises on a few exotic valences; treat as its own group
        return Chem.MolToSmiles(mol)


def random_split(n: int, sizes: Sequence[float] = (0.8, 0.1, 0.1), seed: int = 0) -> Split:
    order = list(range(n))
    random.Random(seed).shuffle(order)
    n_train = round(sizes[0] * n)
    n_valid = round(sizes[1] * n)
    return {
        "train": sorted(order[:n_train]),
        "valid": sorted(order[n_train : n_train + n_valid]),
        "test": sorted(order[n_train + n_valid :]),
    }


def scaffold_split(
    mols: Sequence[Chem.Mol], sizes: Sequence[float] = (0.8, 0.1, 0.1), seed: int = 0
) -> Split:
    """Whole scaffold groups go to one side, so test molecules have scaffolds never trained on.

    Groups bigger than half the test size go to training first (as in chemprop's balanced
    scaffold split); the rest are shuffled with `seed` and fill validation and test.
    """
    groups: dict[str, list[int]] = defaultdict(list)
    for index, mol in enumerate(mols):
        groups[murcko_scaffold(mol)].append(index)
    n = len(mols)
    n_train = sizes[0] * n
    n_valid = sizes[1] * n
    big = [g for g in groups.values() if len(g) > sizes[2] * n / 2]
    small = [g for g in groups.values() if len(g) <= sizes[2] * n / 2]
    return _fill(big, small, seed, n_train, n_valid, overflow="test")


def _fill(big: list, small: list, seed: int, n_train: float, n_valid: float, overflow: str) -> Split:
    """Shuffle the big groups, then the small ones, with `seed`; each group goes to train while
    it fits, else to valid while it fits, else to `overflow` ("valid" or "test")."""
    rng = random.Random(seed)
    rng.shuffle(big)
    rng.shuffle(small)
    sides: Split = {"train": [], "valid": [], "test": []}
    for group in big + small:
        if len(sides["train"]) + len(group) <= n_train:
            sides["train"].extend(group)
        elif len(sides["valid"]) + len(group) <= n_valid:
            sides["valid"].extend(group)
        else:
            sides[overflow].extend(group)
    return {side: sorted(indices) for side, indices in sides.items()}


def tdc_scaffold_split(smiles: Sequence[str], seed: int,
                       fractions: Sequence[float] = (0.875, 0.125, 0.0)) -> Split:
    """TDC's scaffold split (PyTDC `create_scaffold_split`), reproduced exactly.

    This is the split the TDC ADMET benchmark group uses for model selection
    (`get_train_valid_split(seed, name)`: `train_val` into 87.5% train and 12.5% valid, seeds
    1-5). Groups are Bemis-Murcko scaffolds of the SMILES as given (non-isomeric), in order of
    first appearance; rows RDKit cannot parse are left out of every side. Big groups (more than
    half the valid or test size) are shuffled, then small ones, with `random.Random(seed)`, and
    filled greedily: a group goes to train while it fits, else to valid (else to test when a
    test fraction is given). Indices are positions in `smiles`.
    """
    groups: dict[str, set[int]] = defaultdict(set)
    unparsable = 0
    for index, text in enumerate(smiles):
        mol = Chem.MolFromSmiles(text)
        if mol is None:
            unparsable += 1
            continue
        groups[MurckoScaffold.MurckoScaffoldSmiles(mol=mol, includeChirality=False)].add(index)
    n = len(smiles) - unparsable
    train_size = int(n * fractions[0])
    valid_size = int(n * fractions[1])
    test_size = n - train_size - valid_size
    big, small = [], []
    for group in groups.values():
        (big if len(group) > valid_size / 2 or len(group) > test_size / 2 else small).append(group)
    return _fill(big, small, seed, train_size, valid_size,
                 overflow="valid" if fractions[2] == 0 else "test")


@dataclass(frozen=True)
class TimeSplit:
    """Sides by year, and how many rows had no year (all of them trained on)."""

    labels: list[str]  # "train", "valid" or "test" per row
    unknown_year: int

    def report(self) -> dict:
        return {"method": "time: the newest dated rows are held out",
                "rows_without_year": self.unknown_year,
                "rows_without_year_placed": "train (a row of unknown date cannot be shown to be "
                                            "newer than the training data)"}


def time_split(years: Sequence[int | None], sizes: Sequence[float] = (0.8, 0.1, 0.1)) -> TimeSplit | None:
    """The newest dated rows are the test set (`sizes[2]` of all rows), the next newest the
    validation set (`sizes[1]`), the rest train; rows without a year are trained on, never held
    out, and counted. None unless most rows (80%) have a year, from at least three years.

    >>> time_split([2001, None, 2003, 2002, 2004, 2005, 2006, 2007, 2008, 2009], (0.6, 0.2, 0.2)).labels
    ['train', 'train', 'train', 'train', 'train', 'train', 'valid', 'valid', 'test', 'test']
    """
    n = len(years)
    known = [i for i, y in enumerate(years) if y is not None]
    if len(known) < 0.8 * n or len({years[i] for i in known}) < 3:
        return None
    newest_first = sorted(known, key=lambda i: (years[i], i), reverse=True)
    n_test, n_valid = round(sizes[2] * n), round(sizes[1] * n)
    labels = ["train"] * n
    for rank, i in enumerate(newest_first[: n_test + n_valid]):
        labels[i] = "test" if rank < n_test else "valid"
    return TimeSplit(labels, n - len(known))


def scaffold_folds(mols: Sequence[Chem.Mol], k: int, seed: int = 0) -> list[list[int]]:
    """`k` folds of about equal size, each made of whole Bemis-Murcko scaffold groups.

    Groups are shuffled with `seed` and each goes to the fold that is smallest so far, so every
    molecule is held out by exactly one fold and no scaffold is split between folds.
    """
    groups: dict[str, list[int]] = defaultdict(list)
    for index, mol in enumerate(mols):
        groups[murcko_scaffold(mol)].append(index)
    ordered = list(groups.values())
    rng = random.Random(seed)
    rng.shuffle(ordered)
    ordered.sort(key=len, reverse=True)  # big groups first (stable: the shuffle breaks ties)
    folds: list[list[int]] = [[] for _ in range(k)]
    for group in ordered:
        min(folds, key=len).extend(group)
    return [sorted(f) for f in folds]
