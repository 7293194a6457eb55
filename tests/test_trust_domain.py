"""A multi-task model's applicability domain is its task's own: a query near molecules that only
another task was trained on is out of this task's domain."""

import numpy as np

from molserve.chem.features import FeatureSpec, featurize
from molserve.chem.molecules import parse_smiles
from molserve.models.heldout import domain_answer, domain_index_files, task_domain_files
from molserve.models.transformer.runtime import load_task_domains
from molserve.registry.store import Registry

# Task "bbb" is trained on steroids, task "logbb" on small aliphatic amines and alcohols.
STEROIDS = ["CC12CCC3C(CCC4=CC(=O)CCC34C)C1CCC2O", "CC12CCC3C(CCC4=CC(=O)CCC34C)C1CCC2=O",
            "CC12CCC3C(CCc4cc(O)ccc34)C1CCC2O", "CC(=O)C1CCC2C3CCC4=CC(=O)CCC4(C)C3CCC12C",
            "CC12CCC3c4ccc(O)cc4CCC3C1CCC2=O", "CC12CCC3C(CCC4CC(O)CCC34C)C1CCC2O"]
AMINES = ["CCN", "CCCN", "CCCCN", "CCO", "CCCO", "CCCCO", "CC(C)N", "CC(C)O", "CCCCCN", "CCCCCO"]


def _table():
    smiles = STEROIDS + AMINES
    n = len(smiles)
    sides = np.full((n, 2), "", dtype=object)
    for i in range(len(STEROIDS)):
        sides[i, 0] = "train" if i < 5 else "valid"
    for j in range(len(AMINES)):
        sides[len(STEROIDS) + j, 1] = "train" if j < 8 else "valid"
    split = ["train" if (row == "train").any() else "valid" for row in sides]
    return smiles, split, sides


def _bits(smiles):
    return featurize([parse_smiles(s).mol for s in smiles], FeatureSpec()).on_bits


def test_each_task_has_its_own_training_molecules_and_threshold(tmp_path):
    smiles, split, sides = _table()
    files, domains = task_domain_files(smiles, split, sides, ["bbb", "logbb"])
    assert domains["bbb"]["molecules"] == 5 and domains["logbb"]["molecules"] == 8
    artifact = Registry(tmp_path).write(
        "adme", files, {"kind": "transformer", "task": "multitask",
                        "tasks": {e: {"applicability_domain": d} for e, d in domains.items()}})
    loaded = load_task_domains(artifact)
    assert sorted(loaded["logbb"][1]) == sorted(AMINES[:8])
    # A steroid query: inside bbb's domain, outside logbb's, although the model was trained on
    # steroids (through bbb's labels).
    query = _bits([STEROIDS[1]])[0]  # a molecule the model was trained on, for bbb only
    bbb = domain_answer(*loaded["bbb"], query, domains["bbb"]["threshold"])
    logbb = domain_answer(*loaded["logbb"], query, domains["logbb"]["threshold"])
    assert bbb["in_domain"] and not logbb["in_domain"]
    assert logbb["nearest_training_smiles"] in AMINES
    # What one index over every task's training molecules said: in domain for logbb too.
    shared_files, shared = domain_index_files(smiles, split)
    shared_artifact = Registry(tmp_path / "shared").write("adme", shared_files, {"kind": "x"})
    from safetensors.numpy import load_file

    from molserve.chem.similarity import SimilarityIndex

    index = SimilarityIndex.from_arrays(
        load_file(str(shared_artifact.file("ad_index.safetensors"))), 2048)
    train = shared_artifact.file("train_smiles.txt").read_text().split()
    assert domain_answer(index, train, query, domains["logbb"]["threshold"])["in_domain"]
