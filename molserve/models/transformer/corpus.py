"""SMILES corpora for pretraining: a user's file, or MOSES as shipped by the molsets package."""

from __future__ import annotations

import gzip
import importlib.util
import random
from pathlib import Path

from molserve.errors import NotFound


def moses_path() -> Path:
    """MOSES training SMILES (1.58M, MIT) inside the molsets package, found without importing
    it (its modules import torch-era dependencies; only the CSV is read, never its .npz)."""
    spec = importlib.util.find_spec("moses")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the MOSES corpus needs `pip install --no-deps molsets`")
    return Path(next(iter(spec.submodule_search_locations))) / "dataset" / "data" / "train.csv.gz"


def read_corpus(source: str, limit: int | None = None, seed: int = 0) -> list[str]:
    """SMILES from 'moses', a .smi/.txt file (first field per line) or a CSV with a SMILES column."""
    path = moses_path() if source == "moses" else Path(source)
    if not path.is_file():
        raise NotFound(f"no corpus file {path} (give a .smi/.txt/.csv[.gz] file of SMILES, or 'moses')")
    opener = gzip.open if path.suffix == ".gz" else open
    smiles: list[str] = []
    with opener(path, "rt") as handle:
        first = handle.readline()
        header = [c.strip().lower() for c in first.split(",")]
        column = header.index("smiles") if "smiles" in header else None
        if column is None:
            smiles.append(first.split()[0])
        for line in handle:
            line = line.strip()
            if not line:
                continue
            smiles.append(line.split(",")[column] if column is not None else line.split()[0])
    if limit is not None and len(smiles) > limit:
        smiles = random.Random(seed).sample(smiles, limit)
    return smiles
