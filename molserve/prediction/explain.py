"""Per-atom explanations of the fast tier's predictions (asked with `explain`).

Method: path attribution on the served trees (Saabas). Every tree node gets its expected output,
the mean of its leaves' values weighted by how many training molecules reached each leaf (the
`leaf_count` / `internal_count` LightGBM writes in `lightgbm_members.txt`). Walking a molecule
down a tree, each split moves the expectation from the node's to the child's; that difference
is credited to the split's feature. Along one path the differences telescope, so for every tree

    E[root] + sum of the split credits == the exit leaf's value

exactly, and over an ensemble `base + sum(contributions) == raw output`. The method needs one
walk per tree and level (vectorized over trees and molecules with numpy, no LightGBM in the
serving process) where exact TreeSHAP costs a polynomial in the depth for every leaf: the fast
models grow trees 20 and more levels deep, so TreeSHAP would cost orders of magnitude more. Its
known weakness: a feature's credit depends on where in the tree it is split on (TreeSHAP shares
it fairly); for ranking which substructures pushed a prediction up or down the two agree in
practice, and additivity is exact either way.

From features to atoms (`explain_molecule`):
- Morgan count bits present in the molecule: a bit's credit is shared equally among the
  environments (centre atom, radius) that set it, and each environment's share equally among
  its atoms (the centre and every atom within its radius). Models see the largest fragment;
  its atoms are mapped back to the full molecule (in the atom order of the canonical SMILES),
  and atoms of stripped fragments get 0.
- Morgan bits absent from the molecule have no atoms; their credit (the effect of a
  substructure *not* being there) is reported as the pseudo-descriptor `morgan_absent_bits`.
- Descriptors: the cheap descriptors and the `rdkit2d` block per feature (their own names), the
  other blocks (`erg`, `avalon`, `maccs`) per block, under the block's name. Features whose
  credit is exactly 0 are left out.

Spaces: classifiers' raw output is the members' mean log-odds ("log-odds"; the served
probability is the mean of the members' probabilities). Regression models answer the members'
mean ("value"), or its inverse transform: a log10 target is explained in "log10(value)" space.
"""

from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass

import numpy as np
from rdkit import Chem
from rdkit.Chem import rdFingerprintGenerator

from molserve.chem.features import BLOCKS, RDKIT2D_NAMES, FeatureSpec
from molserve.models.gbm_runtime import FastModel
from molserve.models.trees import TreeEnsemble
from molserve.registry.store import ArtifactError

ABSENT_BITS = "morgan_absent_bits"
UNMAPPED_BITS = "morgan_unmapped_bits"
METHOD = ("path attribution (Saabas) on the served trees, node expectations weighted by "
          "training counts; Morgan bit credit shared equally over the atoms of its environments")


def _read_verified(model: FastModel, name: str) -> bytes:
    artifact = model.artifact
    data = artifact.file(name).read_bytes()
    if hashlib.sha256(data).hexdigest() != artifact.manifest["files"][name]["sha256"]:
        raise ArtifactError(f"{artifact.endpoint} v{artifact.version}: {name} does not match its "
                            "checksum; the artifact was modified after it was written")
    return data


def _lightgbm_counts(text: str) -> list[list[float]]:
    """Per tree, in the order LightGBM wrote them, the training counts of its nodes in pre-order
    (node, left subtree, right subtree): the order `trees.from_lightgbm` lays nodes out in."""
    trees: list[list[float]] = []
    fields: dict[str, str] = {}

    def finish() -> None:
        if not fields:
            return
        leaf_count = [float(v) for v in fields.get("leaf_count", "").split()]
        if int(fields.get("num_leaves", "1")) <= 1:
            trees.append(leaf_count[:1] or [1.0])
            return
        left = [int(v) for v in fields["left_child"].split()]
        right = [int(v) for v in fields["right_child"].split()]
        internal = [float(v) for v in fields["internal_count"].split()]
        order: list[float] = []
        stack = [0]
        while stack:  # pre-order: internal nodes >= 0, leaf j written as ~j
            node = stack.pop()
            if node < 0:
                order.append(leaf_count[~node])
                continue
            order.append(internal[node])
            stack.append(right[node])
            stack.append(left[node])
        trees.append(order)

    inside = False
    for line in text.splitlines():
        if line.startswith("Tree="):
            finish()
            fields, inside = {}, True
        elif line.startswith("end of trees") or line.startswith("# member"):
            finish()
            fields, inside = {}, False
        elif inside and "=" in line:
            key, _, value = line.partition("=")
            fields[key] = value
    finish()
    return trees


@dataclass(frozen=True)
class TreePaths:
    """One model's trees (its stored arrays, in its own column layout) with every node's
    expected output, ready for path attribution."""

    feature: np.ndarray  # int16/int32 (nodes,): the column a split reads (0 for leaves)
    threshold: np.ndarray  # float32 (nodes,)
    children: np.ndarray  # int32 (nodes * 2,): [right, left] of each node, flattened
    expectation: np.ndarray  # float64 (nodes,)
    is_leaf: np.ndarray  # bool (nodes,)
    roots: np.ndarray  # int64 (trees,)
    scale: float  # 1 / members: the model answers its members' mean
    base: float  # expected raw output: the members' mean of sum E[root]
    width: int  # columns of the model's layout

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in (self.feature, self.threshold, self.children, self.expectation,
                                      self.is_leaf, self.roots))

    @classmethod
    def from_model(cls, model: FastModel) -> TreePaths:
        from safetensors.numpy import load as load_arrays

        ensemble = TreeEnsemble.from_arrays(load_arrays(_read_verified(model, "trees.safetensors")))
        counts = _lightgbm_counts(_read_verified(model, "lightgbm_members.txt").decode())
        sizes = np.diff(np.append(ensemble.roots, len(ensemble.feature)))
        name = f"{model.endpoint} v{model.artifact.version}"
        if len(counts) != ensemble.n_trees or any(len(c) != s for c, s in zip(counts, sizes, strict=True)):
            raise ArtifactError(f"{name}: lightgbm_members.txt does not describe the stored trees; "
                                "no explanation can be given")
        count = np.concatenate([np.asarray(c, dtype=np.float64) for c in counts]) if counts \
            else np.zeros(0)
        right, left = ensemble.children[:, 0], ensemble.children[:, 1]
        is_leaf = left == np.arange(len(ensemble.feature))
        expectation = np.where(is_leaf, ensemble.value, 0.0)
        # Pre-order: a node's children come after it, so one pass from the end fills every node.
        for node in np.flatnonzero(~is_leaf)[::-1].tolist():
            lo, hi = int(left[node]), int(right[node])
            n_lo, n_hi = count[lo], count[hi]
            total = n_lo + n_hi
            expectation[node] = ((n_lo * expectation[lo] + n_hi * expectation[hi]) / total
                                 if total > 0 else 0.5 * (expectation[lo] + expectation[hi]))
        scale = 1.0 / max(1, ensemble.n_members)
        width = model.spec.width
        return cls(ensemble.feature.astype(np.int16 if width < 2**15 else np.int32),
                   ensemble.threshold, ensemble.children.astype(np.int32).ravel(), expectation,
                   is_leaf, ensemble.roots.astype(np.int64), scale,
                   float(expectation[ensemble.roots].sum() * scale), width)

    def attribute(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(rows, columns) credits of each feature and (rows,) raw outputs (the members' mean)
        for features `x` in this model's layout.

        Walks every (molecule, tree) pair down one level at a time, dropping the pairs that
        reached a leaf: most paths end well before the deepest tree's depth. (Walking every
        endpoint's trees stacked in one set of arrays was measured slower for more than one
        molecule: one model's nodes stay in cache, a stack's do not.)"""
        x = np.asarray(x, dtype=np.float32)
        rows, width = x.shape
        if width != self.width:
            raise ValueError(f"features have {width} columns; these trees read {self.width}")
        flat = x.ravel()
        n_trees = len(self.roots)
        node = np.tile(self.roots, rows)
        offset = np.repeat(np.arange(rows, dtype=np.int64) * width, n_trees)
        pair = np.arange(rows * n_trees)
        exit_leaf = np.empty(rows * n_trees, dtype=np.int64)
        columns, deltas = [], []
        while True:
            ended = self.is_leaf[node]
            if ended.any():
                exit_leaf[pair[ended]] = node[ended]
                going = ~ended
                node, offset, pair = node[going], offset[going], pair[going]
                if not len(node):
                    break
            column = offset + self.feature[node]
            go_left = flat[column] <= self.threshold[node]
            following = self.children[2 * node + go_left]
            columns.append(column)
            deltas.append(self.expectation[following] - self.expectation[node])
            node = following
        credit = np.bincount(np.concatenate(columns), weights=np.concatenate(deltas),
                             minlength=rows * width) if columns else np.zeros(rows * width)
        raw = self.expectation[exit_leaf].reshape(rows, n_trees).sum(axis=1) * self.scale
        return (credit * self.scale).reshape(rows, width), raw


def column_names(spec: FeatureSpec) -> list[str | None]:
    """The name each non-Morgan column is reported under (None for Morgan bits)."""
    names: list[str | None] = [None] * spec.n_bits
    names += list(spec.descriptors)
    for block in spec.blocks:
        if block == "rdkit2d":
            names += [f"rdkit2d.{n}" if n in spec.descriptors else n for n in RDKIT2D_NAMES]
        else:
            names += [block] * BLOCKS[block].width
    return names


@dataclass(frozen=True)
class AtomMap:
    """Where a molecule's Morgan credit goes: `weights` (atoms of the full molecule, n_bits)
    spreads each present bit's credit over atoms; `present` marks the bits the model saw."""

    n_atoms: int
    weights: np.ndarray  # float64 (n_atoms, n_bits)
    mapped: np.ndarray  # bool (n_bits,): bits with at least one environment in the molecule


def atom_map(canonical_smiles: str, radius: int, n_bits: int) -> AtomMap:
    """The Morgan bits of the canonical molecule's largest fragment (the one the models see,
    chosen as `largest_fragment` chooses), mapped to the full molecule's atoms."""
    mol = Chem.MolFromSmiles(canonical_smiles)
    n_atoms = mol.GetNumAtoms()
    mapping: list[tuple[int, ...]] = []
    fragments = Chem.GetMolFrags(mol, asMols=True, sanitizeFrags=True, fragsMolAtomMapping=mapping)
    if len(fragments) > 1:
        chosen = max(range(len(fragments)),
                     key=lambda i: (fragments[i].GetNumHeavyAtoms(), Chem.MolToSmiles(fragments[i])))
        fragment, to_full = fragments[chosen], list(mapping[chosen])
    else:
        fragment, to_full = mol, list(range(n_atoms))
    generator = rdFingerprintGenerator.GetMorganGenerator(radius=radius, fpSize=n_bits)
    output = rdFingerprintGenerator.AdditionalOutput()
    output.AllocateBitInfoMap()
    generator.GetCountFingerprintAsNumPy(fragment, additionalOutput=output)
    weights = np.zeros((n_atoms, n_bits), dtype=np.float64)
    mapped = np.zeros(n_bits, dtype=bool)
    for bit, environments in output.GetBitInfoMap().items():
        share = 1.0 / len(environments)
        for centre, env_radius in environments:
            atoms = {centre}
            if env_radius > 0:
                for bond in Chem.FindAtomEnvironmentOfRadiusN(fragment, env_radius, centre):
                    b = fragment.GetBondWithIdx(bond)
                    atoms.update((b.GetBeginAtomIdx(), b.GetEndAtomIdx()))
            for atom in atoms:
                weights[to_full[atom], bit] += share / len(atoms)
        mapped[bit] = True
    return AtomMap(n_atoms, weights, mapped)


def explain_molecule(credit: np.ndarray, counts: np.ndarray, raw: float, base: float,
                     atoms: AtomMap, names: list[str | None], space: str) -> dict:
    """One molecule's explanation from its feature credits (`credit`, the model's columns) and
    Morgan counts as the model saw them (`counts`, n_bits)."""
    n_bits = len(counts)
    bits = credit[:n_bits]
    present = counts > 0
    on_atoms = present & atoms.mapped
    per_atom = atoms.weights[:, on_atoms] @ bits[on_atoms]
    descriptors: dict[str, float] = {}
    absent = float(bits[~present].sum())
    if absent != 0.0:
        descriptors[ABSENT_BITS] = absent
    # Present for the model but without an environment here: only if the two fingerprints of the
    # same fragment ever differed; kept so the sum still holds.
    unmapped = float(bits[present & ~atoms.mapped].sum())
    if unmapped != 0.0:
        descriptors[UNMAPPED_BITS] = unmapped
    for column in np.flatnonzero(credit[n_bits:]).tolist():
        name = names[n_bits + column]
        descriptors[name] = descriptors.get(name, 0.0) + float(credit[n_bits + column])
    return {"space": space, "base": base, "atoms": per_atom.tolist(), "descriptors": descriptors,
            "raw": float(raw), "method": METHOD}


def space_of(model: FastModel) -> str:
    if model.task == "classification":
        return "log-odds"
    transform = model.transform
    if transform.kind == "log10":
        return f"log10(value + {transform.offset:g})" if transform.offset else "log10(value)"
    return "value"


class Explainer:
    """Explanations of fast models, each model's node expectations computed at its first
    explanation and kept (`nbytes`: about 43 MB for the 45 bundled endpoints)."""

    def __init__(self) -> None:
        self._paths: dict[str, tuple[int, TreePaths]] = {}
        self._names: dict[FeatureSpec, list[str | None]] = {}
        self._lock = threading.Lock()

    @property
    def nbytes(self) -> int:
        return sum(p.nbytes for _, p in self._paths.values())

    def names(self, spec: FeatureSpec) -> list[str | None]:
        if spec not in self._names:
            self._names[spec] = column_names(spec)
        return self._names[spec]

    def paths(self, model: FastModel) -> TreePaths:
        held = self._paths.get(model.endpoint)
        if held is None or held[0] != model.artifact.version:
            with self._lock:
                held = self._paths.get(model.endpoint)
                if held is None or held[0] != model.artifact.version:
                    held = (model.artifact.version, TreePaths.from_model(model))
                    self._paths[model.endpoint] = held
        return held[1]

    def explain(self, model: FastModel, matrix: np.ndarray, layout: FeatureSpec,
                smiles: list[str], atom_maps: dict[tuple[str, int, int], AtomMap]) -> list[dict]:
        """One explanation per row of `matrix` (features in the `layout` the fast tier computed,
        the model's columns among them); `smiles` are the rows' canonical SMILES and `atom_maps`
        keeps each molecule's atom mapping across endpoints."""
        paths = self.paths(model)
        spec, names, space = model.spec, self.names(model.spec), space_of(model)
        columns = spec.columns_in(layout)
        credit, raw = paths.attribute(matrix if columns is None else matrix[:, columns])
        counts = matrix[:, : spec.n_bits]  # every layout starts with the same Morgan counts
        explained = []
        for row, key in enumerate(smiles):
            cached = (key, spec.radius, spec.n_bits)
            atoms = atom_maps.get(cached)
            if atoms is None:
                atoms = atom_maps[cached] = atom_map(key, spec.radius, spec.n_bits)
            explained.append(explain_molecule(credit[row], counts[row], float(raw[row]), paths.base,
                                              atoms, names, space))
        return explained
