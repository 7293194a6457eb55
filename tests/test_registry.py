import json

import pytest

from molserve.registry.store import ArtifactError, Registry


def test_versions_increment_and_manifest_lists_checksums(tmp_path):
    registry = Registry(tmp_path)
    first = registry.write("demo", {"model.onnx": b"abc"}, {"kind": "gbm"})
    second = registry.write("demo", {"model.onnx": b"abcd"}, {"kind": "gbm"})
    assert (first.version, second.version) == (1, 2)
    assert registry.latest("demo").version == 2
    listed = json.loads((second.path / "manifest.json").read_text())["files"]["model.onnx"]
    assert listed["bytes"] == 4 and len(listed["sha256"]) == 64
    second.verify()


def test_tampered_file_is_refused(tmp_path):
    registry = Registry(tmp_path)
    artifact = registry.write("demo", {"model.onnx": b"weights"}, {"kind": "gbm"})
    (artifact.path / "model.onnx").write_bytes(b"evil")
    with pytest.raises(ArtifactError, match="checksum"):
        registry.latest("demo").verify()


def test_missing_file_is_refused(tmp_path):
    registry = Registry(tmp_path)
    artifact = registry.write("demo", {"model.onnx": b"weights"}, {"kind": "gbm"})
    (artifact.path / "model.onnx").unlink()
    with pytest.raises(ArtifactError, match="missing"):
        artifact.verify()


@pytest.mark.parametrize("name", ["model.pkl", "model.pt", "../x.json", ".hidden.json"])
def test_unsafe_files_are_never_written(tmp_path, name):
    with pytest.raises(ArtifactError):
        Registry(tmp_path).write("demo", {name: b"x"}, {"kind": "gbm"})


def test_half_written_versions_are_invisible(tmp_path):
    registry = Registry(tmp_path)
    registry.write("demo", {"model.onnx": b"a"}, {"kind": "gbm"})
    # What a crash mid-write leaves: a staging directory and a version without manifest.
    (tmp_path / ".staging" / "deadbeef").mkdir(parents=True)
    (tmp_path / "demo" / "v7").mkdir()
    assert [a.version for a in registry.versions("demo")] == [1]
    assert registry.endpoints() == ["demo"]


def test_bad_endpoint_names_are_rejected(tmp_path):
    with pytest.raises(ValueError):
        Registry(tmp_path).write("Bad Name", {"model.onnx": b"a"}, {"kind": "gbm"})


def test_delete_removes_one_version(tmp_path):
    registry = Registry(tmp_path)
    registry.write("demo", {"model.onnx": b"a"}, {"kind": "gbm"})
    registry.write("demo", {"model.onnx": b"b"}, {"kind": "gbm"})
    registry.delete("demo", 2)
    assert [a.version for a in registry.versions("demo")] == [1]
