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


# Cheap C++ properties (rdMolDescriptors.Properties): counts, masses, surface area, and the
# low-order connectivity and shape indices. Crippen and TPSA are added from their per-atom
# contributions (computed once; the VSA bins reuse them, as RDKit's own VSA descriptors do).
_CHEAP_PROPERTIES = (
    "exactmw", "amw", "lipinskiHBA", "lipinskiHBD", "NumHBD", "NumHeavyAtoms", "NumAtoms",
    "NumHeteroatoms", "NumAmideBonds", "FractionCSP3", "NumRings", "NumAromaticRings",
    "NumAliphaticRings", "NumSaturatedRings", "NumHeterocycles", "NumAromaticHeterocycles",
    "NumSaturatedHeterocycles", "NumAliphaticHeterocycles", "NumSpiroAtoms", "NumBridgeheadAtoms",
    "NumAtomStereoCenters", "NumUnspecifiedAtomStereoCenters", "labuteASA", "chi0v", "chi1v",
    "chi0n", "chi1n", "hallKierAlpha", "kappa1",
)
# RDKit's own bin edges for SlogP_VSA and SMR_VSA (MolSurf), applied to the Crippen contributions.
_SLOGP_BINS = np.array([-0.4, -0.2, 0.0, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.6])
_SMR_BINS = np.array([1.29, 1.82, 2.24, 2.45, 2.75, 3.05, 3.63, 3.8, 4.0])
_properties = rdmd.Properties(list(_CHEAP_PROPERTIES))

RDKIT2D_NAMES: tuple[str, ...] = (
    *_CHEAP_PROPERTIES, "crippen_logp", "crippen_mr", "tpsa", "fraction_aromatic_atoms",
    "max_gasteiger_charge", "min_gasteiger_charge",
    *(f"mqn{i + 1}" for i in range(42)),
    *(f"peoe_vsa{i + 1}" for i in range(14)),
    *(f"slogp_vsa{i + 1}" for i in range(12)),
    *(f"smr_vsa{i + 1}" for i in range(10)),
)


def _rdkit2d(mol: Chem.Mol) -> np.ndarray:
    """A curated block of RDKit 2D descriptors, computed in C++ in about 0.4 ms a molecule.

    Counts, masses, Labute surface area, low-order connectivity (chi0/chi1) and kappa1, Crippen
    logP and MR (equal to Crippen.MolLogP and MolMR), TPSA, the aromatic fraction of heavy atoms,
    the extreme Gasteiger charges, the 42 molecular quantum numbers, and the PEOE, SlogP and SMR
    VSA bins (identical to RDKit's). The slow descriptors of RDKit's full list (QED, BCUT2D,
    EState indices, Ipc, fragment SMARTS counts) are left out: in the gateway every endpoint
    waits for this block.
    """
    # Contributions with explicit hydrogens: their sum is Crippen logP/MR; the first rows (the
    # molecule's own atoms) are the contributions RDKit's SlogP/SMR VSA bins use.
    contributions = np.asarray(rdmd._CalcCrippenContribs(Chem.AddHs(mol)), dtype=np.float64)
    crippen = contributions.reshape(-1, 2)[: mol.GetNumAtoms()]
    heavy = max(1, mol.GetNumHeavyAtoms())
    aromatic = sum(1 for atom in mol.GetAtoms() if atom.GetIsAromatic())
    surface = np.asarray(rdmd._CalcLabuteASAContribs(mol)[0], dtype=np.float64)
    peoe = rdmd.PEOE_VSA_(mol)  # computes Gasteiger charges onto the atoms
    charges = [a.GetDoubleProp("_GasteigerCharge") for a in mol.GetAtoms()
               if a.HasProp("_GasteigerCharge")]
    charges = [c for c in charges if np.isfinite(c)] or [0.0]
    return np.concatenate([
        _properties.ComputeProperties(mol),
        contributions.reshape(-1, 2).sum(axis=0),
        [sum(rdmd._CalcTPSAContribs(mol)), aromatic / heavy, max(charges), min(charges)],
        rdmd.MQNs_(mol),
        peoe,
        np.bincount(np.digitize(crippen[:, 0], _SLOGP_BINS), weights=surface, minlength=12),
        np.bincount(np.digitize(crippen[:, 1], _SMR_BINS), weights=surface, minlength=10),
    ])


def _erg(mol: Chem.Mol) -> np.ndarray:
    from rdkit.Chem import rdReducedGraphs

    return np.asarray(rdReducedGraphs.GetErGFingerprint(mol), dtype=np.float64)


def _avalon_counts(mol: Chem.Mol) -> np.ndarray:
    from rdkit.Avalon import pyAvalonTools

    counts = np.zeros(1024, dtype=np.float64)
    for bit, count in pyAvalonTools.GetAvalonCountFP(mol, nBits=1024).GetNonzeroElements().items():
        counts[bit] = count
    return counts


def _maccs(mol: Chem.Mol) -> np.ndarray:
    from rdkit.Chem import MACCSkeys

    bits = np.zeros(167, dtype=np.float64)
    bits[list(MACCSkeys.GenMACCSKeys(mol).GetOnBits())] = 1.0
    return bits


@dataclass(frozen=True)
class FeatureBlock:
    """A fixed-width group of feature columns computed from the molecule alone."""

    width: int
    fn: Callable[[Chem.Mol], np.ndarray]
    description: str


# Blocks a model may add after the Morgan counts, in the order they are laid out.
BLOCKS: dict[str, FeatureBlock] = {
    "rdkit2d": FeatureBlock(len(RDKIT2D_NAMES), _rdkit2d,
                            "curated RDKit 2D descriptors (C++): counts, surface areas, Crippen, "
                            "TPSA, Gasteiger extremes, MQNs, PEOE/SlogP/SMR VSA bins"),
    "erg": FeatureBlock(315, _erg, "extended reduced graph (ErG) pharmacophore pairs"),
    "avalon": FeatureBlock(1024, _avalon_counts, "Avalon count fingerprint, 1024 bits"),
    "maccs": FeatureBlock(167, _maccs, "MACCS structural keys"),
}


@dataclass(frozen=True)
class FeatureSpec:
    """What a model eats: Morgan counts of `radius` folded to `n_bits`, then the named cheap
    `descriptors`, then whole feature `blocks` (BLOCKS), in that column order."""

    radius: int = 2
    n_bits: int = 2048
    descriptors: tuple[str, ...] = field(default_factory=tuple)
    blocks: tuple[str, ...] = field(default_factory=tuple)

    @property
    def width(self) -> int:
        return self.n_bits + len(self.descriptors) + sum(BLOCKS[b].width for b in self.blocks)

    def block_offsets(self) -> dict[str, int]:
        """First column of each block."""
        offsets, start = {}, self.n_bits + len(self.descriptors)
        for name in self.blocks:
            offsets[name] = start
            start += BLOCKS[name].width
        return offsets

    def to_dict(self) -> dict:
        data = asdict(self)
        data["kind"] = "morgan_count+descriptors+blocks" if self.blocks else "morgan_count+descriptors"
        data["descriptors"] = list(self.descriptors)
        data["blocks"] = list(self.blocks)
        return data

    @classmethod
    def from_dict(cls, data: dict) -> FeatureSpec:
        unknown = [d for d in data.get("descriptors", []) if d not in CHEAP_DESCRIPTORS]
        unknown += [b for b in data.get("blocks", []) if b not in BLOCKS]
        if unknown:
            raise ValueError(f"unknown descriptors or feature blocks in feature spec: {unknown}")
        return cls(
            radius=int(data["radius"]),
            n_bits=int(data["n_bits"]),
            descriptors=tuple(data.get("descriptors", ())),
            blocks=tuple(data.get("blocks", ())),
        )

    def columns_in(self, source: FeatureSpec) -> np.ndarray | None:
        """Positions of this spec's columns in a matrix featurized with the wider `source`
        (None when the layouts are the same)."""
        if source == self:
            return None
        if (source.radius, source.n_bits) != (self.radius, self.n_bits):
            raise ValueError("fingerprint settings differ; featurize for this model separately")
        keep = list(range(source.n_bits))
        keep += [source.n_bits + source.descriptors.index(d) for d in self.descriptors]
        offsets = source.block_offsets()
        for name in self.blocks:
            keep += range(offsets[name], offsets[name] + BLOCKS[name].width)
        return np.asarray(keep, dtype=np.int64)


    def positions_in(self, target: FeatureSpec) -> np.ndarray:
        """Where each of this spec's columns is in `target`'s layout (-1: not there)."""
        if (target.radius, target.n_bits) != (self.radius, self.n_bits):
            raise ValueError("fingerprint settings differ; the layouts share no column")
        where = [*range(self.n_bits)]
        where += [target.n_bits + target.descriptors.index(d) if d in target.descriptors else -1
                  for d in self.descriptors]
        offsets = target.block_offsets()
        for name in self.blocks:
            width = BLOCKS[name].width
            where += range(offsets[name], offsets[name] + width) if name in offsets else [-1] * width
        return np.asarray(where, dtype=np.int64)


def union_spec(specs: Sequence[FeatureSpec]) -> FeatureSpec | None:
    """One spec whose columns cover every spec sharing the first one's fingerprint settings."""
    if not specs:
        return None
    first = specs[0]
    same = [s for s in specs if (s.radius, s.n_bits) == (first.radius, first.n_bits)]
    descriptors = {d for s in same for d in s.descriptors}
    blocks = {b for s in same for b in s.blocks}
    return FeatureSpec(radius=first.radius, n_bits=first.n_bits,
                       descriptors=tuple(d for d in CHEAP_DESCRIPTORS if d in descriptors),
                       blocks=tuple(b for b in BLOCKS if b in blocks))


@lru_cache(maxsize=8)
def _morgan_generator(radius: int, n_bits: int):
    return rdFingerprintGenerator.GetMorganGenerator(radius=radius, fpSize=n_bits)


@dataclass(slots=True)
class FeatureBatch:
    """Features of a batch of molecules: dense counts for models, on-bit lists for similarity."""

    matrix: np.ndarray  # float32, (n, spec.width)
    on_bits: list[np.ndarray]  # per molecule, sorted int32 indices of set fingerprint bits


# Descriptor values are clipped into float32's range, and NaN (a descriptor RDKit could not
# compute for an exotic element) becomes 0, the same at training and at serving.
_LIMIT = 1e30


def canonical_order(mol: Chem.Mol) -> Chem.Mol:
    """The molecule with its atoms renumbered in RDKit's canonical order.

    Some descriptors sum floating-point terms atom by atom, so the same molecule written two
    ways could differ in the last bits and, rarely, fall on the other side of a tree's
    threshold; in canonical order the same molecule always gets the same features.
    """
    ranks = list(Chem.CanonicalRankAtoms(mol))
    order = sorted(range(len(ranks)), key=ranks.__getitem__)
    return Chem.RenumberAtoms(mol, order)


def featurize(mols: Sequence[Chem.Mol], spec: FeatureSpec) -> FeatureBatch:
    """Featurize molecules for `spec` (each in canonical atom order).

    >>> from rdkit import Chem
    >>> featurize([Chem.MolFromSmiles("CCO")], FeatureSpec()).matrix.shape
    (1, 2048)
    """
    generator = _morgan_generator(spec.radius, spec.n_bits)
    matrix = np.zeros((len(mols), spec.width), dtype=np.float32)
    on_bits: list[np.ndarray] = []
    descriptor_fns = [CHEAP_DESCRIPTORS[name] for name in spec.descriptors]
    blocks = [(offset, BLOCKS[name]) for name, offset in spec.block_offsets().items()]
    for row, mol in enumerate(mols):
        if blocks:
            mol = canonical_order(mol)
        counts = generator.GetCountFingerprintAsNumPy(mol)
        matrix[row, : spec.n_bits] = counts
        on_bits.append(np.flatnonzero(counts).astype(np.int32))
        for offset, fn in enumerate(descriptor_fns):
            matrix[row, spec.n_bits + offset] = fn(mol)
        for offset, block in blocks:
            try:
                values = block.fn(mol)
            except (ValueError, RuntimeError):  # e.g. no Gasteiger parameters for an element
                values = np.zeros(block.width)
            matrix[row, offset : offset + block.width] = np.clip(
                np.nan_to_num(values, nan=0.0, posinf=_LIMIT, neginf=-_LIMIT), -_LIMIT, _LIMIT)
    return FeatureBatch(matrix, on_bits)
