"""A transformer is evaluated and calibrated as each backend serves it (torch fp32, ONNX fp32,
ONNX int8), and a worker lists the metrics of the backend it loaded: routing compares what is
served."""

import numpy as np

from molserve.registry.store import Registry

# Rings of 3 to 8 carbons with chains and heteroatoms: several scaffolds, no duplicates.
SMILES = [f"C1{'C' * (1 + i % 6)}C1" + "C" * (i // 6) + ("O" if i % 2 else "N") for i in range(132)]


def _fast(registry):
    rows = ["canonical_smiles,label,split"]
    for i, s in enumerate(SMILES):
        side = "test" if i % 6 == 0 else "valid" if i % 12 in (1, 2) else "train"
        rows.append(f"{s},{0.1 * len(s) + 0.05 * (i % 4):.3f},{side}")
    return registry.write("toy", {"data.csv": ("\n".join(rows) + "\n").encode()}, {
        "kind": "gbm", "task": "regression", "units": "u", "description": "toy",
        "dataset": {"name": "toy"}, "split": {"method": "given", "seed": 0},
        "metrics": {"test": {"rmse": 1.0, "r2": 0.0}}})


def test_each_backend_is_scored_and_calibrated_as_it_serves(tmp_path):
    from molserve.models.transformer.pipeline import finetune_endpoint
    from molserve.models.transformer.runtime import TransformerModel

    registry = Registry(tmp_path)
    _fast(registry)
    artifact = finetune_endpoint(registry, "toy", base="random:tiny", epochs=1, device="cpu",
                                 batch_size=16)
    recorded = artifact.manifest["by_backend"]
    assert set(recorded) == {"torch", "onnx", "onnx-int8"}
    assert recorded["torch"]["metrics"] == artifact.manifest["metrics"]["test"]
    for backend in recorded:
        assert recorded[backend]["metrics"]["n"] == 22
        assert recorded[backend]["uncertainty"]["quantile"] > 0
    # Intervals are calibrated on validation molecules that did not choose the epoch count.
    calibration = artifact.manifest["uncertainty"]
    assert calibration["method"].startswith("split conformal on calibration molecules")
    assert 10 <= calibration["calibration_molecules"] < 22
    int8 = TransformerModel.load(artifact, backend="onnx-int8").for_endpoint("toy")
    assert int8.served_metrics() == recorded["onnx-int8"]["metrics"]
    answer = int8.predict([SMILES[0]])[0]
    low, high = answer["uncertainty"]["interval"]
    assert abs((high - low) / 2 - recorded["onnx-int8"]["uncertainty"]["quantile"]) < 1e-3
    # The int8 file's predictions are what its metrics were computed from.
    fp32 = TransformerModel.load(artifact, backend="onnx").for_endpoint("toy")
    assert fp32.served_metrics() == recorded["onnx"]["metrics"]
    assert np.isfinite(recorded["onnx-int8"]["metrics"]["rmse"])
