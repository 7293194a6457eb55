"""The fast tier's stack: the models of one fingerprint setting with their trees in one forest
and their training molecules in one similarity index, and its stored copy.

Building a stack reads every model's trees and training molecules and merges them (about half
a second for the 45 bundled endpoints). The stack of every endpoint is therefore stored next to
the registry (`<registry>/.serving/`, safetensors with a checksum) under a key made of each
model's endpoint, version and file checksums; the next start reads that one file. A model
trained since, or a changed file, gives another key, and the stack is built again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from molserve.chem.features import FeatureSpec, union_spec
from molserve.chem.similarity import SharedIndex, SimilarityIndex
from molserve.models.gbm_runtime import FastModel
from molserve.models.trees import Forest

log = logging.getLogger("molserve.prediction")

FORMAT = "molserve-stack-2"  # 2: each split's missing type and default direction
_FOREST = ("feature", "threshold", "mask", "tree_start", "leaf_start", "leaf_value", "output_start",
           "missing")


@dataclass(frozen=True)
class Stack:
    """Models sharing fingerprint settings: one feature layout (the union of their specs),
    their trees in one forest, their training molecules in one similarity index."""

    key: str
    spec: FeatureSpec
    names: tuple[str, ...]
    forest: Forest
    domain: SharedIndex

    @staticmethod
    def key_of(models: list[FastModel]) -> str:
        identity = [[m.endpoint, m.artifact.version, *m.checksums()] for m in models]
        return hashlib.sha256(json.dumps([FORMAT, identity]).encode()).hexdigest()[:32]

    def attach(self, models: list[FastModel]) -> None:
        """Each model serves from its view of the stack; its own copies are dropped."""
        for model in models:
            model.forest = self.forest.part([model.endpoint])
            model.layout = self.spec
            model.release_reference()


def build(models: list[FastModel]) -> Stack:
    """Stack models whose arrays are loaded."""
    spec = union_spec([m.spec for m in models])
    assert spec is not None
    forest = Forest.concat([(m.forest, m.layout.positions_in(spec)) for m in models])
    if len(forest.feature) and forest.feature.min() < 0:
        raise ValueError("a split on a column outside the shared layout")
    references = {m.endpoint: m.reference() for m in models}
    domain = SharedIndex.build({name: (ref.index, ref.smiles) for name, ref in references.items()},
                               spec.n_bits)
    return Stack(Stack.key_of(models), spec, tuple(m.endpoint for m in models), forest, domain)


def write(stack: Stack, store: Path) -> None:
    """Store the stack (replacing any other stored one); a registry that cannot be written to is
    only logged."""
    from safetensors.numpy import save

    domain = stack.domain
    arrays = {f"forest.{name}": getattr(stack.forest, name) for name in _FOREST}
    arrays.update({
        "domain.bit_ptr": domain.index.bit_ptr, "domain.mol_ids": domain.index.mol_ids,
        "domain.bit_counts": domain.index.bit_counts, "domain.members": domain.members,
        "domain.smiles_end": domain.smiles_end,
        "domain.smiles_blob": np.frombuffer(domain.smiles_blob, dtype=np.uint8),
    })
    metadata = {"format": FORMAT, "key": stack.key, "spec": json.dumps(stack.spec.to_dict()),
                "names": json.dumps(stack.names), "n_bits": str(domain.index.n_bits),
                "tree_range": json.dumps(stack.forest.tree_range),
                "output_range": json.dumps(stack.forest.output_range),
                "ranges": json.dumps(domain.ranges)}
    data = save({k: np.ascontiguousarray(v) for k, v in arrays.items()}, metadata=metadata)
    try:
        store.mkdir(exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=store, delete=False, suffix=".tmp") as handle:
            handle.write(data)
        os.chmod(handle.name, 0o644)
        os.replace(handle.name, store / f"{stack.key}.safetensors")
        (store / f"{stack.key}.sha256").write_text(hashlib.sha256(data).hexdigest() + "\n")
        for old in store.iterdir():
            if not old.name.startswith(stack.key):
                old.unlink()
    except OSError as error:
        log.info("the fast tier's stack was not stored (%s); the next start builds it again", error)


def read(key: str, models: list[FastModel], store: Path) -> Stack | None:
    """The stored stack of `key`, checked against its checksum; None when there is none (or it
    does not match)."""
    from safetensors.numpy import load

    path, digest = store / f"{key}.safetensors", store / f"{key}.sha256"
    try:
        data = path.read_bytes()
        expected = digest.read_text().strip()
    except OSError:
        return None
    if hashlib.sha256(data).hexdigest() != expected:
        log.warning("stored fast-tier stack %s does not match its checksum; building it again", path)
        return None
    header = json.loads(data[8 : 8 + int.from_bytes(data[:8], "little")])
    meta = header.get("__metadata__", {})
    if meta.get("format") != FORMAT or meta.get("key") != key \
            or tuple(json.loads(meta["names"])) != tuple(m.endpoint for m in models):
        return None
    arrays = load(data)
    ranges = lambda text: {k: tuple(v) for k, v in json.loads(text).items()}  # noqa: E731
    forest = Forest(**{name: arrays[f"forest.{name}"] for name in _FOREST},
                    tree_range=ranges(meta["tree_range"]), output_range=ranges(meta["output_range"]))
    n_bits = int(meta["n_bits"])
    index = SimilarityIndex(n_bits, arrays["domain.bit_ptr"], arrays["domain.mol_ids"],
                            arrays["domain.bit_counts"])
    domain = SharedIndex(index, arrays["domain.members"], ranges(meta["ranges"]),
                         arrays["domain.smiles_blob"].tobytes(), arrays["domain.smiles_end"])
    return Stack(key, FeatureSpec.from_dict(json.loads(meta["spec"])), tuple(json.loads(meta["names"])),
                 forest, domain)
