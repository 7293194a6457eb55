"""Feature vectors for the fast tier: Morgan count fingerprints plus cheap RDKit descriptors.

A `FeatureSpec` is stored in every model manifest, so a model is always fed the features it was
trained on. Featurization happens once per molecule and request; every endpoint shares it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from functools import lru_cache

import numpy as np
from rdkit import Chem
from rdkit.Chem import Descriptors, rdFingerprintGenerator
from rdkit.Chem import rdMolDescriptors as rdmd

# Only descriptors that cost a few microseconds each: Crippen logP (~200 us), QED (~1 ms) and
# the rotatable-bond SMARTS (~80 us) would dominate the hot path, so they are not features.
CHEAP_DESCRIPTORS: dict[str, Callable[[Chem.Mol], float]] = {
    "tpsa": rdmd.CalcTPSA,
    "mol_weight": Descriptors.MolWt,
    "labute_asa": rdmd.CalcLabuteASA,
    "lipinski_hbd": rdmd.CalcNumLipinskiHBD,
    "fraction_csp3": rdmd.CalcFractionCSP3,
    "aromatic_rings": rdmd.CalcNumAromaticRings,
    "rings": rdmd.CalcNumRings,
    "heavy_atoms": lambda m: m.GetNumHeavyAtoms(),
    "formal_charge": Chem.GetFormalCharge,
}


@dataclass(frozen=True)
class FeatureSpec:
    """What a model eats: Morgan counts of `radius`, folded to `n_bits`, then descriptors."""

    radius: int = 2
    n_bits: int = 2048
    descriptors: tuple[str, ...] = field(default_factory=tuple)

    @property
    def width(self) -> int:
        return self.n_bits + len(self.descriptors)

    def to_dict(self) -> dict:
        data = asdict(self)
        data["kind"] = "morgan_count+descriptors"
        data["descriptors"] = list(self.descriptors)
        return data

    @classmethod
    def from_dict(cls, data: dict) -> FeatureSpec:
        unknown = [d for d in data.get("descriptors", []) if d not in CHEAP_DESCRIPTORS]
        if unknown:
            raise ValueError(f"unknown descriptors in feature spec: {unknown}")
        return cls(
            radius=int(data["radius"]),
            n_bits=int(data["n_bits"]),
            descriptors=tuple(data.get("descriptors", ())),
        )


@lru_cache(maxsize=8)
def _morgan_generator(radius: int, n_bits: int):
    return rdFingerprintGenerator.GetMorganGenerator(radius=radius, fpSize=n_bits)


@dataclass(slots=True)
class FeatureBatch:
    """Features of a batch of molecules: dense counts for models, on-bit lists for similarity."""

    matrix: np.ndarray  # float32, (n, spec.width)
    on_bits: list[np.ndarray]  # per molecule, sorted int32 indices of set fingerprint bits


def featurize(mols: Sequence[Chem.Mol], spec: FeatureSpec) -> FeatureBatch:
    """Featurize molecules for `spec`.

    >>> from rdkit import Chem
    >>> featurize([Chem.MolFromSmiles("CCO")], FeatureSpec()).matrix.shape
    (1, 2048)
    """
    generator = _morgan_generator(spec.radius, spec.n_bits)
    matrix = np.zeros((len(mols), spec.width), dtype=np.float32)
    on_bits: list[np.ndarray] = []
    descriptor_fns = [CHEAP_DESCRIPTORS[name] for name in spec.descriptors]
    for row, mol in enumerate(mols):
        counts = generator.GetCountFingerprintAsNumPy(mol)
        matrix[row, : spec.n_bits] = counts
        on_bits.append(np.flatnonzero(counts).astype(np.int32))
        for offset, fn in enumerate(descriptor_fns):
            matrix[row, spec.n_bits + offset] = fn(mol)
    return FeatureBatch(matrix, on_bits)
