"""Predictions from Python, for notebooks and pipelines: the server's code path (the router, its
fast and computed tiers) in this process, with the gateway's light imports (no torch).

    from molserve import Predictor

    predictor = Predictor(registry="registry")
    rows = predictor.predict(["CCO", "c1ccccc1O"], endpoints=["solubility", "tpsa"])
    rows[0]["solubility"], rows[0]["solubility_lower"], rows[0]["solubility_upper"]
    frame = rows.to_frame()          # a pandas DataFrame, when pandas is installed

Molecules may be SMILES strings or RDKit molecules; identifiers come from a mapping
(`{"aspirin": "CC(=O)Oc1ccccc1C(=O)O"}`), a pandas Series (its index) or `ids=`. An unreadable
molecule gives its row an `error` and the others are answered, as on the server; request-level
problems (an unknown endpoint) raise the project's errors (`molserve.errors`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from molserve.answers import Answer
from molserve.errors import InvalidInput

_CHUNK = 1000  # molecules per router call: the server's batch limit


class Predictions(list):
    """One flat row (a dict) per input molecule, in input order; `answers[i]` holds that
    molecule's typed answers (endpoint -> `Answer`, with provenance, uncertainty, explanation)."""

    def __init__(self, rows: list[dict[str, Any]], answers: list[dict[str, Answer]],
                 endpoints: list[str]) -> None:
        super().__init__(rows)
        self.answers = answers
        self.endpoints = endpoints

    def to_frame(self):
        """The rows as a pandas DataFrame, indexed by identifier when the molecules had them."""
        try:
            import pandas as pd
        except ImportError:
            raise ImportError("to_frame needs pandas (pip install pandas); the rows themselves "
                              "are plain dicts") from None
        frame = pd.DataFrame(list(self))
        return frame.set_index("id") if "id" in frame.columns else frame


class Predictor:
    """Predicts from a registry in this process. Loading reads the newest model of each
    endpoint (or of `endpoints` only, which starts faster) once; predictions then cost what the
    server's do."""

    def __init__(self, registry: str | Path | None = None, *, endpoints: Sequence[str] | None = None) -> None:
        from molserve.config import Settings
        from molserve.prediction.router import Router
        from molserve.registry.store import Registry

        root = Path(registry) if registry is not None else Path(Settings().registry)
        if not root.is_dir():
            raise InvalidInput(f"no registry at {root} (train models first: molserve train, or "
                               "molserve serve --bootstrap)", code="no_registry")
        self.router = Router(Registry(root), max_batch=_CHUNK)
        only = [e for e in endpoints if e not in self.router.computed.served()] if endpoints else None
        self.router.load(only)
        self._attach_references()

    def _attach_references(self) -> None:
        try:
            from molserve.prediction.reference import ReferenceSets
        except ImportError:  # a build without reference sets
            return
        self.router.references = ReferenceSets(self.router.registry, self.router)

    @property
    def endpoints(self) -> list[str]:
        """Every endpoint this predictor answers (predicted, then computed)."""
        return self.router.all_endpoints

    def predict(self, molecules: Any, endpoints: Sequence[str] | None = None, *,
                ids: Sequence[Any] | None = None, explain: bool = False,
                reference: str | None = None, confidence: float | None = None) -> Predictions:
        """Rows in input order: `id` (when given), `smiles` (as given, or written from the RDKit
        molecule), `canonical_smiles`, `error`, and per endpoint its value, interval
        (`<endpoint>_lower`, `<endpoint>_upper`), label, domain (`<endpoint>_in_domain`), reference
        percentile and, with `explain=True`, explanation (`<endpoint>_explanation`);
        `confidence` (0.8, 0.9 or 0.95) sets the intervals' level."""
        keys, smiles = _inputs(molecules, ids)
        names = self.router.resolve_endpoints(list(endpoints) if endpoints is not None else None)
        rows: list[dict[str, Any]] = []
        answers: list[dict[str, Answer]] = []
        for start in range(0, len(smiles), _CHUNK):
            response = self.router.predict_local(smiles[start:start + _CHUNK], names,
                                                 explain=explain, reference=reference,
                                                 confidence=confidence)
            for result in response["results"]:
                key = keys[start + result["index"]] if keys is not None else None
                rows.append(_row(result, names, key, keys is not None))
                answers.append(dict(result["predictions"]))
        return Predictions(rows, answers, names)


def _inputs(molecules: Any, ids: Sequence[Any] | None) -> tuple[list[Any] | None, list[str]]:
    """(identifiers or None, SMILES) from the accepted shapes of input."""
    keys: list[Any] | None = None
    if isinstance(molecules, str | bytes) or _is_mol(molecules):
        items: list[Any] = [molecules]
    elif isinstance(molecules, Mapping):
        keys, items = list(molecules.keys()), list(molecules.values())
    elif hasattr(molecules, "index") and hasattr(molecules, "tolist") and not isinstance(molecules, list):
        keys, items = list(molecules.index), molecules.tolist()  # a pandas Series
    elif isinstance(molecules, Iterable):
        items = list(molecules)
    else:
        raise InvalidInput(f"molecules must be SMILES, RDKit molecules or a collection of them, not "
                           f"{type(molecules).__name__}", code="invalid_molecules")
    if ids is not None:
        keys = list(ids)
        if len(keys) != len(items):
            raise InvalidInput(f"{len(keys)} ids for {len(items)} molecules", code="ids_mismatch")
    return keys, [_smiles(item, i) for i, item in enumerate(items)]


def _is_mol(item: Any) -> bool:
    return type(item).__name__ == "Mol" and hasattr(item, "GetNumAtoms")


def _smiles(item: Any, position: int) -> str:
    if isinstance(item, str):
        return item
    if isinstance(item, bytes):
        return item.decode()
    if _is_mol(item):
        from rdkit import Chem

        return Chem.MolToSmiles(item)
    if item is None:
        return ""  # answered as an unreadable molecule, like an empty SMILES on the server
    raise InvalidInput(f"molecule {position} is a {type(item).__name__}, not a SMILES string or an "
                       "RDKit molecule", code="invalid_molecules")


def _row(result: dict[str, Any], names: list[str], key: Any, keyed: bool) -> dict[str, Any]:
    row: dict[str, Any] = {"id": key} if keyed else {}
    row.update(smiles=result["input"], canonical_smiles=result["canonical_smiles"], error=result["error"])
    for name in names:
        answer: Answer | None = result["predictions"].get(name)
        if answer is None:
            continue
        if answer.is_error:
            row[f"{name}_error"] = answer.error
            row[name] = None
            continue
        row[name] = answer.value
        if answer.label is not None:
            row[f"{name}_label"] = answer.label
        interval = answer.uncertainty.interval if answer.uncertainty is not None else None
        if interval is not None and answer.label is None:
            row[f"{name}_lower"], row[f"{name}_upper"] = interval
        if answer.applicability_domain is not None:
            row[f"{name}_in_domain"] = answer.applicability_domain.in_domain
        if answer.reference_percentile is not None:
            row[f"{name}_percentile"] = answer.reference_percentile
        if answer.details is not None:
            row[f"{name}_details"] = answer.details
        if answer.explanation is not None:
            row[f"{name}_explanation"] = answer.explanation
        if answer.provenance.degraded:
            row[f"{name}_degraded"] = answer.provenance.degraded_reason
    return row
