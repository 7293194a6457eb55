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


# The layers, top to bottom (ARCHITECTURE.md draws them). A module may import its own layer
# and the layers below it, never a layer above: faces -> operations -> prediction -> models and
# storage -> chem and the foundation.
LAYERS = {
    "cli": 5, "__main__": 5,
    "gateway": 4, "worker": 4, "jobs": 4, "deploy": 4, "client": 4, "predictor": 4,
    "operations": 3,
    "prediction": 2,
    "models": 1, "data": 1, "registry": 1, "answers": 1, "responses": 1,
    "chem": 0, "config": 0, "errors": 0, "logs": 0, "processes": 0, "asgi": 0, "database": 0,
    "storage": 0,
}
# Within the faces' layer, only these reach sideways: the gateway runs the job runner, jobs hand
# fine-tuning to the deploy engines, the deploy files host the worker.
SIDEWAYS = {("gateway", "jobs"), ("jobs", "deploy"), ("deploy", "worker")}


def _imports_by_package() -> dict[str, set[str]]:
    import ast
    import pathlib

    root = pathlib.Path(__file__).resolve().parents[1] / "molserve"
    found: dict[str, set[str]] = {}
    for path in root.rglob("*.py"):
        package = path.relative_to(root).parts[0].removesuffix(".py")
        if package == "__init__":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([node.module] if isinstance(node, ast.ImportFrom) and node.module else
                     [a.name for a in node.names] if isinstance(node, ast.Import) else [])
            for name in names:
                parts = name.split(".")
                if parts[0] == "molserve" and len(parts) > 1 and parts[1] != package:
                    found.setdefault(package, set()).add(parts[1])
    return found


def test_every_package_has_a_layer():
    assert set(_imports_by_package()) <= set(LAYERS)
    import pathlib

    root = pathlib.Path(__file__).resolve().parents[1] / "molserve"
    packages = {p.name.removesuffix(".py") for p in root.iterdir()
                if (p.suffix == ".py" or (p / "__init__.py").exists()) and p.name != "__init__.py"}
    assert packages <= set(LAYERS), packages - set(LAYERS)


def test_imports_go_one_way():
    """Lazy imports inside functions count too: a layer never reaches up, even at run time."""
    wrong = sorted(
        (package, target) for package, targets in _imports_by_package().items() for target in targets
        if LAYERS[target] > LAYERS[package]
        or (LAYERS[target] == LAYERS[package] == 4 and (package, target) not in SIDEWAYS))
    assert wrong == []


def test_only_the_settings_read_the_environment():
    """Settings are one validated object (molserve.config); nothing else reads os.environ."""
    import pathlib
    import re

    root = pathlib.Path(__file__).resolve().parents[1] / "molserve"
    readers = sorted(str(p.relative_to(root)) for p in root.rglob("*.py")
                     if re.search(r"os\.environ|os\.getenv|getenv\(", p.read_text()))
    assert readers == ["config.py"]
