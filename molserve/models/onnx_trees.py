"""Convert LightGBM boosters into one ONNX TreeEnsembleRegressor.

Several boosters (the members of an ensemble) become one ONNX node with one output column per
member, so the gateway evaluates a whole ensemble in a single onnxruntime call and never imports
LightGBM. Outputs are raw scores (margins for classifiers); the serving code applies the link.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def _float32_at_most(value: float) -> float:
    """The largest float32 <= value: for float32 inputs, x <= value iff x <= this."""
    rounded = np.float32(value)
    if float(rounded) > value:
        rounded = np.nextafter(rounded, np.float32(-np.inf))
    return float(rounded)


def _tree_nodes(structure: dict[str, Any]) -> list[dict[str, Any]]:
    """Flatten one LightGBM tree (depth-first) into node records with local ids."""
    nodes: list[dict[str, Any]] = []

    def visit(node: dict[str, Any]) -> int:
        node_id = len(nodes)
        record: dict[str, Any] = {"id": node_id}
        nodes.append(record)
        if "leaf_value" in node:
            record.update(leaf=True, value=float(node["leaf_value"]))
            return node_id
        if node.get("decision_type", "<=") != "<=":
            raise ValueError(f"unsupported LightGBM split {node.get('decision_type')!r}")
        if node.get("missing_type", "None") not in ("None", "NaN"):
            raise ValueError("train with use_missing=False or zero_as_missing=False")
        record.update(
            leaf=False,
            feature=int(node["split_feature"]),
            threshold=_float32_at_most(float(node["threshold"])),
        )
        record["true"] = visit(node["left_child"])
        record["false"] = visit(node["right_child"])
        return node_id

    visit(structure)
    return nodes


def boosters_to_onnx(boosters: list[Any], n_features: int, name: str = "gbm_ensemble") -> bytes:
    """Serialize LightGBM boosters as an ONNX model: input `features` (float32, [N, n_features]),
    output `scores` (float32, [N, len(boosters)]) holding each member's raw score."""
    from onnx import TensorProto, helper

    attrs: dict[str, list] = {
        key: []
        for key in (
            "nodes_treeids", "nodes_nodeids", "nodes_featureids", "nodes_values",
            "nodes_modes", "nodes_truenodeids", "nodes_falsenodeids",
            "nodes_missing_value_tracks_true", "target_treeids", "target_nodeids",
            "target_ids", "target_weights",
        )
    }
    tree_id = 0
    for member, booster in enumerate(boosters):
        for tree in booster.dump_model()["tree_info"]:
            for node in _tree_nodes(tree["tree_structure"]):
                attrs["nodes_treeids"].append(tree_id)
                attrs["nodes_nodeids"].append(node["id"])
                attrs["nodes_missing_value_tracks_true"].append(0)
                if node["leaf"]:
                    attrs["nodes_featureids"].append(0)
                    attrs["nodes_values"].append(0.0)
                    attrs["nodes_modes"].append("LEAF")
                    attrs["nodes_truenodeids"].append(0)
                    attrs["nodes_falsenodeids"].append(0)
                    attrs["target_treeids"].append(tree_id)
                    attrs["target_nodeids"].append(node["id"])
                    attrs["target_ids"].append(member)
                    attrs["target_weights"].append(node["value"])
                else:
                    attrs["nodes_featureids"].append(node["feature"])
                    attrs["nodes_values"].append(node["threshold"])
                    attrs["nodes_modes"].append("BRANCH_LEQ")
                    attrs["nodes_truenodeids"].append(node["true"])
                    attrs["nodes_falsenodeids"].append(node["false"])
            tree_id += 1
    node = helper.make_node(
        "TreeEnsembleRegressor",
        inputs=["features"],
        outputs=["scores"],
        domain="ai.onnx.ml",
        n_targets=len(boosters),
        aggregate_function="SUM",
        post_transform="NONE",
        base_values=[0.0] * len(boosters),
        **attrs,
    )
    graph = helper.make_graph(
        [node],
        name,
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, [None, n_features])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, [None, len(boosters)])],
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("ai.onnx.ml", 3)],
        producer_name="molserve",
    )
    model.ir_version = 8
    return model.SerializeToString()
