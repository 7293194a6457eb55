"""The gateway must stay light: prove what importing and building it loads."""

import json
import subprocess
import sys

FORBIDDEN = ["torch", "transformers", "lightgbm", "sklearn", "pandas", "onnx", "onnxruntime", "scipy"]


def test_gateway_imports_no_heavy_library(trained_registry):
    code = (
        "import sys, json\n"
        "from molserve.config import Settings\n"
        "from molserve.gateway.app import create_app\n"
        "from fastapi.testclient import TestClient\n"
        f"app = create_app(Settings(registry={str(trained_registry.root)!r}))\n"
        "with TestClient(app) as c:\n"
        "    assert c.post('/v1/predict', json={'molecules': ['CCO']}).status_code == 200\n"
        "print(json.dumps(sorted(m.split('.')[0] for m in sys.modules)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    loaded = set(json.loads(out.stdout.strip().splitlines()[-1]))
    assert "rdkit" in loaded and "safetensors" in loaded
    assert not loaded & set(FORBIDDEN), loaded & set(FORBIDDEN)


def test_no_pickle_on_any_load_path():
    """Model and data loading never unpickles: numpy loads refuse pickles, no pickle/joblib use."""
    import pathlib

    root = pathlib.Path(__file__).resolve().parents[1] / "molserve"
    for path in root.rglob("*.py"):
        text = path.read_text()
        assert "import pickle" not in text and "joblib" not in text, path
        assert "torch.load(" not in text or "weights_only=True" in text, path
        for line in text.splitlines():
            if "np.load(" in line:
                assert "allow_pickle=False" in line, (path, line)


def test_imports_go_one_way():
    """`chem` imports nothing of ours but itself; the worker, jobs, the batch command and the
    prediction package (the router every face shares) do not reach into the gateway."""
    import ast
    import pathlib

    root = pathlib.Path(__file__).resolve().parents[1] / "molserve"

    def imported(path: pathlib.Path) -> set[str]:
        names = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                names.add(node.module)
            elif isinstance(node, ast.Import):
                names.update(alias.name for alias in node.names)
        return {n for n in names if n.startswith("molserve")}

    for path in (root / "chem").rglob("*.py"):
        assert all(n.startswith("molserve.chem") for n in imported(path)), path
    for folder in ("worker", "jobs", "prediction", "operations", "models", "registry", "data"):
        for path in (root / folder).rglob("*.py"):
            assert not any(n.startswith("molserve.gateway") for n in imported(path)), path
    assert not any(n.startswith("molserve.gateway") for n in imported(root / "batch.py"))
