"""Gradient-boosted tree ensembles as flat numpy arrays, evaluated without any ML runtime.

A LightGBM booster is flattened once at training time into node arrays stored as safetensors.
The gateway evaluates them with a few vectorized gathers per tree level: no LightGBM, no
onnxruntime in the serving process, a model costs megabytes less memory and loads in
microseconds. Several boosters (ensemble members) share one set of arrays; each tree records
the member it belongs to, and evaluation returns one raw score per member.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np


def _float32_at_most(value: float) -> np.float32:
    """The largest float32 <= value: for float32 inputs, x <= value iff x <= this."""
    rounded = np.float32(value)
    if float(rounded) > value:
        rounded = np.nextafter(rounded, np.float32(-np.inf))
    return rounded


@dataclass(frozen=True)
class TreeEnsemble:
    feature: np.ndarray  # int32 (nodes,); 0 for leaves
    threshold: np.ndarray  # float32 (nodes,); +inf for leaves, so they "go left"
    children: np.ndarray  # int32 (nodes, 2): [right, left]; a leaf points to itself
    value: np.ndarray  # float64 (nodes,); leaf output, 0 for internal nodes
    roots: np.ndarray  # int32 (trees,)
    membership: np.ndarray  # float64 (trees, members): one-hot tree -> member
    depth: int  # longest root-to-leaf path

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
        x = np.ascontiguousarray(features, dtype=np.float32)
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
        feature, threshold = self.feature, self.threshold
        for _ in range(self.depth):
            go_left = flat[offsets + feature[node]] <= threshold[node]
            node <<= 1
            node += go_left
            node = children[node]
        return self.value[node] @ self.membership


def from_lightgbm(boosters: list[Any]) -> TreeEnsemble:
    """Flatten LightGBM boosters (trained with use_missing=False) into one TreeEnsemble."""
    feature: list[int] = []
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
        threshold.append(np.float32(np.inf))
        children.append((index, index))
        value.append(0.0)
        if "leaf_value" in node:
            value[index] = float(node["leaf_value"])
            deepest = max(deepest, depth)
            return index
        if node.get("decision_type", "<=") != "<=":
            raise ValueError(f"unsupported LightGBM split {node.get('decision_type')!r}")
        if node.get("missing_type", "None") not in ("None", "NaN"):
            raise ValueError("train with use_missing=False so splits have no missing branch")
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
    )
