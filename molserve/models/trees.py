"""Gradient-boosted tree ensembles as flat numpy arrays, evaluated without any ML runtime.

A LightGBM booster is flattened once at training time into node arrays stored as safetensors.
The gateway evaluates them with a few vectorized gathers per tree level: no LightGBM, no
onnxruntime in the serving process, a model costs megabytes less memory and loads in
microseconds. Several boosters (ensemble members) share one set of arrays; each tree records
the member it belongs to, and evaluation returns one raw score per member.

`TreeEnsemble` is the stored layout (and the reference evaluation, level by level). `Forest` is
the serving layout: the internal nodes of many ensembles (every endpoint's) in one set of arrays,
evaluated without walking the trees at all (QuickScorer, Lucchese et al., SIGIR 2015): every
split is tested in one vectorized comparison, each false split clears its left subtree's leaves
from its tree's bitmask, and the leftmost leaf left standing is the exit leaf. The passes are
sequential over small arrays instead of a random walk over large ones: for the 45 bundled
endpoints (about 40,000 trees) one molecule costs a few milliseconds instead of about 18, and the
arrays take half the memory.

Missing and zero values follow LightGBM's prediction exactly (`Tree::NumericalDecision` and the
dense-row conversion before it): an input within 1e-35 of zero is read as zero; a split whose
missing type is None sends NaN where zero would go; type Zero sends zero and NaN its default way;
type NaN sends NaN its default way and compares zero like any value. Each node's missing type and
default direction are stored beside its threshold (`missing`: type | default-left << 2).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

# LightGBM's kZeroThreshold (a float constant): its predictor drops dense inputs this close to
# zero, so they reach the trees as exactly 0.
ZERO_THRESHOLD = np.float32(1e-35)
MISSING_TYPES = {"None": 0, "Zero": 1, "NaN": 2}
DEFAULT_LEFT = 4


def lightgbm_inputs(features: np.ndarray) -> np.ndarray:
    """Features as float32 the way LightGBM's predictor reads them: |x| <= 1e-35 becomes 0."""
    x = np.asarray(features, dtype=np.float32)
    tiny = np.abs(x) <= ZERO_THRESHOLD
    if tiny.any():
        x = np.where(tiny, np.float32(0.0), x)
    return x


def split_goes_left(values: np.ndarray, threshold: np.ndarray, missing: np.ndarray,
                    has_nan: bool, has_zero_rule: bool) -> np.ndarray:
    """LightGBM's numerical decision for tested `values` (already through `lightgbm_inputs`) at
    splits with `threshold` and `missing` codes (broadcast alike): True where the row goes left.

    `has_nan` (the inputs hold a NaN) and `has_zero_rule` (a split of missing type Zero) let the
    common case, neither, cost one comparison."""
    left = values <= threshold
    if not (has_nan or has_zero_rule):
        return left
    kind = missing & 3
    default = (missing & DEFAULT_LEFT) != 0
    if has_nan:
        nan = np.isnan(values)
        if nan.any():
            # Type None reads NaN as 0; types Zero and NaN send it the default way.
            nan_left = np.where(kind == 0, np.float32(0.0) <= threshold, default)
            left = np.where(nan, nan_left, left)
    if has_zero_rule:
        left = np.where((kind == 1) & (values == 0), default, left)
    return left


def _missing_code(node: dict[str, Any]) -> int:
    kind = node.get("missing_type", "None")
    if kind not in MISSING_TYPES:
        raise ValueError(f"unsupported LightGBM missing type {kind!r}")
    return MISSING_TYPES[kind] | (DEFAULT_LEFT if node.get("default_left", False) else 0)


def _float32_at_most(value: float) -> np.float32:
    """The largest float32 <= value: for float32 inputs, x <= value iff x <= this."""
    with np.errstate(over="ignore"):  # beyond float32's range: inf, then the largest float32
        rounded = np.float32(value)
    if float(rounded) > value:
        rounded = np.nextafter(rounded, np.float32(-np.inf))
    return rounded


class _MissingRules:
    """Each split's missing type and default direction (`missing`, uint8: type | left << 2), shared
    by the single and stacked ensembles; files without them mean every split is of type None."""

    feature: np.ndarray
    missing: np.ndarray | None

    def __post_init__(self) -> None:
        if self.missing is None:
            object.__setattr__(self, "missing", np.zeros(len(self.feature), dtype=np.uint8))

    @cached_property
    def has_zero_rule(self) -> bool:
        assert self.missing is not None
        return bool(np.any((self.missing & 3) == 1))


@dataclass(frozen=True)
class TreeEnsemble(_MissingRules):
    feature: np.ndarray  # int32 (nodes,); 0 for leaves
    threshold: np.ndarray  # float32 (nodes,); +inf for leaves, so they "go left"
    children: np.ndarray  # int32 (nodes, 2): [right, left]; a leaf points to itself
    value: np.ndarray  # float64 (nodes,); leaf output, 0 for internal nodes
    roots: np.ndarray  # int32 (trees,)
    membership: np.ndarray  # float64 (trees, members): one-hot tree -> member
    depth: int  # longest root-to-leaf path
    # uint8 (nodes,): missing type | default-left << 2; None (older files): every split of type
    # None, as trees trained with use_missing=False have.
    missing: np.ndarray | None = None

    @property
    def n_members(self) -> int:
        return int(self.membership.shape[1])

    @property
    def n_trees(self) -> int:
        return int(self.roots.shape[0])

    # Storage -----------------------------------------------------------------------------
    def arrays(self) -> dict[str, np.ndarray]:
        return {
            "feature": self.feature, "threshold": self.threshold, "children": self.children,
            "value": self.value, "roots": self.roots,
            "tree_member": np.argmax(self.membership, axis=1).astype(np.int32),
            "depth": np.array([self.depth], dtype=np.int32),
            "missing": self.missing,
        }

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> TreeEnsemble:
        tree_member = arrays["tree_member"].astype(np.int64)
        n_members = int(tree_member.max()) + 1 if len(tree_member) else 0
        membership = np.zeros((len(tree_member), n_members), dtype=np.float64)
        membership[np.arange(len(tree_member)), tree_member] = 1.0
        return cls(
            feature=arrays["feature"].astype(np.int32),
            threshold=arrays["threshold"].astype(np.float32),
            children=arrays["children"].astype(np.int32),
            value=arrays["value"].astype(np.float64),
            roots=arrays["roots"].astype(np.int32),
            membership=membership,
            depth=int(arrays["depth"][0]),
            missing=arrays["missing"].astype(np.uint8) if "missing" in arrays else None,
        )

    def save(self, path: Path) -> None:
        from safetensors.numpy import save_file

        save_file(self.arrays(), str(path))

    @classmethod
    def load(cls, path: Path) -> TreeEnsemble:
        from safetensors.numpy import load_file

        return cls.from_arrays(load_file(str(path)))

    # Evaluation --------------------------------------------------------------------------
    def raw_scores(self, features: np.ndarray, block: int = 64) -> np.ndarray:
        """(rows, members) raw scores: the sum of each member's leaf values.

        Rows go through in blocks so the (rows x trees) node table stays in cache.
        """
        x = np.ascontiguousarray(lightgbm_inputs(features))
        if x.shape[0] > block:
            return np.concatenate(
                [self._raw_scores(x[i : i + block]) for i in range(0, x.shape[0], block)]
            )
        return self._raw_scores(x)

    def _raw_scores(self, x: np.ndarray) -> np.ndarray:
        rows, width = x.shape
        flat = x.ravel()
        index_type = np.int32 if rows * width < 2**31 else np.int64
        offsets = (np.arange(rows, dtype=index_type) * width)[:, None]
        node = np.broadcast_to(self.roots, (rows, self.n_trees)).copy()
        children = self.children.ravel()
        feature, threshold, missing = self.feature, self.threshold, self.missing
        has_nan, has_zero_rule = bool(np.isnan(flat).any()), self.has_zero_rule
        for _ in range(self.depth):
            go_left = split_goes_left(flat[offsets + feature[node]], threshold[node], missing[node],
                                      has_nan, has_zero_rule)
            node <<= 1
            node += go_left
            node = children[node]
        return self.value[node] @ self.membership


def from_lightgbm(boosters: list[Any]) -> TreeEnsemble:
    """Flatten LightGBM boosters into one TreeEnsemble (numerical splits, any missing type)."""
    feature: list[int] = []
    missing: list[int] = []
    threshold: list[np.float32] = []
    children: list[tuple[int, int]] = []
    value: list[float] = []
    roots: list[int] = []
    members: list[int] = []
    deepest = 0

    def visit(node: dict[str, Any], depth: int) -> int:
        nonlocal deepest
        index = len(feature)
        feature.append(0)
        missing.append(0)
        threshold.append(np.float32(np.inf))
        children.append((index, index))
        value.append(0.0)
        if "leaf_value" in node:
            value[index] = float(node["leaf_value"])
            deepest = max(deepest, depth)
            return index
        if node.get("decision_type", "<=") != "<=":
            raise ValueError(f"unsupported LightGBM split {node.get('decision_type')!r}")
        missing[index] = _missing_code(node)
        feature[index] = int(node["split_feature"])
        threshold[index] = _float32_at_most(float(node["threshold"]))
        left = visit(node["left_child"], depth + 1)
        right = visit(node["right_child"], depth + 1)
        children[index] = (right, left)
        return index

    for member, booster in enumerate(boosters):
        for tree in booster.dump_model()["tree_info"]:
            roots.append(visit(tree["tree_structure"], 0))
            members.append(member)
    membership = np.zeros((len(roots), len(boosters)), dtype=np.float64)
    membership[np.arange(len(roots)), members] = 1.0
    return TreeEnsemble(
        feature=np.array(feature, dtype=np.int32),
        threshold=np.array(threshold, dtype=np.float32),
        children=np.array(children, dtype=np.int32).reshape(-1, 2),
        value=np.array(value, dtype=np.float64),
        roots=np.array(roots, dtype=np.int32),
        membership=membership,
        depth=deepest,
        missing=np.array(missing, dtype=np.uint8),
    )


def _leaf_masks(ensemble: TreeEnsemble) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """For each internal node: its tree and the bitmask of its tree's leaves that stay possible
    when the split is false (its left subtree cleared), leaves numbered left to right.

    Returns (internal node ids, their masks as uint64, leaves per tree, leaf node ids in order).
    Relies on the pre-order layout `from_lightgbm` writes (a node, then its left subtree, then its
    right), which is checked: there, a tree's leaves in index order are its leaves left to right.
    """
    n = len(ensemble.feature)
    index = np.arange(n, dtype=np.int64)
    right = ensemble.children[:, 0].astype(np.int64)
    left = ensemble.children[:, 1].astype(np.int64)
    is_leaf = left == index
    roots = ensemble.roots.astype(np.int64)
    bounds = np.append(roots, n)
    internal = np.flatnonzero(~is_leaf)
    if (len(roots) and roots[0] != 0) or np.any(np.diff(bounds) <= 0) \
            or np.any(left[internal] != internal + 1) or np.any(right[internal] <= left[internal]):
        raise ValueError("tree arrays are not in pre-order; evaluate them level by level")
    tree_of = np.repeat(np.arange(len(roots)), np.diff(bounds))
    leaves_before = np.zeros(n + 1, dtype=np.int64)  # leaves with a smaller index
    np.cumsum(is_leaf, out=leaves_before[1:])
    leaves_per_tree = leaves_before[bounds[1:]] - leaves_before[bounds[:-1]]
    if leaves_per_tree.max(initial=0) > 64:
        raise ValueError("a tree with more than 64 leaves; evaluate level by level")
    first = leaves_before[roots][tree_of[internal]]
    low = leaves_before[left[internal]] - first  # the left subtree's leaves: [low, high)
    high = leaves_before[right[internal]] - first
    ones = np.uint64(0xFFFFFFFFFFFFFFFF)

    def below(k: np.ndarray) -> np.ndarray:  # bits 0..k-1 set, for 0 <= k <= 64
        shifted = np.left_shift(np.uint64(1), np.minimum(k, 63).astype(np.uint64)) - np.uint64(1)
        return np.where(k >= 64, ones, shifted)

    masks = ~(below(high) ^ below(low))
    return internal, masks, leaves_per_tree, np.flatnonzero(is_leaf)


def _column_type(columns: np.ndarray) -> type:
    """int16 where every column fits (5 MB less than intp for the bundled endpoints; numpy's
    take widens each piece's indices as it goes)."""
    return np.int16 if columns.max(initial=0) < 2**15 else np.int32


@dataclass(frozen=True)
class Forest(_MissingRules):
    """Tree ensembles of several models in one serving layout (see the module docstring).

    Each tree has at least one split (a one-leaf tree gets a split that is always true), so the
    splits of tree t are `tree_start[t]:tree_start[t + 1]` and its leaves, left to right,
    `leaf_start[t]:leaf_start[t + 1]`. Outputs are the models' members, model after model; a
    model's trees are `tree_range[name]`, its outputs `output_range[name]`.
    """

    feature: np.ndarray  # int16 (int32 for layouts of 32,768 columns or more) (splits,)
    threshold: np.ndarray  # float32 (splits,): true (left) when x <= threshold
    mask: np.ndarray  # uint32 or uint64 (splits,): leaves left standing when the split is false
    tree_start: np.ndarray  # int64 (trees + 1,)
    leaf_start: np.ndarray  # int64 (trees + 1,)
    leaf_value: np.ndarray  # float64 (leaves,)
    output_start: np.ndarray  # int64 (outputs,): first tree of each output
    tree_range: dict[str, tuple[int, int]]
    output_range: dict[str, tuple[int, int]]
    missing: np.ndarray | None = None  # uint8 (splits,), as TreeEnsemble.missing; None: all 0

    @property
    def n_trees(self) -> int:
        return int(len(self.tree_start)) - 1

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in (self.feature, self.threshold, self.mask, self.tree_start,
                                      self.leaf_start, self.leaf_value, self.output_start,
                                      self.missing))

    @classmethod
    def from_ensemble(cls, name: str, ensemble: TreeEnsemble) -> Forest:
        """One model's forest, in its own column layout."""
        internal, mask, leaves_per_tree, leaf_nodes = _leaf_masks(ensemble)
        n_trees = ensemble.n_trees
        bounds = np.append(ensemble.roots.astype(np.int64), len(ensemble.feature))
        per_tree = np.bincount(np.searchsorted(bounds, internal, side="right") - 1, minlength=n_trees)
        # A one-leaf tree gets one split that is always true (threshold +inf).
        stumps = np.flatnonzero(per_tree == 0)
        at = np.searchsorted(np.repeat(np.arange(n_trees), per_tree), stumps)
        member = np.argmax(ensemble.membership, axis=1) if n_trees else np.zeros(0, np.int64)
        if np.any(np.diff(member) < 0) or len(np.unique(member)) != ensemble.n_members:
            raise ValueError(f"{name}: each member's trees must be contiguous and non-empty")
        tree_start = np.zeros(n_trees + 1, dtype=np.int64)
        np.cumsum(np.maximum(per_tree, 1), out=tree_start[1:])
        leaf_start = np.zeros(n_trees + 1, dtype=np.int64)
        np.cumsum(leaves_per_tree, out=leaf_start[1:])
        widest = int(leaves_per_tree.max(initial=0))
        return cls(
            feature=np.insert(ensemble.feature[internal], at, 0).astype(_column_type(ensemble.feature)),
            threshold=np.insert(ensemble.threshold[internal], at, np.float32(np.inf)),
            mask=np.insert(mask, at, np.uint64(0xFFFFFFFFFFFFFFFF)).astype(
                np.uint32 if widest <= 32 else np.uint64),
            tree_start=tree_start,
            leaf_start=leaf_start,
            leaf_value=ensemble.value[leaf_nodes].astype(np.float64),
            output_start=np.searchsorted(member, np.arange(ensemble.n_members)).astype(np.int64),
            tree_range={name: (0, n_trees)},
            output_range={name: (0, ensemble.n_members)},
            missing=np.insert(ensemble.missing[internal], at, 0).astype(np.uint8),
        )

    @classmethod
    def concat(cls, parts: Sequence[tuple[Forest, np.ndarray | None]]) -> Forest:
        """Forests one after another, each with its columns moved to a shared layout
        (`columns[j]`: where its column j is there; None: already there). Copies the arrays."""
        trees = outputs = splits = leaves = 0
        feature, tree_start, leaf_start, output_start = [], [], [], []
        tree_range, output_range = {}, {}
        for forest, columns in parts:
            feature.append(forest.feature if columns is None else columns[forest.feature])
            tree_start.append(forest.tree_start[:-1] + splits)
            leaf_start.append(forest.leaf_start[:-1] + leaves)
            output_start.append(forest.output_start + trees)
            for name, (a, b) in forest.tree_range.items():
                tree_range[name] = (a + trees, b + trees)
            for name, (a, b) in forest.output_range.items():
                output_range[name] = (a + outputs, b + outputs)
            splits += len(forest.feature)
            leaves += int(forest.leaf_start[-1])
            trees += forest.n_trees
            outputs += len(forest.output_start)
        wide = any(f.mask.dtype == np.uint64 for f, _ in parts)

        def cat(arrays, dtype):
            return np.concatenate(arrays).astype(dtype, copy=False) if arrays else np.zeros(0, dtype)

        return cls(
            feature=cat(feature, _column_type(np.concatenate(feature) if feature else np.zeros(0))),
            threshold=cat([f.threshold for f, _ in parts], np.float32),
            mask=cat([f.mask.astype(np.uint64) if wide else f.mask for f, _ in parts],
                     np.uint64 if wide else np.uint32),
            tree_start=cat([*tree_start, np.array([splits])], np.int64),
            leaf_start=cat([*leaf_start, np.array([leaves])], np.int64),
            leaf_value=cat([f.leaf_value for f, _ in parts], np.float64),
            output_start=cat(output_start, np.int64),
            tree_range=tree_range,
            output_range=output_range,
            missing=cat([f.missing for f, _ in parts], np.uint8),
        )

    def part(self, names: Sequence[str]) -> Forest:
        """The models `names` (contiguous in this forest, in this order) as a forest of views."""
        first_tree, last_tree = self.tree_range[names[0]][0], self.tree_range[names[-1]][1]
        first_out, last_out = self.output_range[names[0]][0], self.output_range[names[-1]][1]
        splits = slice(int(self.tree_start[first_tree]), int(self.tree_start[last_tree]))
        leaves = slice(int(self.leaf_start[first_tree]), int(self.leaf_start[last_tree]))
        return Forest(
            feature=self.feature[splits], threshold=self.threshold[splits], mask=self.mask[splits],
            tree_start=self.tree_start[first_tree : last_tree + 1] - self.tree_start[first_tree],
            leaf_start=self.leaf_start[first_tree : last_tree + 1] - self.leaf_start[first_tree],
            leaf_value=self.leaf_value[leaves],
            output_start=self.output_start[first_out:last_out] - first_tree,
            tree_range={n: (a - first_tree, b - first_tree) for n, (a, b) in self.tree_range.items()
                        if n in names},
            output_range={n: (a - first_out, b - first_out) for n, (a, b) in self.output_range.items()
                          if n in names},
            missing=self.missing[splits],
        )

    def raw_scores(self, features: np.ndarray, budget: int = 1 << 17) -> np.ndarray:
        """(rows, outputs) raw scores, equal to each ensemble's `TreeEnsemble.raw_scores` up to
        the order of floating-point summation.

        The work goes in pieces of about `budget` split tests (whole trees, and as many rows as
        fit), so the temporaries stay around a megabyte: they are reused from the heap request
        after request instead of growing it, and they stay in cache.
        """
        x = lightgbm_inputs(features)
        has_nan = bool(np.isnan(x).any())
        rows, splits = x.shape[0], len(self.feature)
        out = np.empty((rows, len(self.output_start)), dtype=np.float64)
        if len(self.output_start) == 0 or rows == 0:
            return out
        block = max(1, budget // max(1, splits))
        pieces = self._pieces(max(budget, 1))
        for start in range(0, rows, block):
            rows_x = x[start : start + block]
            values = np.empty((rows_x.shape[0], self.n_trees), dtype=np.float64)
            for first, last in pieces:
                values[:, first:last] = self._leaf_values(rows_x, first, last, has_nan)
            out[start : start + block] = np.add.reduceat(values, self.output_start, axis=1)
        return out

    def _pieces(self, budget: int) -> list[tuple[int, int]]:
        """Consecutive runs of whole trees with about `budget` splits each."""
        cuts = np.searchsorted(self.tree_start, np.arange(budget, int(self.tree_start[-1]), budget))
        bounds = np.unique(np.concatenate([[0], cuts, [self.n_trees]]))
        return list(zip(bounds[:-1].tolist(), bounds[1:].tolist(), strict=True))

    def _leaf_values(self, x: np.ndarray, first: int, last: int, has_nan: bool = False) -> np.ndarray:
        """(rows, last - first): the exit leaf's value of trees first..last-1."""
        begin, end = int(self.tree_start[first]), int(self.tree_start[last])
        mask = self.mask[begin:end]
        tested = np.take(x, self.feature[begin:end], axis=1)
        assert self.missing is not None
        true = split_goes_left(tested, self.threshold[begin:end], self.missing[begin:end], has_nan,
                               self.has_zero_rule)
        # A true split leaves every leaf standing: mask | all ones (cheaper than np.where),
        # written over the tested values when the widths match (one temporary less).
        standing = tested.view(mask.dtype) if tested.itemsize == mask.itemsize else None
        standing = np.multiply(true.view(np.uint8), mask.dtype.type(np.iinfo(mask.dtype).max),
                               out=standing, dtype=mask.dtype)
        np.bitwise_or(standing, mask, out=standing)
        exits = np.bitwise_and.reduceat(standing, self.tree_start[first:last] - begin, axis=1)
        lowest = exits & (~exits + exits.dtype.type(1))  # the leftmost leaf left standing
        rank = np.frexp(lowest.astype(np.float64))[1] - 1  # exact: a power of two
        return self.leaf_value[self.leaf_start[first:last] + rank]
