"""Train/validation/test splits: random and Bemis-Murcko scaffold.

A split is a list of three index lists, stored with every model so its metrics can be
reproduced.
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Sequence

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
    rng = random.Random(seed)
    rng.shuffle(big)
    rng.shuffle(small)
    train: list[int] = []
    valid: list[int] = []
    test: list[int] = []
    for group in big + small:
        if len(train) + len(group) <= n_train:
            train.extend(group)
        elif len(valid) + len(group) <= n_valid:
            valid.extend(group)
        else:
            test.extend(group)
    return {"train": sorted(train), "valid": sorted(valid), "test": sorted(test)}
