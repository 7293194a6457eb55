"""Registry version numbers name one model forever: a deleted number is never given out again."""

import json

from molserve.registry.store import Registry


def test_deleting_the_newest_version_does_not_free_its_number(tmp_path):
    registry = Registry(tmp_path)
    registry.write("demo", {"model.onnx": b"a"}, {"kind": "gbm", "model_id": "demo/gbm"})
    registry.write("demo", {"model.onnx": b"b"}, {"kind": "gbm", "model_id": "demo/gbm"})
    registry.delete("demo", 2)
    assert [a.version for a in registry.versions("demo")] == [1]
    third = registry.write("demo", {"model.onnx": b"c"}, {"kind": "gbm"})
    assert third.version == 3
    assert registry.deleted("demo") == [2]
    tombstone = json.loads((tmp_path / "demo" / "v2" / "deleted.json").read_text())
    assert tombstone["model_id"] == "demo/gbm" and tombstone["version"] == 2
    # Only the tombstone is left of the deleted version's files.
    assert sorted(p.name for p in (tmp_path / "demo" / "v2").iterdir()) == ["deleted.json"]


def test_deleting_every_version_keeps_numbers_taken(tmp_path):
    registry = Registry(tmp_path)
    registry.write("demo", {"model.onnx": b"a"}, {"kind": "gbm"})
    registry.delete("demo", 1)
    assert registry.versions("demo") == [] and registry.endpoints() == []
    assert registry.latest("demo") is None
    assert registry.write("demo", {"model.onnx": b"b"}, {"kind": "gbm"}).version == 2
    assert registry.endpoints() == ["demo"]


def test_a_citation_of_a_deleted_version_never_resolves_to_another_model(tmp_path):
    registry = Registry(tmp_path)
    fast = registry.write("demo", {"model.onnx": b"fast"}, {"kind": "gbm"})
    cited = f"demo v{fast.version} (gbm)"  # what a transformer's split records as shared_with
    registry.delete("demo", fast.version)
    newer = registry.write("demo", {"model.onnx": b"other"}, {"kind": "gbm"})
    assert f"demo v{newer.version} (gbm)" != cited
